import { connect } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import { newApiKey } from "../../src/api/keys.js"
import type { ApiLimits } from "../../src/api/limits.js"
import { MemoryBackend } from "../../src/backend/index.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"
import { apiClient } from "./helpers.js"

/** What a raw HTTP exchange got back: the status line's code, the headers (lower-cased) and the body. */
interface RawAnswer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string
}

/** Writes `request` on a fresh connection and reads until the relay closes it (or `waitMs` passes). */
async function rawExchange(port: number, request: string, waitMs = 10_000): Promise<RawAnswer> {
  const socket = connect({ host: "127.0.0.1", port })
  const chunks: Buffer[] = []
  socket.on("data", (chunk: Buffer) => chunks.push(chunk))
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()))
  socket.on("error", () => {})
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
  socket.write(request)
  const timer = setTimeout(() => socket.destroy(), waitMs)
  await closed
  clearTimeout(timer)
  const text = Buffer.concat(chunks).toString("utf8")
  const [head = "", body = ""] = text.split("\r\n\r\n", 2)
  const [statusLine = "", ...lines] = head.split("\r\n")
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(":")
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  return { status: Number(statusLine.split(" ")[1] ?? 0), headers, body }
}

/** `answer` is a problem document of `status` and `code` (with `more` of its fields), the connection closed. */
function expectProblem(
  answer: { status: number; headers: Record<string, string | string[] | undefined>; body: string },
  status: number,
  code: string,
  more: Record<string, unknown> = {},
): void {
  expect(answer.status).toBe(status)
  expect(answer.headers["content-type"]).toBe("application/problem+json")
  expect(answer.headers.connection).toBe("close")
  expect(JSON.parse(answer.body)).toMatchObject({ type: `urn:parley:error:${code}`, status, code, ...more })
}

describe("HTTP error answers", () => {
  let relay: RunningRelay | undefined
  afterEach(async () => {
    await relay?.close()
    relay = undefined
  })

  async function start(
    limits: { requestHeadersTimeoutMs?: number } = {},
    apiLimits: Partial<ApiLimits> = {},
  ) {
    const backend = new MemoryBackend()
    relay = await startRelay({ port: 0, warmUp: false, backend, dev: true, log: "silent", limits, apiLimits })
    const made = newApiKey("errors", [
      "conversations:read",
      "conversations:write",
      "messages:read",
      "messages:write",
    ])
    await backend.keys.create(made.record)
    return { key: made.key, api: apiClient(() => relay!.httpUrl, made.key) }
  }

  it("answers a request whose head is too large with 431 and a problem document (before: an empty body)", async () => {
    await start()
    const answer = await rawExchange(
      relay!.port,
      `GET /v1/conversations/g~${"x".repeat(70_000)} HTTP/1.1\r\nHost: relay\r\n\r\n`,
    )
    expectProblem(answer, 431, "TOO_LARGE", { detail: expect.stringContaining("request head") })
  })

  it("answers a body shorter than its Content-Length with 408 and a problem document once its time is up (before: an empty close)", async () => {
    const { key } = await start({}, { bodyTimeoutMs: 500 })
    const body = '{"body":"x"}'
    const answer = await rawExchange(
      relay!.port,
      `POST /v1/conversations HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ${key}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${body.length + 20}\r\n\r\n${body}`,
    )
    expectProblem(answer, 408, "TIMEOUT", {
      detail: "the request body did not arrive whole within 500 ms (is its Content-Length right?)",
    })
  })

  it("answers a request head that does not arrive whole in time with 408 and a problem document (before: an empty body)", async () => {
    await start({ requestHeadersTimeoutMs: 500 })
    // What Node's parser times out itself, before any handler (also what bytes sent past a body's
    // Content-Length become: the start of a next head that never ends).
    const answer = await rawExchange(relay!.port, "POST /v1/conversations HTTP/1.1\r\nHost: relay\r\n")
    expectProblem(answer, 408, "TIMEOUT")
  })

  it("refuses a JSON body whose object repeats a key with 400, naming it (before: the last one won)", async () => {
    const { api } = await start()
    expect((await api("POST", "/v1/conversations", { id: "g~dup", participants: [] })).status).toBe(201)
    const top = await api("POST", "/v1/conversations/g~dup/messages", '{"body":"a","body":"b"}')
    expect([top.status, top.body.code]).toEqual([400, "INVALID_ARGUMENT"])
    expect(top.body.detail).toBe(
      'the key "body" appears twice in one object of the request body; send each key once',
    )
    // Nested, and spelled differently: the same key once decoded.
    const nested = await api(
      "POST",
      "/v1/conversations/g~dup/messages",
      String.raw`{"body":"a","metadata":{"x":1,"\u0078":2}}`,
    )
    expect([nested.status, nested.body.code]).toEqual([400, "INVALID_ARGUMENT"])
    expect(nested.body.detail).toBe(
      'metadata: the key "x" appears twice in one object of the request body; send each key once',
    )
    // The same key in sibling objects is no repeat; nothing was sent before.
    const fine = await api("POST", "/v1/conversations/g~dup/messages", {
      body: "ok",
      metadata: { a: { x: 1 }, b: { x: 2 } },
    })
    expect(fine.status).toBe(201)
    const page = await api("GET", "/v1/conversations/g~dup/messages")
    expect(page.body.messages.map((m: { body: string }) => m.body)).toEqual(["ok"])
  })
})
