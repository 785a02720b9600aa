import { describe, expect, it } from "vitest"
import { MAX_HEADS_PER_CHUNK, PipelinedRequests } from "../src/pipelined-requests.js"

const get = (path = "/healthz") => `GET ${path} HTTP/1.1\r\nHost: relay\r\n\r\n`
const post = (body: string) =>
  `POST /v1/uploads HTTP/1.1\r\nHost: relay\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
const chunkedPost = (parts: string[]) =>
  `POST /v1/uploads HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n${parts
    .map((p) => `${Buffer.byteLength(p).toString(16)}\r\n${p}\r\n`)
    .join("")}0\r\n\r\n`

/** Feeds `text` in pieces of `size` bytes; the first cut found, as an offset into the whole text. */
function cutOf(text: string, size = Number.POSITIVE_INFINITY): number | undefined {
  const guard = new PipelinedRequests()
  const bytes = Buffer.from(text, "latin1")
  for (let at = 0; at < bytes.length; at += Math.min(size, bytes.length)) {
    const cut = guard.feed(bytes.subarray(at, at + Math.min(size, bytes.length - at)))
    if (cut !== undefined) return at + cut
  }
  return undefined
}

describe("pipelined request heads in one chunk", () => {
  it("cuts a chunk at the first head past the cap, where it begins", () => {
    const text = get().repeat(2000)
    expect(cutOf(text)).toBe(get().length * MAX_HEADS_PER_CHUNK)
    expect(cutOf(get().repeat(MAX_HEADS_PER_CHUNK))).toBeUndefined()
  })

  it("counts per chunk: one request per chunk (a client that waits for each answer) is never cut", () => {
    const guard = new PipelinedRequests()
    for (let i = 0; i < 100; i++) expect(guard.feed(Buffer.from(get()))).toBeUndefined()
  })

  it("skips bodies, whatever they hold: an upload of text quoting HTTP requests is no flood", () => {
    const quoted = get().repeat(50)
    expect(cutOf(post(quoted))).toBeUndefined()
    expect(cutOf(post(quoted), 7)).toBeUndefined()
    expect(cutOf(chunkedPost([quoted, quoted]))).toBeUndefined()
    expect(cutOf(chunkedPost([quoted, "x"]), 5)).toBeUndefined()
  })

  it("finds the heads that follow a body, of either framing, and across chunk boundaries", () => {
    const afterBody = post("a\r\n\r\nb") + get().repeat(10)
    expect(cutOf(afterBody)).toBe(post("a\r\n\r\nb").length + get().length * (MAX_HEADS_PER_CHUNK - 1))
    const afterChunked = chunkedPost(["x".repeat(100)]) + get().repeat(10)
    expect(cutOf(afterChunked)).toBe(
      chunkedPost(["x".repeat(100)]).length + get().length * (MAX_HEADS_PER_CHUNK - 1),
    )
    // In pieces of 3 bytes every marker straddles some boundary; no piece holds five heads.
    expect(cutOf(get().repeat(20), 3)).toBeUndefined()
    // Two pieces: the second holds the rest of a head begun in the first, and many more.
    const guard = new PipelinedRequests()
    const bytes = Buffer.from(get().repeat(20))
    const split = get().length + 10
    expect(guard.feed(bytes.subarray(0, split))).toBeUndefined()
    // The head begun in the first piece is the second piece's first; its fifth begins after four more.
    expect(guard.feed(bytes.subarray(split))).toBe(get().length * (MAX_HEADS_PER_CHUNK + 1) - split)
  })
})
