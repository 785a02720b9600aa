import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { HttpRefusal, isTransient, type RelayHttp } from "../src/attachments/http.js"
import { uploadFile } from "../src/attachments/upload-file.js"

// The upload protocol of the attachments contract (POST / HEAD / PATCH with Upload-Offset), served by a
// small server of the test's own so that the faults a real network has (a connection reset mid-upload,
// an expired session, a conflicting offset) can be made at exact points. The real relay is exercised in
// attachments.test.ts.

interface Session {
  readonly size: number
  bytes: Buffer
}

type Fault = "reset" | number | undefined | "slow"

class UploadServer {
  readonly sessions = new Map<string, Session>()
  /** Requests seen, as "METHOD path offset". */
  readonly log: string[] = []
  /** Decides a fault for each request before it is served. */
  fault: (method: string, nth: number) => Fault = () => undefined
  private counts = new Map<string, number>()
  private next = 0
  private server!: Server
  chunkBytes = 4

  async start(): Promise<RelayHttp> {
    this.server = createServer((req, res) => void this.serve(req, res))
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve))
    const { port } = this.server.address() as AddressInfo
    return { origin: `http://127.0.0.1:${port}`, token: async () => "t", fetch: (...a) => fetch(...a) }
  }

  stop(): Promise<void> {
    this.server.closeAllConnections()
    return new Promise((resolve) => this.server.close(() => resolve()))
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const body = Buffer.concat(chunks)
    const method = req.method ?? ""
    const nth = (this.counts.get(method) ?? 0) + 1
    this.counts.set(method, nth)
    const offsetHeader = req.headers["upload-offset"]
    this.log.push(`${method} ${req.url}${offsetHeader !== undefined ? ` ${offsetHeader}` : ""}`)
    const fault = this.fault(method, nth)
    if (fault === "reset") {
      req.socket.destroy()
      return
    }
    if (typeof fault === "number") {
      res.writeHead(fault, { "content-type": "application/problem+json" })
      res.end(JSON.stringify({ title: "refused", status: fault }))
      return
    }
    const created = /^\/v1\/conversations\/[^/]+\/uploads$/.exec(req.url ?? "")
    if (created && method === "POST") {
      const { size } = JSON.parse(body.toString()) as { size: number }
      const uploadId = `up${++this.next}`
      this.sessions.set(uploadId, { size, bytes: Buffer.alloc(0) })
      res.writeHead(201, { "content-type": "application/json" })
      res.end(JSON.stringify({ uploadId, offset: 0, size, chunkBytes: this.chunkBytes }))
      return
    }
    const session = this.sessions.get((req.url ?? "").replace("/v1/uploads/", ""))
    if (!session) {
      res.writeHead(404).end()
      return
    }
    const offset = session.bytes.length
    if (fault === "slow") {
      // As the relay does with a chunk that came too slowly: keeps what arrived (here half), answers 408.
      session.bytes = Buffer.concat([session.bytes, body.subarray(0, Math.floor(body.length / 2))])
      res.writeHead(408, {
        "upload-offset": String(session.bytes.length),
        "content-type": "application/problem+json",
      })
      res.end(JSON.stringify({ title: "too slow", code: "TIMEOUT" }))
      return
    }
    if (method === "HEAD") {
      res.writeHead(204, { "upload-offset": String(offset), "upload-length": String(session.size) }).end()
      return
    }
    if (Number(offsetHeader) !== offset) {
      res.writeHead(409, { "upload-offset": String(offset), "content-type": "application/problem+json" })
      res.end(JSON.stringify({ title: "offset mismatch", code: "CONFLICT" }))
      return
    }
    session.bytes = Buffer.concat([session.bytes, body])
    if (session.bytes.length < session.size) {
      res.writeHead(204, { "upload-offset": String(session.bytes.length) }).end()
      return
    }
    res.writeHead(201, { "content-type": "application/json" })
    res.end(JSON.stringify({ attachment: { id: "att_x", url: "/v1/attachments/att_x", size: session.size } }))
  }
}

let server: UploadServer
let http: RelayHttp
beforeEach(async () => {
  server = new UploadServer()
  http = await server.start()
})
afterEach(() => server.stop())

const bytes = new Blob(["0123456789abcdefghij"]) // 20 bytes: 5 chunks of 4

function upload(uploadId?: string, chunkBytes?: number) {
  const started: string[] = []
  const progress: number[] = []
  const promise = uploadFile(http, {
    conversationId: "g_x",
    name: "a.txt",
    mimeType: "text/plain",
    bytes,
    ...(uploadId ? { uploadId } : {}),
    ...(chunkBytes ? { chunkBytes } : {}),
    started: (session) => {
      started.push(`${session.uploadId}/${session.chunkBytes}`)
    },
    progress: (loaded) => progress.push(loaded),
  })
  return { promise, started, progress }
}

describe("uploadFile", () => {
  it("sends the file in chunks of the relay's size, reporting progress up to the whole file", async () => {
    const { promise, started, progress } = upload()
    const attachment = await promise
    expect(attachment).toMatchObject({ id: "att_x", size: 20 })
    expect(started).toEqual(["up1/4"])
    expect(server.sessions.get("up1")!.bytes.toString()).toBe("0123456789abcdefghij")
    expect(server.log.filter((l) => l.startsWith("PATCH"))).toHaveLength(5)
    expect(progress).toEqual([0, 4, 8, 12, 16, 20])
  })

  it("resumes an interrupted upload where the relay stands, sending each byte once", async () => {
    // The connection drops on the third chunk: the first two are on the relay.
    server.fault = (method, nth) => (method === "PATCH" && nth === 3 ? "reset" : undefined)
    const first = upload()
    const error = await first.promise.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(HttpRefusal)
    expect(isTransient(error)).toBe(true)
    expect(first.started).toEqual(["up1/4"])
    // A later attempt (after a reload: only the stored session id is known) asks where it stands.
    server.fault = () => undefined
    const log = server.log.length
    const second = upload("up1", 4)
    await second.promise
    expect(server.log.slice(log)).toEqual([
      "HEAD /v1/uploads/up1",
      "PATCH /v1/uploads/up1 8",
      "PATCH /v1/uploads/up1 12",
      "PATCH /v1/uploads/up1 16",
    ])
    expect(server.sessions.get("up1")!.bytes.toString()).toBe("0123456789abcdefghij")
    expect(second.progress[0]).toBe(8)
  })

  it("follows the relay's offset after a 409 instead of failing", async () => {
    const { promise } = upload()
    // Another tab sends the first 8 bytes of the same session meanwhile.
    server.fault = (method, nth) => {
      if (method === "PATCH" && nth === 1) server.sessions.get("up1")!.bytes = Buffer.from("01234567")
      return undefined
    }
    await promise
    expect(server.sessions.get("up1")!.bytes.toString()).toBe("0123456789abcdefghij")
    expect(server.log).toContain("PATCH /v1/uploads/up1 0")
    expect(server.log).toContain("PATCH /v1/uploads/up1 8")
  })

  it("resumes from the relay's offset after a 408 (a chunk that came too slowly), every time it happens", async () => {
    const { promise } = upload()
    // Three slow chunks in a row, each half stored: 0 → 2 → 4 → 6, then the link is fast again.
    server.fault = (method, nth) => (method === "PATCH" && nth <= 3 ? "slow" : undefined)
    await promise
    expect(server.sessions.get("up1")!.bytes.toString()).toBe("0123456789abcdefghij")
    expect(server.log).toContain("PATCH /v1/uploads/up1 2")
    expect(server.log).toContain("PATCH /v1/uploads/up1 6")
  })

  it("starts over once when the relay no longer knows the session (expired)", async () => {
    const { promise, started } = upload("up-expired", 4)
    await promise
    expect(started).toEqual(["up1/4"])
    expect(server.log[0]).toBe("HEAD /v1/uploads/up-expired")
    expect(server.sessions.get("up1")!.bytes.length).toBe(20)
  })

  it("throws a refusal that is not worth retrying for 413 and 415, and one that is for 503", async () => {
    for (const [status, code, transient] of [
      [413, "TOO_LARGE", false],
      [415, "INVALID_ARGUMENT", false],
      [403, "FORBIDDEN", false],
      [503, "UNAVAILABLE", true],
    ] as const) {
      server.fault = (method) => (method === "POST" ? status : undefined)
      const error = await upload().promise.catch((e: unknown) => e)
      expect(error).toMatchObject({ status, code })
      expect(isTransient(error)).toBe(transient)
    }
  })
})
