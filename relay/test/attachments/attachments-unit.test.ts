import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  ParleyError,
  type UserId,
} from "@parley/shared"
import sharp from "sharp"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import * as Y from "yjs"
import { ChunkSlots } from "../../src/attachments/chunk-slots.js"
import { sniffContentType, sniffText } from "../../src/attachments/content-type.js"
import { DecodeTurns, describeImage } from "../../src/attachments/images.js"
import { LinkPreviewer, parseLinkPreview } from "../../src/attachments/link-preview.js"
import { MemoryBlobStore } from "../../src/attachments/memory-blob-store.js"
import { AttachmentService, UNREFERENCED_TTL_MS } from "../../src/attachments/service.js"
import { UploadQuota } from "../../src/attachments/user-quota.js"
import type { RunningCore } from "../../src/extension.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { createLogger } from "../../src/log.js"
import { redactEvent } from "../../src/purge/redact.js"

const alice = "alice" as UserId
const mallory = "mallory" as UserId
const conversation = "g~unit-attach-01" as ConversationId

describe("sniffing text", () => {
  it("tells plain text from markup a browser would render and from binary", () => {
    expect(sniffText(new TextEncoder().encode("hello\nworld\t!"))).toBe("text/plain")
    expect(sniffText(new TextEncoder().encode("\ufeff  <!doctype HTML><p>x"))).toBe("text/html")
    expect(sniffText(new TextEncoder().encode("<script>alert(1)</script>"))).toBe("text/html")
    expect(sniffText(new TextEncoder().encode('<?xml version="1.0"?>\n<svg xmlns="x"/>'))).toBe(
      "image/svg+xml",
    )
    // An XML document is named as one when refused (it was called text/html), XHTML still as HTML.
    expect(sniffText(new TextEncoder().encode('<?xml version="1.0"?>\n<note><to>x</to></note>'))).toBe(
      "application/xml",
    )
    expect(sniffText(new TextEncoder().encode('<?xml version="1.0"?>\n<html xmlns="x"><body/>'))).toBe(
      "text/html",
    )
    expect(sniffText(new Uint8Array([0x68, 0x69, 0x00, 0x01]))).toBe("application/octet-stream")
    expect(sniffText(new Uint8Array([0xff, 0xfe, 0xfd]))).toBe("application/octet-stream")
    // A head cut inside a multi-byte character is still text.
    expect(sniffText(new TextEncoder().encode("héllo").subarray(0, 2))).toBe("text/plain")
  })

  /** The sniffed type of a blob holding `bytes` (its head as the service reads it: the first 4 KiB). */
  const sniffed = (bytes: Uint8Array) =>
    sniffContentType(
      async function* () {
        yield bytes
      },
      bytes.subarray(0, 4096),
    )
  /** `text` in UTF-16 with its byte-order mark, little- or big-endian. */
  const utf16 = (text: string, endian: "le" | "be") => {
    const bytes = Buffer.from(`\ufeff${text}`, "utf16le")
    if (endian === "be") bytes.swap16()
    return new Uint8Array(bytes)
  }

  it("takes UTF-16 text with a byte-order mark for text, and its markup for markup, not for an MPEG frame (before: audio/mpeg)", async () => {
    const letter = "Dear Bob,\r\nthe door code is 4711 — café, 日本語, 😀.\r\n"
    expect(await sniffed(utf16(letter, "le"))).toBe("text/plain")
    expect(await sniffed(utf16(letter, "be"))).toBe("text/plain")
    // Longer than the head, cut inside a surrogate pair: still text.
    const long = utf16(`${"x".repeat(2046)}😀${"y".repeat(3000)}`, "le")
    expect(long.length).toBeGreaterThan(4096)
    expect(await sniffed(long)).toBe("text/plain")
    // A browser honours the mark: UTF-16 markup is markup, refused as the UTF-8 one is.
    expect(await sniffed(utf16("<html><script>alert(1)</script>", "le"))).toBe("text/html")
    expect(await sniffed(utf16('<svg xmlns="http://www.w3.org/2000/svg"/>', "be"))).toBe("image/svg+xml")
    // Bytes after the mark that are no text (control characters): binary, not text.
    expect(await sniffed(new Uint8Array([0xff, 0xfe, 0x01, 0x00, 0x02, 0x00]))).not.toBe("text/plain")
  })

  it("still takes an MP3 for audio/mpeg, with or without an ID3 tag, and an MPEG frame with a CRC that opens like the mark", async () => {
    /** `count` MPEG frames of `size` bytes behind the 4-byte `header`, their data an audio-like pattern. */
    const frames = (header: number[], size: number, count: number) => {
      const bytes = new Uint8Array(size * count)
      for (let f = 0; f < count; f++) {
        bytes.set(header, f * size)
        for (let i = 4; i < size; i++) bytes[f * size + i] = (i * 37 + f) % 7 === 0 ? 0 : (i * 13) & 0xff
      }
      return bytes
    }
    // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz: 417-byte frames.
    const mp3 = frames([0xff, 0xfb, 0x90, 0x64], 417, 12)
    expect(await sniffed(mp3)).toBe("audio/mpeg")
    const id3 = new Uint8Array([0x49, 0x44, 0x33, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, ...mp3])
    expect(await sniffed(id3)).toBe("audio/mpeg")
    // MPEG-1 Layer I with a CRC: its header opens FF FE, as a UTF-16LE mark does.
    expect(await sniffed(frames([0xff, 0xfe, 0x90, 0x00], 384, 12))).toBe("audio/mpeg")
  })
})

/** A service for small text files in alice's group with `others`, on a blob store in memory. */
function textService(others: UserId[], now?: () => number) {
  const store = new MemoryBlobStore()
  const service = new AttachmentService({
    store,
    log: createLogger("silent"),
    maxBytes: 1000,
    chunkBytes: 100,
    allowedTypes: ["text/plain"],
    maxImagePixels: 1000,
    ...(now ? { now } : {}),
  })
  const doc = new Y.Doc()
  createConversation(doc, alice, { kind: "group", id: conversation, participants: others })
  service.attach({ read: async (_name, read) => read(doc) } as RunningCore)
  return { store, service }
}

describe("the expiry sweep", () => {
  it("deletes uploads no message referenced within 24 h, and keeps referenced ones", async () => {
    let now = 1_000_000
    const { store, service } = textService([], () => now)
    const kept = await service.createUpload(conversation, alice, { name: "a.txt", size: 5 })
    await service.appendChunk(kept, 0, new TextEncoder().encode("hello"))
    const orphan = await service.createUpload(conversation, alice, { name: "b.txt", size: 5 })
    await service.appendChunk(orphan, 0, new TextEncoder().encode("hello"))
    const unfinished = await service.createUpload(conversation, alice, { name: "c.txt", size: 50 })
    await service.appendChunk(unfinished, 0, new TextEncoder().encode("hel"))
    await service.messageSent(conversation, "msg-00000001" as MessageId, alice, [{ id: kept.id, url: "/x" }])
    expect(await service.sweep()).toBe(0)
    now += UNREFERENCED_TTL_MS + 1
    expect(await service.sweep()).toBe(2)
    expect(await service.record(kept.id)).toMatchObject({ complete: true, message: "msg-00000001" })
    expect(await service.record(orphan.id)).toBeUndefined()
    expect(await service.record(unfinished.id)).toBeUndefined()
    expect((await store.list("conv/")).filter((k) => !k.includes(kept.id) && !k.includes("/msg/"))).toEqual(
      [],
    )
  })

  it("links an upload to its uploader's first message only: another member's message neither takes nor deletes it", async () => {
    const { service } = textService([mallory])
    const upload = await service.createUpload(conversation, alice, { name: "a.txt", size: 5 })
    await service.appendChunk(upload, 0, new TextEncoder().encode("hello"))
    // Mallory got hold of the id before alice sent it.
    await service.messageSent(conversation, "msg-0000000m" as MessageId, mallory, [
      { id: upload.id, url: "/x" },
    ])
    expect(await service.record(upload.id)).not.toHaveProperty("message")
    await service.messageSent(conversation, "msg-0000000a" as MessageId, alice, [
      { id: upload.id, url: "/x" },
    ])
    expect(await service.messageDeleted(conversation, "msg-0000000m" as MessageId)).toBe(0)
    expect(await service.record(upload.id)).toMatchObject({ complete: true, message: "msg-0000000a" })
    expect(await service.messageDeleted(conversation, "msg-0000000a" as MessageId)).toBe(1)
    expect(await service.record(upload.id)).toBeUndefined()
  })

  it("links and deletes the files of a message whose send reaches it only after the message's purge", async () => {
    const { service } = textService([])
    const upload = await service.createUpload(conversation, alice, { name: "a.txt", size: 5 })
    await service.appendChunk(upload, 0, new TextEncoder().encode("hello"))
    const sent = {
      event: { type: "message.sent", conversationId: conversation },
      subject: {
        message: {
          id: "msg-0000000p",
          author: alice,
          body: "see the file",
          attachments: [{ id: upload.id, url: "/x", name: "a.txt" }, { url: "https://elsewhere.example/b" }],
        },
      },
    } as unknown as HookEvent
    // The message deleted and purged while its send waited in the target's backlog (a failing store).
    const { message } = redactEvent(sent, { kind: "messages", ids: new Set(["msg-0000000p"]) })
      .subject as unknown as {
      message: { id: MessageId; author: UserId; body: string; attachments: unknown[] }
    }
    expect(message).toMatchObject({ body: "", attachments: [{ id: upload.id }] })
    await service.messageSent(conversation, message.id, message.author, message.attachments)
    expect(await service.messageDeleted(conversation, message.id)).toBe(1)
    expect(await service.record(upload.id)).toBeUndefined()
  })

  it("refuses an upload to a conversation the user is not in, as a missing one", async () => {
    const service = new AttachmentService({
      store: new MemoryBlobStore(),
      log: createLogger("silent"),
      maxBytes: 1000,
      chunkBytes: 100,
      allowedTypes: ["text/plain"],
      maxImagePixels: 1000,
    })
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: conversation, participants: [] })
    service.attach({ read: async (_name, read) => read(doc) } as RunningCore)
    await expect(
      service.createUpload(conversation, "eve" as UserId, { name: "x", size: 1 }),
    ).rejects.toMatchObject({
      code: "NOT_FOUND",
    })
    await expect(service.createUpload(conversation, alice, { name: "x", size: 1001 })).rejects.toBeInstanceOf(
      ParleyError,
    )
  })
})

describe("per-user upload quota", () => {
  it("counts a user's chunks in flight and bytes a minute across requests, apart from other users", () => {
    let now = 0
    const quota = new UploadQuota({ concurrent: 2, bytesPerMinute: 600, uploadsPerMinute: 2, now: () => now })
    expect([quota.open(alice), quota.open(alice), quota.open(alice)]).toEqual([true, true, false])
    expect(quota.open("bob" as UserId)).toBe(true)
    const a = quota.take(alice, 100)
    const b = quota.take(alice, 100)
    expect(typeof a).toBe("function")
    expect(quota.take(alice, 100)).toBe("concurrent")
    expect(typeof quota.take("bob" as UserId, 100)).toBe("function")
    ;(a as () => void)()
    expect(quota.take(alice, 500)).toBe("rate")
    now += 60_000
    expect(typeof quota.take(alice, 500)).toBe("function")
    ;(b as () => void)()
  })
  it("holds a user to bytes a day whatever the minute allows, taking nothing from either bucket when refused", () => {
    let now = 0
    const quota = new UploadQuota({
      concurrent: 4,
      bytesPerMinute: 600,
      bytesPerDay: 1000,
      uploadsPerMinute: 2,
      now: () => now,
    })
    ;(quota.take(alice, 600) as () => void)()
    now += 60_000
    // The minute has refilled; the day has 400 left.
    expect(quota.take(alice, 500)).toBe("day")
    expect(quota.retryAfterMs(alice, 500)).toBeGreaterThan(60 * 60_000)
    ;(quota.take(alice, 400) as () => void)()
    now += 60_000
    expect(quota.take(alice, 100)).toBe("day")
    expect(typeof quota.take("bob" as UserId, 600)).toBe("function")
    // A day later the whole budget is back.
    now += 24 * 60 * 60_000
    expect(typeof quota.take(alice, 600)).toBe("function")
  })
  it("drops a user's buckets once they are full again and nothing of theirs is in flight", () => {
    vi.useFakeTimers()
    try {
      let now = 0
      const quota = new UploadQuota({
        concurrent: 2,
        bytesPerMinute: 600,
        uploadsPerMinute: 2,
        now: () => now,
      })
      const advance = (ms: number) => {
        now += ms
        vi.advanceTimersByTime(ms)
      }
      for (let i = 0; i < 100; i++) {
        const user = `user-${i}` as UserId
        quota.open(user)
        ;(quota.take(user, 100) as () => void)()
      }
      const busy = quota.take(alice, 600) as () => void
      expect(quota.trackedUsers).toBe(101)
      advance(60_000)
      // Everyone who left is forgotten; a user with a chunk in flight keeps theirs until it ends.
      expect(quota.trackedUsers).toBe(1)
      busy()
      advance(60_000)
      expect(quota.trackedUsers).toBe(0)
    } finally {
      vi.useRealTimers()
    }
  })
})

describe("link previews", () => {
  it("reads the title and description from the head, with entities decoded", () => {
    expect(
      parseLinkPreview(
        "https://e.com",
        `<html><head><title>Plain &amp; simple</title><meta property="og:description" content="It&#39;s &quot;good&quot;"></head><body><title>no</title></body>`,
      ),
    ).toEqual({ url: "https://e.com", title: "Plain & simple", description: `It's "good"` })
    expect(
      parseLinkPreview("https://e.com", `<meta property="og:title" content="OG wins"><title>t</title>`),
    ).toMatchObject({
      title: "OG wins",
    })
    expect(parseLinkPreview("https://e.com", "<p>nothing</p>")).toEqual({ url: "https://e.com" })
  })

  it("reads tags in any case, after non-ASCII text and after a tag too long to read, and no longer names", () => {
    const page = [
      "<HEAD><TITLE>İstanbul ﬀ notes</TITLE>",
      `<meta name="description" content="${"x".repeat(2500)}" ${"y".repeat(100)}>`,
      '<metadata name="description" content="not a meta tag">',
      `<META NAME="Description" CONTENT='Ünïcode before me'>`,
      "</head><body><title>not the head</title>",
    ].join("")
    expect(parseLinkPreview("https://e.com", page)).toEqual({
      url: "https://e.com",
      title: "İstanbul ﬀ notes",
      description: "Ünïcode before me",
    })
    // Openings that never close read nothing (and, one pass over them, cost little: BENCHMARKS.md).
    expect(parseLinkPreview("https://e.com", `${"<meta".repeat(100_000)}`)).toEqual({ url: "https://e.com" })
    expect(parseLinkPreview("https://e.com", `<title>${"<title".repeat(1000)}`)).toEqual({
      url: "https://e.com",
    })
  })

  let server: Server
  let base: string
  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url === "/page") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" })
        res.end(`<head><title>Local page</title></head>${"x".repeat(2_000_000)}`)
      } else if (req.url === "/redirect") {
        res.writeHead(302, { location: "/page" })
        res.end()
      } else if (req.url === "/stalls-after-head") {
        // Its head, then nothing (a page that streams slowly, or hangs).
        res.writeHead(200, { "content-type": "text/html" })
        res.write("<html><head><title>Slow page</title></head><bo")
      } else if (req.url === "/stalls") {
        res.writeHead(200, { "content-type": "text/html" })
        res.flushHeaders()
      } else if (req.url === "/json") {
        res.writeHead(200, { "content-type": "application/json" })
        res.end("{}")
      } else {
        res.writeHead(404)
        res.end()
      }
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())))

  it("refuses private addresses unless allowed, follows redirects, caps size and wants HTML", async () => {
    await expect(new LinkPreviewer().preview(`${base}/page`)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: "link refused: a loopback or private address",
    })
    await expect(new LinkPreviewer().preview("file:///etc/passwd")).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    })
    // A name that does not resolve is a page that cannot be fetched (503), not the relay's failure (500).
    await expect(new LinkPreviewer().preview("http://no-such-host.invalid/")).rejects.toMatchObject({
      code: "UNAVAILABLE",
      message: "cannot preview the link: cannot resolve no-such-host.invalid",
    })
    const local = new LinkPreviewer({
      endpoints: { allowHttp: true, allowPrivate: true },
      maxBytes: 64 * 1024,
    })
    expect(await local.preview(`${base}/redirect`)).toEqual({ url: `${base}/redirect`, title: "Local page" })
    await expect(local.preview(`${base}/json`)).rejects.toMatchObject({ code: "UNAVAILABLE" })
    await expect(local.preview(`${base}/missing`)).rejects.toMatchObject({ code: "UNAVAILABLE" })
  })

  it("previews a page that stalls after its head from what arrived, and refuses one that sent nothing, typed", async () => {
    const local = new LinkPreviewer({ endpoints: { allowHttp: true, allowPrivate: true }, timeoutMs: 300 })
    expect(await local.preview(`${base}/stalls-after-head`)).toEqual({
      url: `${base}/stalls-after-head`,
      title: "Slow page",
    })
    const started = performance.now()
    await expect(local.preview(`${base}/stalls`)).rejects.toMatchObject({
      code: "UNAVAILABLE",
      message: "cannot preview the link: the page sent nothing within 300 ms",
    })
    expect(performance.now() - started).toBeLessThan(2000)
  })
})

describe("turns at decoding images", () => {
  const settle = () => new Promise((resolve) => setTimeout(resolve, 0))
  /** Work that runs until released by name, recording the order it began in. */
  function gated() {
    const order: string[] = []
    const gates = new Map<string, () => void>()
    const work = (name: string) => () =>
      new Promise<void>((resolve) => {
        order.push(name)
        gates.set(name, resolve)
      })
    const end = async (name: string) => {
      gates.get(name)!()
      await settle()
    }
    return { order, work, end }
  }

  it("runs two at once, one per user, a freed turn going to the user served longest ago", async () => {
    const turns = new DecodeTurns(2)
    const { order, work, end } = gated()
    const runs = [
      turns.run("mallory", work("m1")),
      turns.run("mallory", work("m2")),
      turns.run("mallory", work("m3")),
      turns.run("alice", work("a1")),
      turns.run("bob", work("b1")),
    ]
    await settle()
    // Mallory's second image waits for her first; Alice's takes the other turn.
    expect(order).toEqual(["m1", "a1"])
    // Her second image came before Bob's, but Bob has had no turn: he gets hers.
    await end("m1")
    expect(order).toEqual(["m1", "a1", "b1"])
    await end("a1")
    expect(order).toEqual(["m1", "a1", "b1", "m2"])
    await end("b1")
    await end("m2")
    await end("m3")
    await Promise.all(runs)
    expect(order).toEqual(["m1", "a1", "b1", "m2", "m3"])
  })

  it("gives a user arriving behind two accounts' backlogs the next turn that ends, not the end of their queues", async () => {
    const turns = new DecodeTurns(2)
    const { order, work, end } = gated()
    const runs: Promise<void>[] = []
    for (let i = 1; i <= 4; i++) runs.push(turns.run("a1", work(`a1-${i}`)), turns.run("a2", work(`a2-${i}`)))
    await settle()
    runs.push(turns.run("honest", work("png")))
    // The two accounts keep coming back for more as each of theirs ends (the repro: 4 uploads in flight each).
    await end("a1-1")
    expect(order).toEqual(["a1-1", "a2-1", "png"])
    await end("a2-1")
    await end("png")
    for (const name of ["a1-2", "a2-2", "a1-3", "a2-3", "a1-4", "a2-4"]) await end(name)
    await Promise.all(runs)
  })
})

describe("the relay's upload chunk slots", () => {
  it("gives a new chunk the slot of the slowest one under the contended pace, and none when all are faster", () => {
    let now = 0
    // Two slots; a chunk under 1000 bytes a second gives up its slot to a new one when both are taken.
    const slots = new ChunkSlots(2, 1000, () => now)
    const trickle = slots.take()!
    const fast = slots.take()!
    now = 5000
    trickle.received = 2500 // 500 bytes a second
    fast.received = 50_000 // 10,000 bytes a second
    expect(slots.available()).toBe(true)
    const next = slots.take()!
    expect(trickle.preempted.aborted).toBe(true)
    expect(fast.preempted.aborted).toBe(false)
    expect(slots.inFlight).toBe(2)
    // The new chunk is measured over a second at least: once it sends at pace it keeps its slot.
    next.received = 2000
    expect(slots.available()).toBe(false)
    expect(slots.take()).toBeUndefined()
    // The preempted chunk's release frees nothing more: its slot is the new chunk's.
    trickle.release()
    expect(slots.inFlight).toBe(2)
    fast.release()
    expect(slots.take()).toBeDefined()
  })
})

describe("decoding an uploaded image", () => {
  /** A PNG of `width` × `height` noise-free pixels, 16-bit RGBA when `deep`, interlaced when `interlaced`. */
  async function png(width: number, height: number, deep: boolean, interlaced: boolean): Promise<Uint8Array> {
    let image = sharp({
      create: { width, height, channels: 4, background: { r: 9, g: 90, b: 200, alpha: 1 } },
    })
    if (deep) image = image.toColourspace("rgb16")
    return image.png({ progressive: interlaced }).toBuffer()
  }
  const describe_ = (bytes: Uint8Array) =>
    describeImage(
      async function* () {
        yield bytes
      },
      "image/png",
      1_000_000,
    )

  it("refuses, before decoding a pixel, an image under the pixel limit whose pixels would take more memory than that many 8-bit RGBA pixels", async () => {
    // 990,000 pixels, under the limit of 1,000,000: at 8 bytes a pixel (16-bit RGBA) 7.9 MB, twice the 4 MB allowed.
    const deep = await png(1100, 900, true, false)
    await expect(describe_(deep)).rejects.toThrow(/decodes to 7920000 bytes/)
    // The same pixels at 8 bits decode, and so do 16-bit ones at half the count.
    expect(await describe_(await png(1100, 900, false, false))).toMatchObject({ width: 1100, height: 900 })
    expect(await describe_(await png(700, 700, true, false))).toMatchObject({ width: 700, height: 700 })
  })

  it("allows an interlaced PNG a quarter of that: libvips decodes it whole, without shrinking on load", async () => {
    await expect(describe_(await png(600, 600, false, true))).rejects.toThrow(/decodes to 1440000 bytes/)
    expect(await describe_(await png(400, 400, false, true))).toMatchObject({ width: 400, height: 400 })
  })

  /** The prober's AVIF: 1,295 bytes, 6300 × 6300 of one colour, with EXIF. */
  const PROBE_AVIF = Buffer.from(
    "AAAAHGZ0eXBhdmlmAAAAAG1pZjFhdmlmbWlhZgAAARdtZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAAAAAAAAAAAAAAADRpbG9jAAAAAERAAAIAAQAAAAABOwABAAAAAAAAAvgAAgAAAAAEMwABAAAAAAAAANwAAAA4aWluZgAAAAAAAgAAABVpbmZlAgAAAAABAABhdjAxAAAAABVpbmZlAgAAAQACAABFeGlmAAAAAA5waXRtAAAAAAABAAAAVmlwcnAAAAA4aXBjbwAAAAxhdjFDgT8CAAAAABRpc3BlAAAAAAAAGJwAABicAAAAEHBpeGkAAAAAAwgICAAAABZpcG1hAAAAAAAAAAEAAQOBAgMAAAAaaXJlZgAAAAAAAAAOY2RzYwACAAEAAQAAA9xtZGF0EgAKCj/zMTeJtpAQ0Gky5wUQGITFydNNNMLGwIAAXc/KKvcL3qRGGaYDozlNXuyg/lgZUbAa7HdfUWMP7HnkrAX+391elksm1Qvqh0Hntb0EKPoERSgw+Ec6s91XCCJAj7T+t9S3tJWpMCcIQG/CqmVBa09mjPw5i1OAQkBdz8pEY/vnVc969o7pLDiRtFuw+l+U9v6zMhQizAIsmxw5KCIA6QGZl7/EclGIQt8sZ7xk80dpifDVEdBhZ7INY90WfkGL4c5SDOeZci3NFjbGWld1OMn5dqQErtSQoFzPykRj++dVz3r2jukrT3ng+7CKic6npzhpQzyujf0vy2ZOpUI1QXFC28B/Nip532z0wtPtLIxqqRR3XULYUIsSn6BA4uc0ObTtcoUJjyzQfzsQVihBD+s812EPB4JVz8pEVhAMMmwsTEiCd0VX3PWgXllZ/0aXSIgey9Mra1HgUsh4emY6jcJ4z5PZiUCH04L2PJaCSx5psLHRTGlXVK+55wlRc46N2rWV804yit21ATSVJChcz8pEY/vnVc969o7pK0954PuwionOp6c4aUM8ro39L8tmTqVCNUFxQtvAfzYqed9s9MLT7SyMaqkUd11C2FCLEp+gQOLnNDm07XKFCY8s0H87EFYoQQ/rPNdhDweCVc/KRFYQDDJsLExIgndFV9z1oF5ZWf9Gl0iIHsvTK2tR4FLIeHpmOo3CeM+T2YlAh9OC9jyWgkseabCx0UxpV1SvuecJUXOOjdq1lfNOMordtQE0lSQoW8/KRGP751XPevaO6StPeeD7sIqJzqenOGlDPK6N/S/LZk6lQjVBcULbwH82KnnfbPTC0+0sjGqpFHddQthQixKfoEDi5zQ5tO1yhQmPLNB/OxBWKEEP6zzXYRBAz8pEVhAMMmwsTEiCd0VX3PWgXllZ/0aXSIgey9Mra1HgUsh4emY6jcJ4z5PZiUCH04L2PJaCSx5psLHRTGlXVK+55wlRc46N2rWV804yit21ATSWgAAAAAZFeGlmAABJSSoACAAAAAgADwECAAYAAAB+AAAAEAECAAIAAABYAAAAEgEDAAEAAAABAAAAGgEFAAEAAABuAAAAGwEFAAEAAAB2AAAAKAEDAAEAAAACAAAAEwIDAAEAAAABAAAAaYcEAAEAAACEAAAAAAAAADhjAADoAwAAOGMAAOgDAABQcm9iZQAGAACQBwAEAAAAMDIxMAGRBwAEAAAAAQIDAACgBwAEAAAAMDEwMAGgAwABAAAA//8AAAKgBAABAAAAnBgAAAOgBAABAAAAnBgAAAAAAAA=",
    "base64",
  )
  /** An image of `format`, `width` × `height`, of one colour, with EXIF (a phone's make). */
  const withExif = (format: "avif" | "webp" | "jpeg", width: number, height: number) =>
    sharp({ create: { width, height, channels: 3, background: { r: 200, g: 90, b: 9 } } })
      [format]()
      .withExif({ IFD0: { Make: "Phone-Maker-Marker" } })
      .toBuffer()
  const describeAs = (bytes: Uint8Array, type: string, maxPixels: number) =>
    describeImage(
      async function* () {
        yield bytes
      },
      type,
      maxPixels,
    )

  it("refuses, before decoding a pixel, an AVIF over its share of the pixel limit (its decoder costs ten times as much)", async () => {
    const started = performance.now()
    // Under the 40-million-pixel limit; before, its metadata-stripping re-encode cost 14 s of CPU and 1.4 GB.
    await expect(describeAs(PROBE_AVIF, "image/avif", 40_000_000)).rejects.toThrow(/6300 × 6300 heif/)
    expect(performance.now() - started).toBeLessThan(1000)
    // 40 % of a limit of a million pixels: 700 × 700 is over, 600 × 600 under.
    await expect(describeAs(await withExif("avif", 700, 700), "image/avif", 1_000_000)).rejects.toThrow(
      /700 × 700 heif/,
    )
    const plain = await sharp({ create: { width: 600, height: 600, channels: 3, background: "#123" } })
      .avif()
      .toBuffer()
    expect(await describeAs(plain, "image/avif", 1_000_000)).toMatchObject({ width: 600, height: 600 })
  })

  it("stores an image with metadata again downscaled past its format's share of the pixel limit, a JPEG whole", async () => {
    const limit = 1_000_000
    // AVIF: 10 % (100,000 pixels); WebP: 30 % (300,000); JPEG: all of it.
    const avif = await describeAs(await withExif("avif", 600, 400), "image/avif", limit)
    expect(avif.width * avif.height).toBeLessThanOrEqual(100_000)
    expect(avif.width / avif.height).toBeCloseTo(1.5, 1)
    const webp = await describeAs(await withExif("webp", 900, 600), "image/webp", limit)
    expect(webp.width * webp.height).toBeLessThanOrEqual(300_000)
    expect(webp.width * webp.height).toBeGreaterThan(290_000)
    const jpeg = await describeAs(await withExif("jpeg", 900, 600), "image/jpeg", limit)
    expect(jpeg).toMatchObject({ width: 900, height: 600 })
    for (const [facts, format] of [
      [avif, "heif"],
      [webp, "webp"],
      [jpeg, "jpeg"],
    ] as const) {
      // What is served is the clean copy: its size is the one given, and it carries no EXIF.
      const meta = await sharp(facts.clean!).metadata()
      expect(meta).toMatchObject({ format, width: facts.width, height: facts.height })
      expect(meta.exif).toBeUndefined()
      expect(facts.thumbnail.width).toBeLessThanOrEqual(320)
    }
    // Without metadata nothing is written again, whatever its size.
    const plain = await sharp({ create: { width: 900, height: 600, channels: 3, background: "#123" } })
      .webp()
      .toBuffer()
    expect(await describeAs(plain, "image/webp", limit)).toMatchObject({ width: 900, height: 600 })
    expect((await describeAs(plain, "image/webp", limit)).clean).toBeUndefined()
  })
})
