/**
 * Finds where a chunk read from an HTTP connection holds more complete
 * request heads than a client may pipeline, before Node's parser reads it.
 *
 * Node's HTTP parser runs over a whole chunk (up to 64 KiB) and starts every
 * request in it, even once the connection is closed: closing at the fifth
 * request left about 2,400 more to be parsed and dispatched, 54 ms of the
 * relay's CPU per chunk for anyone, with no account and no budget spent (an
 * outside probe). No browser pipelines, and a client that waits for each
 * answer never sends two requests in one chunk; so a chunk with more heads
 * than {@link MAX_HEADS_PER_CHUNK} is cut there.
 *
 * What is a head and what is a body is read as HTTP/1.1 frames them: a
 * body's bytes (`Content-Length`, or `Transfer-Encoding: chunked` chunks)
 * are skipped, whatever they hold, so an upload of a text that quotes HTTP
 * requests is never mistaken for them. Anything this framing cannot follow
 * (a head over 64 KiB, a malformed chunk size) stops the guard for the
 * connection: Node's parser refuses such a request itself.
 */
export class PipelinedRequests {
  private mode: "head" | "body" | "chunk-size" | "chunk-data" | "chunk-end" | "trailers" | "off" = "head"
  /** The head (or chunk-size line, or trailer) read so far, when it spans chunks. */
  private pending: Buffer = EMPTY
  /** Body or chunk bytes still to skip. */
  private remaining = 0

  /**
   * Reads `chunk`; returns the offset where the first head past
   * {@link MAX_HEADS_PER_CHUNK} in it begins, else undefined.
   */
  feed(chunk: Buffer): number | undefined {
    let heads = 0
    let at = 0
    while (at < chunk.length && this.mode !== "off") {
      if (this.mode === "body" || this.mode === "chunk-data") {
        const skip = Math.min(this.remaining, chunk.length - at)
        at += skip
        this.remaining -= skip
        if (this.remaining === 0) this.mode = this.mode === "body" ? "head" : "chunk-end"
        continue
      }
      // A head ends at its blank line; a chunk's size line, its end and a trailer at their line end.
      const marker = this.mode === "head" ? HEAD_END : LINE_END
      const start = at
      let unit: Buffer
      if (this.pending.length > 0) {
        const joined = Buffer.concat([this.pending, chunk.subarray(at)])
        const found = joined.indexOf(marker)
        if (found === -1) return this.keep(joined)
        unit = joined.subarray(0, found + marker.length)
        at += unit.length - this.pending.length
        this.pending = EMPTY
      } else {
        const found = chunk.indexOf(marker, at)
        if (found === -1) return this.keep(chunk.subarray(at))
        unit = chunk.subarray(at, found + marker.length)
        at = found + marker.length
      }
      const text = unit.toString("latin1")
      if (this.mode === "head") {
        if (text.trim() === "") continue
        if (++heads > MAX_HEADS_PER_CHUNK) return start
        this.afterHead(text)
      } else if (this.mode === "chunk-end") this.mode = "chunk-size"
      else if (this.mode === "chunk-size") {
        const size = Number.parseInt(text.split(";")[0]!.trim(), 16)
        if (!Number.isSafeInteger(size) || size < 0) this.mode = "off"
        else if (size === 0) this.mode = "trailers"
        else {
          this.mode = "chunk-data"
          this.remaining = size
        }
      } else if (text === "\r\n") this.mode = "head"
    }
    return undefined
  }

  /** Keeps the start of a unit that goes on in the next chunk (a copy: the chunk's buffer is reused). */
  private keep(part: Buffer): undefined {
    this.pending = Buffer.from(part)
    if (this.pending.length > MAX_HEAD_BYTES) this.mode = "off"
    return undefined
  }

  private afterHead(head: string): void {
    if (/\r\ntransfer-encoding:[^\r]*chunked/i.test(head)) this.mode = "chunk-size"
    else {
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0)
      if (length > 0) {
        this.mode = "body"
        this.remaining = length
      }
    }
  }
}

/** More complete request heads than this in one chunk read from a connection: pipelined, and cut. */
export const MAX_HEADS_PER_CHUNK = 4

/** A head longer than Node takes (16 KiB by default) many times over: Node refuses it, the guard stops. */
const MAX_HEAD_BYTES = 64 * 1024

const EMPTY = Buffer.alloc(0)
const HEAD_END = Buffer.from("\r\n\r\n")
const LINE_END = Buffer.from("\r\n")
