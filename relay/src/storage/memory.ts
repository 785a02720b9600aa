import type { RelayStorage, StoredDocument } from "./types.js"

interface MemoryDocument {
  snapshot: Uint8Array | null
  updates: { position: number; update: Uint8Array }[]
  next: number
}

/** Keeps everything in process memory: for tests and throwaway relays. Nothing survives a restart. */
export class MemoryStorage implements RelayStorage {
  private readonly documents = new Map<string, MemoryDocument>()
  private closed = false

  private document(name: string): MemoryDocument {
    let doc = this.documents.get(name)
    if (!doc) {
      doc = { snapshot: null, updates: [], next: 1 }
      this.documents.set(name, doc)
    }
    return doc
  }

  private assertOpen() {
    if (this.closed) throw new Error("storage is closed")
  }

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    const doc = this.documents.get(name)
    if (!doc) return { snapshot: null, updates: [] }
    return {
      snapshot: doc.snapshot?.slice() ?? null,
      updates: doc.updates.map((e) => ({ position: e.position, update: e.update.slice() })),
    }
  }

  async append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    this.assertOpen()
    const doc = this.document(name)
    return updates.map((update) => {
      const position = doc.next++
      // Copied so that a caller reusing its buffer cannot change what was stored.
      doc.updates.push({ position, update: update.slice() })
      return position
    })
  }

  async compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    this.assertOpen()
    const doc = this.document(name)
    doc.snapshot = snapshot.slice()
    doc.updates = doc.updates.filter((e) => e.position > through)
    if (doc.next <= through) doc.next = through + 1
  }

  async list(): Promise<string[]> {
    this.assertOpen()
    return [...this.documents.keys()].sort()
  }

  async close(): Promise<void> {
    this.closed = true
  }
}
