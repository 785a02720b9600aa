import { type BlobStore, checkBlobKey, missingBlob, offsetConflict, rangeOf } from "./blob-store.js"

/** Blobs in process memory, as chunks: tests and the memory backend. Nothing survives a restart. */
export class MemoryBlobStore implements BlobStore {
  readonly kind = "memory"
  private readonly blobs = new Map<string, Uint8Array[]>()

  async append(key: string, offset: number, bytes: Uint8Array): Promise<void> {
    checkBlobKey(key)
    const chunks = this.blobs.get(key) ?? []
    const length = lengthOf(chunks)
    if (offset !== length) throw offsetConflict(key, offset, length)
    // An empty chunk stores nothing (see BlobStore.append).
    if (bytes.length === 0) return
    chunks.push(bytes.slice())
    this.blobs.set(key, chunks)
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    this.blobs.set(checkBlobKey(key), [bytes.slice()])
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    const chunks = this.blobs.get(key)
    return chunks && new Uint8Array(Buffer.concat(chunks))
  }

  async size(key: string): Promise<number | undefined> {
    const chunks = this.blobs.get(key)
    return chunks ? lengthOf(chunks) : undefined
  }

  async *read(key: string, start?: number, end?: number): AsyncIterable<Uint8Array> {
    const chunks = this.blobs.get(key)
    if (!chunks) throw missingBlob(key)
    const range = rangeOf(lengthOf(chunks), start, end)
    let at = 0
    for (const chunk of chunks) {
      const from = Math.max(range.start, at)
      const to = Math.min(range.end, at + chunk.length)
      if (from < to) yield chunk.subarray(from - at, to - at)
      at += chunk.length
    }
  }

  async delete(key: string): Promise<void> {
    this.blobs.delete(key)
  }

  async list(prefix: string): Promise<string[]> {
    return [...this.blobs.keys()].filter((k) => k.startsWith(prefix)).sort()
  }

  async close(): Promise<void> {}
}

const lengthOf = (chunks: readonly Uint8Array[]) => chunks.reduce((n, c) => n + c.length, 0)
