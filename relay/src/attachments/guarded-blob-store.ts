import type { ParleyError } from "@parley/shared"
import { asStorageFailure, isStorageFailure, type StorageGuard, withDeadlines } from "../storage/guard.js"
import type { BlobStore } from "./blob-store.js"

/** How {@link GuardedBlobStore} bounds its store. */
export interface BlobStoreGuardOptions {
  /** Longest one call (or one chunk of a read) may take, in ms: the relay's storage timeout. */
  readonly timeoutMs: number
  /** Told of each failure of the store itself (for logs and metrics), not of refusals like CONFLICT. */
  readonly onFailure?: (error: ParleyError) => void
  /**
   * The documents' guard when the blobs are in the same database: while it
   * finds that database answering nothing, every call is refused at once
   * (see `withDeadlines`), not left to wait for its deadline.
   */
  readonly shared?: StorageGuard
}

/**
 * A {@link BlobStore} whose calls cannot hang and whose failures are typed:
 * each call (each chunk of a read; not a listing) that has not answered within the storage
 * timeout, and each error of the store itself (a reset or stalled database
 * connection, a failing disk), becomes the retryable STORAGE_UNAVAILABLE
 * (HTTP 503), so a client retries or resumes instead of seeing a 500 or
 * waiting for good. The store's own answers (CONFLICT, NOT_FOUND, a refused
 * key) pass through. A call given up at its deadline may still complete in
 * the store: an upload's append that lands late is found by the client's next
 * chunk (409 with the offset to go on from).
 *
 * The blob store shares the documents' database or disk in every backend, so
 * an outage of that database or disk is the storage's, which `/readyz`
 * reports; it has no probe of its own. A disk with room for a message but not
 * for a chunk (a few hundred KB free) fails uploads while `/readyz` stays
 * ready: the relay still takes messages, and each refused chunk is answered
 * the retryable 503 (measured: 600 KB chunks refused for 10 s with 352 KB free).
 */
export class GuardedBlobStore implements BlobStore {
  readonly kind: string
  /** `inner` with the deadline and typing every other part of the backend has. */
  private readonly bounded: BlobStore

  constructor(
    private readonly inner: BlobStore,
    private readonly options: BlobStoreGuardOptions,
  ) {
    this.kind = inner.kind
    this.bounded = withDeadlines(inner, options.timeoutMs, "blob store", options.shared)
  }

  /** `call`, telling {@link BlobStoreGuardOptions.onFailure} of a failure of the store itself. */
  private told<T>(call: Promise<T>): Promise<T> {
    return call.catch((error: unknown) => {
      if (isStorageFailure(error)) this.options.onFailure?.(error)
      throw error
    })
  }

  append(key: string, offset: number, bytes: Uint8Array): Promise<void> {
    return this.told(this.bounded.append(key, offset, bytes))
  }

  put(key: string, bytes: Uint8Array): Promise<void> {
    return this.told(this.bounded.put(key, bytes))
  }

  get(key: string): Promise<Uint8Array | undefined> {
    return this.told(this.bounded.get(key))
  }

  size(key: string): Promise<number | undefined> {
    return this.told(this.bounded.size(key))
  }

  async *read(key: string, start?: number, end?: number): AsyncIterable<Uint8Array> {
    // The iterator's own calls bounded and typed: each chunk within the deadline, not the whole read.
    const chunks = withDeadlines(
      this.inner.read(key, start, end)[Symbol.asyncIterator](),
      this.options.timeoutMs,
      "blob store: read",
      this.options.shared,
    )
    try {
      for (;;) {
        const next = await this.told(chunks.next())
        if (next.done) return
        yield next.value
      }
    } finally {
      // Not awaited: after a deadline the store's read is still running, and its return waits for it.
      void Promise.resolve(chunks.return?.()).catch(() => {})
    }
  }

  delete(key: string): Promise<void> {
    return this.told(this.bounded.delete(key))
  }

  /**
   * Typed like the rest, but without the deadline: a listing (the sweep of
   * unreferenced uploads) takes as long as the store is large, and under one
   * deadline a relay with many uploads would never sweep again.
   */
  list(prefix: string): Promise<string[]> {
    return this.told(
      this.inner.list(prefix).catch((error: unknown) => {
        throw asStorageFailure("blob store: list", error)
      }),
    )
  }

  close(): Promise<void> {
    return this.inner.close()
  }
}
