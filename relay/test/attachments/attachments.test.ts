import { existsSync, readdirSync, readFileSync } from "node:fs"
import { createServer, request } from "node:http"
import type { AddressInfo } from "node:net"
import { join } from "node:path"
import {
  type ConversationId,
  deleteConversation,
  deleteMessage,
  type FileAttachment,
  removeParticipants,
  sendMessage,
  type UserId,
} from "@parley/shared"
import sharp from "sharp"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runKeysCli } from "../../src/api/keys-cli.js"
import { signUrl } from "../../src/attachments/signing.js"
import { freshDataDir } from "../api/helpers.js"
import { attachmentClient, createGroup } from "../helpers/attachments.js"
import type { TestClient } from "../helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId
const MiB = 1024 * 1024

const png = (width: number, height: number) =>
  sharp({ create: { width, height, channels: 3, background: { r: 200, g: 30, b: 90 } } })
    .png()
    .toBuffer()
    .then((b) => new Uint8Array(b))
const text = (bytes: number) => new Uint8Array(Buffer.alloc(bytes, "parley attachments, line by line\n"))

/** Everything stored under the relay's `<data>/blobs`, as paths. */
function blobFiles(dataDir: string): string[] {
  const root = join(dataDir, "blobs")
  // Read again when the relay removed a folder while it was being read (ENOENT from the recursive
  // read): tests poll this while the relay deletes blobs.
  for (let attempt = 0; ; attempt++) {
    if (!existsSync(root)) return []
    try {
      return (
        readdirSync(root, { recursive: true, withFileTypes: true })
          // A "#tmp-" file is one being written (then renamed into place): not a stored blob yet.
          .filter((e) => e.isFile() && !e.name.startsWith("#tmp-"))
          .map((e) => join(e.parentPath, e.name).slice(root.length + 1))
      )
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT" || attempt >= 10) throw error
    }
  }
}

describe("attachments on a relay process (file-system blob store)", () => {
  let relay: RelayProcess
  const api = attachmentClient(() => relay)

  beforeAll(async () => {
    relay = await startRelayProcess({ args: ["--attachment-bytes-per-minute", String(64 * MiB)] })
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  const group = (id: string, participants: UserId[] = [bob]): Promise<TestClient> =>
    createGroup(relay, id, alice, participants, "Files")

  it("uploads an image, gives dimensions and a thumbnail, and serves it to participants only", async () => {
    const client = await group("g~att-image-0001")
    const image = await png(800, 600)
    const done = await api.upload(alice, "g~att-image-0001", "holiday.png", image)
    expect(done.status).toBe(201)
    const attachment = done.body!.attachment as FileAttachment
    expect(attachment).toMatchObject({
      kind: "file",
      name: "holiday.png",
      mimeType: "image/png",
      size: image.length,
      width: 800,
      height: 600,
      thumbnail: { width: 320, height: 240 },
    })
    expect(attachment.url).toBe(`/v1/attachments/${attachment.id}`)
    sendMessage(client.doc, alice, { body: "look", attachments: [attachment] })
    await client.allSaved()

    const got = await api.download(attachment.url, bob)
    expect(got.status).toBe(200)
    expect(Buffer.from(got.bytes).equals(Buffer.from(image))).toBe(true)
    expect(got.headers.get("content-type")).toBe("image/png")
    expect(got.headers.get("content-length")).toBe(String(image.length))
    expect(got.headers.get("cache-control")).toMatch(/^private, max-age=\d+, immutable$/)
    expect(got.headers.get("content-disposition")).toMatch(/^inline; filename="holiday.png"/)
    expect(got.headers.get("x-content-type-options")).toBe("nosniff")
    const etag = got.headers.get("etag")!
    expect((await api.download(attachment.url, bob, { "if-none-match": etag })).status).toBe(304)

    const thumb = await api.download(attachment.thumbnail!.url, bob)
    expect(thumb.status).toBe(200)
    expect(thumb.headers.get("content-type")).toBe("image/webp")
    expect(await sharp(thumb.bytes).metadata()).toMatchObject({ format: "webp", width: 320, height: 240 })

    const range = await api.download(attachment.url, bob, { range: "bytes=0-7" })
    expect(range.status).toBe(206)
    expect(range.headers.get("content-range")).toBe(`bytes 0-7/${image.length}`)
    expect([...range.bytes]).toEqual([...image.subarray(0, 8)])

    // A non-participant and an unknown id get the same answer; no token is a 401.
    const outsider = await api.download(attachment.url, carol)
    const unknown = await api.download("/v1/attachments/att_00000000000000000000000000", carol)
    expect(outsider.status).toBe(404)
    expect(unknown.status).toBe(404)
    expect(Buffer.from(outsider.bytes).toString()).toBe(Buffer.from(unknown.bytes).toString())
    expect((await api.download(attachment.url)).status).toBe(401)
    expect((await api.sign(carol, attachment.id!)).status).toBe(404)
    // Link previews are off unless the relay is started with --link-previews.
    const preview = await fetch(
      `${relay.httpUrl}/v1/link-preview?url=${encodeURIComponent("https://example.com")}`,
      {
        headers: { authorization: `Bearer ${await relay.token(alice)}` },
      },
    )
    expect(preview.status).toBe(404)
    client.close()
  })

  it("stores a photo again without its EXIF and XMP (where it was taken), upright, and serves only that", async () => {
    const client = await group("g~att-exif-0001")
    // A phone's photo: taken sideways (orientation 6), with a position and a serial in its metadata.
    const photo = new Uint8Array(
      await sharp({ create: { width: 600, height: 400, channels: 3, background: { r: 10, g: 120, b: 200 } } })
        .jpeg()
        .withExif({ IFD0: { Make: "Phone-Maker-Marker", Copyright: "Hidden-Geo-Marker 52.52N 13.40E" } })
        .withXmp('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/><!-- Hidden-Xmp-Marker --></x:xmpmeta>')
        .withMetadata({ orientation: 6 })
        .toBuffer(),
    )
    expect(Buffer.from(photo).includes("Hidden-Geo-Marker")).toBe(true)
    const done = await api.upload(alice, "g~att-exif-0001", "IMG_0001.jpg", photo)
    expect(done.status).toBe(201)
    const attachment = done.body!.attachment as FileAttachment
    // As shown: upright, so the sideways 600 × 400 is 400 wide.
    expect(attachment).toMatchObject({ mimeType: "image/jpeg", width: 400, height: 600 })
    sendMessage(client.doc, alice, { body: "where?", attachments: [attachment] })
    await client.allSaved()
    const got = await api.download(attachment.url, bob)
    expect(got.status).toBe(200)
    const served = Buffer.from(got.bytes)
    expect(served.length).toBe(attachment.size)
    for (const marker of ["Hidden-Geo-Marker", "Phone-Maker-Marker", "Hidden-Xmp-Marker"])
      expect(served.includes(marker)).toBe(false)
    const meta = await sharp(served).metadata()
    expect(meta).toMatchObject({ format: "jpeg", width: 400, height: 600 })
    expect(meta.exif).toBeUndefined()
    expect(meta.xmp).toBeUndefined()
    // Nothing the relay stored holds it either: the upload's own bytes are gone.
    // Listed and read again when a file vanished in between (a temporary file renamed as it was written:
    // the thumbnail, made after the upload answered); the renamed file is then read under its name.
    const storedBlobs = async (): Promise<Buffer[]> => {
      for (;;) {
        try {
          return blobFiles(relay.dataDir).map((f) => readFileSync(join(relay.dataDir, "blobs", f)))
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error
          await new Promise((resolve) => setTimeout(resolve, 50))
        }
      }
    }
    const stored = await storedBlobs()
    expect(stored.some((bytes) => bytes.includes("Hidden-Geo-Marker"))).toBe(false)
    client.close()
  })

  it("serves signed URLs without a token, and 404s a wrong or expired signature", async () => {
    const client = await group("g~att-signed-001")
    const done = await api.upload(
      alice,
      "g~att-signed-001",
      "doc.pdf",
      new TextEncoder().encode("%PDF-1.4\n%\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"),
    )
    expect(done.status).toBe(201)
    const attachment = done.body!.attachment as FileAttachment
    expect(attachment.mimeType).toBe("application/pdf")
    const signed = await api.sign(bob, attachment.id!)
    expect(signed.status).toBe(200)
    expect(signed.body.expiresAt as number).toBeGreaterThanOrEqual(Date.now() + 10 * 60_000)
    const ok = await api.download(signed.body.url as string)
    expect(ok.status).toBe(200)
    expect(ok.headers.get("content-disposition")).toMatch(/^attachment;/)
    const url = new URL(signed.body.url as string, relay.httpUrl)
    const sig = url.searchParams.get("sig")!
    url.searchParams.set("sig", `${sig.slice(0, -2)}${sig.endsWith("AA") ? "BB" : "AA"}`)
    expect((await api.download(`${url.pathname}${url.search}`)).status).toBe(404)
    // The thumbnail's signature does not open the file, and an expired signature (made with the relay's secret) fails.
    const secret = readFileSync(join(relay.dataDir, "blobs", "keys", "url-signing", "#000000000000000"))
    const past = Math.floor(Date.now() / 1000) - 1
    expect(
      (
        await api.download(
          `/v1/attachments/${attachment.id}?exp=${past}&u=bob&sig=${signUrl(secret, attachment.id!, "file", past, bob)}`,
        )
      ).status,
    ).toBe(404)
    const future = Math.floor(Date.now() / 1000) + 60
    expect(
      (
        await api.download(
          `/v1/attachments/${attachment.id}?exp=${future}&u=bob&sig=${signUrl(secret, attachment.id!, "file", future, bob)}`,
        )
      ).status,
    ).toBe(200)
    expect(
      (
        await api.download(
          `/v1/attachments/${attachment.id}?exp=${future}&u=bob&sig=${signUrl(secret, attachment.id!, "thumbnail", future, bob)}`,
        )
      ).status,
    ).toBe(404)
    // A signature is for one user: carol cannot reuse bob's by putting her name in it.
    url.searchParams.set("sig", sig)
    url.searchParams.set("u", "carol")
    expect((await api.download(`${url.pathname}${url.search}`)).status).toBe(404)
    // Bob's URL stops working as soon as he is removed, well before it expires.
    removeParticipants(client.doc, alice, [bob])
    await client.allSaved()
    expect((await api.download(signed.body.url as string)).status).toBe(404)
    client.close()
  })

  it("refuses uploads over the size limit, oversized chunks and non-senders", async () => {
    const client = await group("g~att-limits-01")
    const big = await api.create(alice, "g~att-limits-01", { name: "big.bin", size: 25 * MiB + 1 })
    expect(big.status).toBe(413)
    expect(big.body.code).toBe("TOO_LARGE")
    expect((await api.create(carol, "g~att-limits-01", { name: "x.txt", size: 10 })).status).toBe(404)
    const created = await api.create(alice, "g~att-limits-01", { name: "x.txt", size: 3 * MiB })
    const tooLong = await api.patch(alice, created.body.uploadId as string, 0, text(MiB + 1))
    expect(tooLong.status).toBe(413)
    expect((await api.head(carol, created.body.uploadId as string)).status).toBe(404)
    client.close()
  })

  it("stops reading an upload's creation with an endless body after a few KiB (413, connection closed)", async () => {
    const token = await relay.token(carol)
    const outcome = await new Promise<{ status?: number; code?: string; sent: number }>((resolve) => {
      // Chunked, no content-length: "{" then spaces for ever (up to 64 MiB), to a conversation that need not exist.
      const req = request(`${relay.httpUrl}/v1/conversations/g~att-endless-1/uploads`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      })
      const chunk = Buffer.alloc(64 * 1024, 0x20)
      chunk[0] = 0x7b
      let sent = 0
      let ended = false
      const pump = () => {
        while (!ended && sent < 64 * MiB) {
          sent += chunk.length
          if (!req.write(chunk)) return void req.once("drain", pump)
        }
        if (!ended) req.end("}")
      }
      req.on("response", (res) => {
        ended = true
        let body = ""
        res.on("data", (d) => {
          body += d
        })
        res.on("end", () => resolve({ status: res.statusCode, code: JSON.parse(body).code, sent }))
        res.on("error", () => resolve({ status: res.statusCode, sent }))
      })
      // The relay closes the connection after its 413: writing on may fail (EPIPE, reset) before the
      // answer is read. Either way it stopped reading.
      req.on("error", () => {
        ended = true
        setTimeout(() => resolve({ sent }), 500)
      })
      pump()
    })
    // Before: the relay read all 64 MiB into memory, then answered 400.
    expect(outcome.sent).toBeLessThan(16 * MiB)
    if (outcome.status !== undefined) {
      expect(outcome.status).toBe(413)
      expect(outcome.code).toBe("TOO_LARGE")
    }
  })

  it("sniffs the bytes: a .png that is a program or a web page is refused and deleted", async () => {
    const client = await group("g~att-sniff-001")
    const exe = new Uint8Array(4096)
    exe.set(Buffer.from("MZ"), 0)
    exe.set(Buffer.from("This program cannot be run in DOS mode"), 0x4e)
    const refused = await api.upload(alice, "g~att-sniff-001", "cat.png", exe)
    expect(refused.status).toBe(415)
    expect((await api.head(alice, refused.uploadId!)).status).toBe(404)
    const html = await api.upload(
      alice,
      "g~att-sniff-001",
      "cat.png",
      new TextEncoder().encode("<!DOCTYPE html><script>alert(1)</script>"),
    )
    expect(html.status).toBe(415)
    const svg = await api.upload(
      alice,
      "g~att-sniff-001",
      "cat.png",
      new TextEncoder().encode(
        '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
      ),
    )
    expect(svg.status).toBe(415)
    // A PNG claimed as text is stored as what it is.
    const real = await api.upload(alice, "g~att-sniff-001", "notes.txt", await png(10, 20))
    expect(real.status).toBe(201)
    expect(real.body!.attachment).toMatchObject({ mimeType: "image/png", width: 10, height: 20 })
    client.close()
  })

  it("answers chunks racing for one offset: one stored, the others 409 with where the upload stands, in its own terms", async () => {
    await group("g~att-race-01")
    const bytes = text(2 * MiB)
    const created = await api.create(alice, "g~att-race-01", { name: "race.txt", size: bytes.length })
    const id = created.body.uploadId as string
    const answers = await Promise.all(
      Array.from({ length: 3 }, () => api.patch(alice, id, 0, bytes.subarray(0, MiB))),
    )
    expect(answers.map((a) => a.status).sort()).toEqual([204, 409, 409])
    for (const lost of answers.filter((a) => a.status === 409)) {
      expect(lost.offset).toBe(String(MiB))
      // Before: "blob conv/<conversation id in base64>/att_…/file is 1048576 bytes long, not 0". A loser
      // that arrives after the winner stored meets the offset check first; either answer is in the
      // upload's terms.
      expect(String(lost.body?.detail)).not.toMatch(/conv\/|att_|blob/)
      expect(String(lost.body?.detail)).toMatch(new RegExp(`holds ${MiB} bytes[,:] send from there`))
    }
  })

  it("resumes after an interrupted chunk (HEAD, 409 on a wrong offset) and counts bytes per user", async () => {
    const client = await group("g~att-resume-01")
    const bytes = text(2 * MiB + 1000)
    const created = await api.create(alice, "g~att-resume-01", { name: "log.txt", size: bytes.length })
    const id = created.body.uploadId as string
    expect((await api.patch(alice, id, 0, bytes.subarray(0, MiB))).status).toBe(204)
    // The second chunk's connection dies halfway: nothing of it is kept.
    await new Promise<void>((resolve) => {
      const req = request(`${relay.httpUrl}/v1/uploads/${id}`, {
        method: "PATCH",
        headers: {
          "content-type": "application/offset+octet-stream",
          "upload-offset": String(MiB),
          "content-length": String(MiB),
        },
      })
      void relay.token(alice).then((token) => {
        req.setHeader("authorization", `Bearer ${token}`)
        req.write(bytes.subarray(MiB, MiB + 300_000))
        setTimeout(() => {
          req.destroy()
          resolve()
        }, 200)
      })
      req.on("error", () => {})
    })
    const head = await until(
      () => api.head(alice, id),
      (h) => h.status === 204,
    )
    expect(head).toMatchObject({ offset: String(MiB), length: String(bytes.length) })
    const wrong = await api.patch(alice, id, 2 * MiB, bytes.subarray(2 * MiB))
    expect(wrong.status).toBe(409)
    expect(wrong.offset).toBe(String(MiB))
    // An empty chunk stores nothing and changes nothing (stored, it once held its offset against the next).
    const empty = await api.patch(alice, id, MiB, new Uint8Array(0))
    expect(empty).toMatchObject({ status: 204, offset: String(MiB) })
    expect((await api.patch(alice, id, MiB, bytes.subarray(MiB, 2 * MiB))).status).toBe(204)
    const last = await api.patch(alice, id, 2 * MiB, bytes.subarray(2 * MiB))
    expect(last.status).toBe(201)
    const attachment = last.body!.attachment as FileAttachment
    expect(attachment).toMatchObject({ mimeType: "text/plain", size: bytes.length })
    expect(attachment.thumbnail).toBeUndefined()
    const got = await api.download(attachment.url, alice)
    expect(Buffer.from(got.bytes).equals(Buffer.from(bytes))).toBe(true)
    client.close()
  })

  it("deletes a message's blobs with the message, and a conversation's with the conversation", async () => {
    const client = await group("g~att-delete-01")
    const keep = await group("g~att-delete-02")
    const first = (await api.upload(alice, "g~att-delete-01", "a.png", await png(64, 64))).body!
      .attachment as FileAttachment
    const second = (await api.upload(alice, "g~att-delete-01", "b.txt", text(100))).body!
      .attachment as FileAttachment
    const other = (await api.upload(alice, "g~att-delete-02", "c.txt", text(100))).body!
      .attachment as FileAttachment
    const m1 = sendMessage(client.doc, alice, { body: "one", attachments: [first] })
    sendMessage(client.doc, alice, { body: "two", attachments: [second] })
    sendMessage(keep.doc, alice, { body: "three", attachments: [other] })
    await client.allSaved()
    await keep.allSaved()
    const stored = (id: string) => blobFiles(relay.dataDir).filter((f) => f.includes(id))
    expect(stored(first.id!).length).toBe(3) // its record, the file and its thumbnail
    // Linked to its message by the hook pipeline: wait until the reference is written.
    await until(
      () => blobFiles(relay.dataDir).filter((f) => f.includes("/msg/")).length,
      (n) => n >= 3,
    )
    deleteMessage(client.doc, alice, m1.id)
    await client.allSaved()
    await until(
      () => stored(first.id!),
      (files) => files.length === 0,
    )
    expect((await api.download(first.url, alice)).status).toBe(404)
    expect((await api.download(second.url, alice)).status).toBe(200)

    deleteConversation(client.doc, alice)
    await client.allSaved()
    await until(
      () => stored(second.id!),
      (files) => files.length === 0,
    )
    // Only that conversation's: the other one keeps its blob.
    expect(stored(other.id!).length).toBe(2)
    expect((await api.download(other.url, bob)).status).toBe(200)
    client.close()
    keep.close()
  })

  it("keeps an upload session across a restart of the relay", async () => {
    const client = await group("g~att-restart-1")
    client.close()
    const bytes = text(MiB + 5000)
    const created = await api.create(alice, "g~att-restart-1", { name: "r.txt", size: bytes.length })
    const id = created.body.uploadId as string
    expect((await api.patch(alice, id, 0, bytes.subarray(0, MiB))).status).toBe(204)
    await relay.kill()
    relay = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    expect(await api.head(alice, id)).toMatchObject({ status: 204, offset: String(MiB) })
    const last = await api.patch(alice, id, MiB, bytes.subarray(MiB))
    expect(last.status).toBe(201)
    const got = await api.download((last.body!.attachment as FileAttachment).url, bob)
    expect(Buffer.from(got.bytes).equals(Buffer.from(bytes))).toBe(true)
    // A relay process's start (compiling, warming up) takes seconds on a busy machine.
  }, 60_000)
})

describe("per-user upload limits, API keys, link previews", () => {
  let relay: RelayProcess
  const keys: Record<string, string> = {}
  const api = attachmentClient(() => relay)
  beforeAll(async () => {
    const dataDir = freshDataDir()
    for (const [name, scopes] of [
      ["uploader", "messages:write,messages:read"],
      ["reader", "conversations:read"],
    ] as const) {
      const lines: string[] = []
      await runKeysCli(["create", name, "--scopes", scopes, "--data-dir", dataDir], (l) => lines.push(l), {})
      keys[name] = (JSON.parse(lines[0]!) as { key: string }).key
    }
    relay = await startRelayProcess({
      dataDir,
      args: [
        "--attachment-bytes-per-minute",
        String(2 * MiB),
        "--link-previews",
        "--link-previews-allow-private",
      ],
    })
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  it("refuses a user's bytes beyond the minute's budget, whichever upload they belong to", async () => {
    const client = await createGroup(relay, "g~att-quota-001", alice, [bob])
    const one = await api.create(alice, "g~att-quota-001", { name: "1.txt", size: 2 * MiB })
    const two = await api.create(alice, "g~att-quota-001", { name: "2.txt", size: 2 * MiB })
    expect((await api.patch(alice, one.body.uploadId as string, 0, text(MiB))).status).toBe(204)
    expect((await api.patch(alice, two.body.uploadId as string, 0, text(MiB))).status).toBe(204)
    const third = await api.patch(alice, one.body.uploadId as string, MiB, text(MiB))
    expect(third.status).toBe(429)
    // Another user's budget is their own.
    const bobs = await api.create(bob, "g~att-quota-001", { name: "b.txt", size: MiB })
    expect((await api.patch(bob, bobs.body.uploadId as string, 0, text(MiB))).status).toBe(201)
    client.close()
  })

  it("previews a link when started with --link-previews", async () => {
    const server = createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/html" })
      res.end(
        '<html><head><meta property="og:title" content="Launch notes"><meta name="description" content="What shipped"></head></html>',
      )
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const page = `http://127.0.0.1:${(server.address() as AddressInfo).port}/notes`
    const response = await fetch(`${relay.httpUrl}/v1/link-preview?url=${encodeURIComponent(page)}`, {
      headers: { authorization: `Bearer ${await relay.token(alice)}` },
    })
    expect(response.status).toBe(200)
    expect(await response.json()).toEqual({ url: page, title: "Launch notes", description: "What shipped" })
    const anonymous = await fetch(`${relay.httpUrl}/v1/link-preview?url=${encodeURIComponent(page)}`)
    expect(anonymous.status).toBe(401)
    server.close()
  })

  it("refuses an upload whose name is cut inside a character (a lone surrogate) with 400, opening nothing", async () => {
    const id = "g~att-surrogate" as ConversationId
    await createGroup(relay, id, alice, [bob, "service.uploader" as UserId])
    const open = (name: string) =>
      fetch(`${relay.httpUrl}/v1/conversations/${id}/uploads`, {
        method: "POST",
        headers: { authorization: `Bearer ${keys.uploader!}`, "content-type": "application/json" },
        body: JSON.stringify({ name, size: 11 }),
      })
    const cut = "report 📎.txt".slice(0, 8)
    const refused = await open(cut)
    expect(refused.status).toBe(400)
    expect(((await refused.json()) as { detail: string }).detail).toMatch(/^name: /)
    expect((await open("report 📎.txt")).status).toBe(201)
  })

  it("lets an API key upload and download as its service participant, with the scopes it has", async () => {
    const id = "g~att-apikey-01" as ConversationId
    const client = await createGroup(relay, id, alice, [
      bob,
      "service.uploader" as UserId,
      "service.reader" as UserId,
    ])
    const asKey = (key: string) => ({ authorization: `Bearer ${key}` })
    const created = await fetch(`${relay.httpUrl}/v1/conversations/${id}/uploads`, {
      method: "POST",
      headers: { ...asKey(keys.uploader!), "content-type": "application/json" },
      body: JSON.stringify({ name: "report.txt", size: 11 }),
    })
    expect(created.status).toBe(201)
    const { uploadId } = (await created.json()) as { uploadId: string }
    const done = await fetch(`${relay.httpUrl}/v1/uploads/${uploadId}`, {
      method: "PATCH",
      headers: {
        ...asKey(keys.uploader!),
        "content-type": "application/offset+octet-stream",
        "upload-offset": "0",
      },
      body: "hello world",
    })
    expect(done.status).toBe(201)
    const { attachment } = (await done.json()) as { attachment: FileAttachment }
    expect(
      (await fetch(`${relay.httpUrl}${attachment.url}`, { headers: asKey(keys.uploader!) })).status,
    ).toBe(200)
    // A key without messages:read, and a key with a wrong secret.
    expect((await fetch(`${relay.httpUrl}${attachment.url}`, { headers: asKey(keys.reader!) })).status).toBe(
      403,
    )
    expect(
      (
        await fetch(`${relay.httpUrl}${attachment.url}`, {
          headers: asKey(`${keys.uploader!.slice(0, -4)}xxxx`),
        })
      ).status,
    ).toBe(401)
    expect((await api.download(attachment.url, bob)).status).toBe(200)

    // Sent through the HTTP API as the upload answered it, the message owns the file: deleting the
    // message deletes it (it was refused with 400, and without `id` never linked: swept after 24 h).
    const sent = await fetch(`${relay.httpUrl}/v1/conversations/${id}/messages`, {
      method: "POST",
      headers: { ...asKey(keys.uploader!), "content-type": "application/json" },
      body: JSON.stringify({ body: "the report", attachments: [attachment] }),
    })
    expect(sent.status).toBe(201)
    const { id: messageId, attachments } = (await sent.json()) as {
      id: string
      attachments: FileAttachment[]
    }
    expect(attachments).toEqual([attachment])
    const removed = await fetch(`${relay.httpUrl}/v1/conversations/${id}/messages/${messageId}`, {
      method: "DELETE",
      headers: asKey(keys.uploader!),
    })
    expect(removed.status).toBe(204)
    await until(
      async () =>
        (await fetch(`${relay.httpUrl}${attachment.url}`, { headers: asKey(keys.uploader!) })).status,
      (status) => status === 404,
    )
    client.close()
  })
})
