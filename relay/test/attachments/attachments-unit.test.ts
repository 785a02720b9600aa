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
import { sniffText } from "../../src/attachments/content-type.js"
import { DecodeTurns, describeImage } from "../../src/attachments/images.js"
import { LinkPreviewer, parseLinkPreview } from "../../src/attachments/link-preview.js"
import { MemoryBlobStore } from "../../src/attachments/memory-blob-store.js"
import { AttachmentService, UNREFERENCED_TTL_MS } from "../../src/attachments/service.js"
import { UploadQuota } from "../../src/attachments/user-quota.js"
import type { RunningCore } from "../../src/extension.js"
import { createLogger } from "../../src/log.js"

const alice = "alice" as UserId
const conversation = "g~unit-attach-01" as ConversationId

describe("sniffing text", () => {
  it("tells plain text from markup a browser would render and from binary", () => {
    expect(sniffText(new TextEncoder().encode("hello\nworld\t!"))).toBe("text/plain")
    expect(sniffText(new TextEncoder().encode("\ufeff  <!doctype HTML><p>x"))).toBe("text/html")
    expect(sniffText(new TextEncoder().encode("<script>alert(1)</script>"))).toBe("text/html")
    expect(sniffText(new TextEncoder().encode('<?xml version="1.0"?>\n<svg xmlns="x"/>'))).toBe(
      "image/svg+xml",
    )
    expect(sniffText(new Uint8Array([0x68, 0x69, 0x00, 0x01]))).toBe("application/octet-stream")
    expect(sniffText(new Uint8Array([0xff, 0xfe, 0xfd]))).toBe("application/octet-stream")
    // A head cut inside a multi-byte character is still text.
    expect(sniffText(new TextEncoder().encode("héllo").subarray(0, 2))).toBe("text/plain")
  })
})

describe("the expiry sweep", () => {
  it("deletes uploads no message referenced within 24 h, and keeps referenced ones", async () => {
    let now = 1_000_000
    const store = new MemoryBlobStore()
    const service = new AttachmentService({
      store,
      log: createLogger("silent"),
      maxBytes: 1000,
      chunkBytes: 100,
      allowedTypes: ["text/plain"],
      maxImagePixels: 1000,
      now: () => now,
    })
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: conversation, participants: [] })
    service.attach({ read: async (_name, read) => read(doc) } as RunningCore)
    const kept = await service.createUpload(conversation, alice, { name: "a.txt", size: 5 })
    await service.appendChunk(kept, 0, new TextEncoder().encode("hello"))
    const orphan = await service.createUpload(conversation, alice, { name: "b.txt", size: 5 })
    await service.appendChunk(orphan, 0, new TextEncoder().encode("hello"))
    const unfinished = await service.createUpload(conversation, alice, { name: "c.txt", size: 50 })
    await service.appendChunk(unfinished, 0, new TextEncoder().encode("hel"))
    await service.messageSent(conversation, "msg-00000001" as MessageId, [{ id: kept.id, url: "/x" }])
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
    })
    await expect(new LinkPreviewer().preview("file:///etc/passwd")).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
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
  it("runs two at once, one per user: a user's backlog does not hold back another user's image", async () => {
    const turns = new DecodeTurns(2)
    const order: string[] = []
    const gates = new Map<string, () => void>()
    const work = (name: string) => () =>
      new Promise<void>((resolve) => {
        order.push(name)
        gates.set(name, resolve)
      })
    const settle = () => new Promise((resolve) => setTimeout(resolve, 0))
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
    gates.get("m1")!()
    await settle()
    // Her second image came before Bob's and takes her freed turn: she never holds both.
    expect(order).toEqual(["m1", "a1", "m2"])
    gates.get("a1")!()
    await settle()
    expect(order).toEqual(["m1", "a1", "m2", "b1"])
    gates.get("m2")!()
    gates.get("b1")!()
    await settle()
    gates.get("m3")!()
    await Promise.all(runs)
    expect(order).toEqual(["m1", "a1", "m2", "b1", "m3"])
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
})
