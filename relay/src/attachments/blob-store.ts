import { ErrorCode, ParleyError } from "@parley/shared"

/**
 * Where attachment bytes live, behind the relay's attachment routes. A blob
 * is written as a sequence of chunks, each appended at the blob's current
 * length, each durable and all-or-nothing once {@link BlobStore.append}
 * resolves: an upload interrupted mid-chunk resumes at the end of the last
 * whole chunk, whatever crashed. Keys are `/`-separated paths of
 * `[A-Za-z0-9._~-]` segments ({@link checkBlobKey}). Every implementation
 * passes `relay/test/conformance/blob-store.ts`.
 */
export interface BlobStore {
  /** `fs`, `postgres`, `memory`: for logs and the README's table. */
  readonly kind: string
  /**
   * Appends `bytes` to blob `key` at byte `offset`, which must be the blob's
   * current length (0 for a new blob); otherwise rejects with CONFLICT and
   * stores nothing. Durable when it resolves. An empty `bytes` stores nothing
   * either (a blob is not created by it): stored, an empty chunk would hold
   * its offset against the chunk that follows, and the blob could never grow.
   */
  append(key: string, offset: number, bytes: Uint8Array): Promise<void>
  /**
   * Replaces blob `key` whole, atomically: {@link BlobStore.get} returns the
   * old bytes or the new, never a mix. (A {@link BlobStore.read} stream is
   * for blobs that only grow, like uploads: one running across a put may mix.)
   */
  put(key: string, bytes: Uint8Array): Promise<void>
  /**
   * Blob `key` whole, as one version of it, or undefined when there is none:
   * for small blobs rewritten by {@link BlobStore.put} (records, references)
   * that other requests read meanwhile. Holds the blob in memory.
   */
  get(key: string): Promise<Uint8Array | undefined>
  /** The blob's length, or undefined when there is none. */
  size(key: string): Promise<number | undefined>
  /**
   * The bytes `[start, end)` of blob `key` (default: all of it), a chunk at a
   * time: a reader holds one stored chunk in memory, never the whole blob.
   * Rejects with NOT_FOUND when there is no such blob.
   */
  read(key: string, start?: number, end?: number): AsyncIterable<Uint8Array>
  /** Deletes blob `key`; nothing when there is none. */
  delete(key: string): Promise<void>
  /** Keys of the blobs starting with `prefix`, sorted. */
  list(prefix: string): Promise<string[]>
  /** Releases what the store holds open (not the backend's database: its owner closes that). */
  close(): Promise<void>
}

const SEGMENT = /^[A-Za-z0-9._~-]{1,200}$/

/** Throws INVALID_ARGUMENT unless `key` is `/`-separated segments of `[A-Za-z0-9._~-]`, none `.` or `..`. */
export function checkBlobKey(key: string): string {
  const segments = key.split("/")
  if (key.length > 1024 || !segments.every((s) => SEGMENT.test(s) && s !== "." && s !== ".."))
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `invalid blob key ${JSON.stringify(key)}`)
  return key
}

/** The CONFLICT a store throws when an append's offset is not the blob's length. */
export const offsetConflict = (key: string, offset: number, length: number): ParleyError =>
  new ParleyError(ErrorCode.CONFLICT, `blob ${key} is ${length} bytes long, not ${offset}`)

/** The NOT_FOUND a store throws for a missing blob. */
export const missingBlob = (key: string): ParleyError =>
  new ParleyError(ErrorCode.NOT_FOUND, `no blob ${key}`)

/** Clamps a requested range to a blob of `length` bytes. */
export function rangeOf(length: number, start = 0, end = length): { start: number; end: number } {
  const s = Math.max(0, Math.min(start, length))
  return { start: s, end: Math.max(s, Math.min(end, length)) }
}
