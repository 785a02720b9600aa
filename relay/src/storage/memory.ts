import { checksumOf } from "./checksum.js"
import { storedHolds } from "./holding.js"
import type { DamagedDocument, DocumentRecord, RelayStorage, StoredDocument } from "./types.js"

/** One document's data in {@link MemoryData}. */
export interface MemoryDocument {
  snapshot: Uint8Array | null
  snapshotChecksum?: number
  through: number
  updates: { position: number; update: Uint8Array; checksum?: number }[]
  next: number
}

/** One catalog record in {@link MemoryData}. */
export interface MemoryRecord {
  lastPosition: number
  damaged: { reason: string; detectedAt: number } | null
}

/**
 * What a {@link MemoryStorage} holds: the documents' data and, apart from it,
 * the catalog. Tests pass one in to damage the data behind the storage's back.
 */
export interface MemoryData {
  readonly documents: Map<string, MemoryDocument>
  readonly catalog: Map<string, MemoryRecord>
}

/** Keeps everything in process memory: for tests and throwaway relays. Nothing survives a restart. */
export class MemoryStorage implements RelayStorage {
  private closed = false

  constructor(private readonly data: MemoryData = { documents: new Map(), catalog: new Map() }) {}

  private document(name: string): MemoryDocument {
    let doc = this.data.documents.get(name)
    if (!doc) {
      doc = { snapshot: null, through: 0, updates: [], next: 1 }
      this.data.documents.set(name, doc)
    }
    return doc
  }

  private advance(name: string, position: number): void {
    const record = this.data.catalog.get(name)
    if (record) record.lastPosition = Math.max(record.lastPosition, position)
    else this.data.catalog.set(name, { lastPosition: position, damaged: null })
  }

  private assertOpen() {
    if (this.closed) throw new Error("storage is closed")
  }

  async holding(names: readonly string[], needles: readonly Uint8Array[]): Promise<Set<string>> {
    this.assertOpen()
    const found = new Set<string>()
    for (const name of names) {
      const doc = this.data.documents.get(name)
      if (doc && storedHolds(doc, needles)) found.add(name)
    }
    return found
  }

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    const doc = this.data.documents.get(name)
    const found = this.data.catalog.get(name)
    const record: DocumentRecord | null = found
      ? { lastPosition: found.lastPosition, damaged: found.damaged?.reason ?? null }
      : null
    if (!doc) return { snapshot: null, through: 0, updates: [], record }
    return {
      snapshot: doc.snapshot?.slice() ?? null,
      through: doc.snapshot ? doc.through : 0,
      snapshotChecksum: doc.snapshotChecksum ?? null,
      updates: doc.updates.map((e) => ({
        position: e.position,
        update: e.update.slice(),
        checksum: e.checksum ?? null,
      })),
      record,
    }
  }

  async append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    this.assertOpen()
    const doc = this.document(name)
    const positions = updates.map((update) => {
      const position = doc.next++
      // Copied so that a caller reusing its buffer cannot change what was stored.
      doc.updates.push({ position, update: update.slice(), checksum: checksumOf(update) })
      return position
    })
    if (positions.length > 0) this.advance(name, positions.at(-1)!)
    return positions
  }

  async compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    this.assertOpen()
    const doc = this.document(name)
    doc.snapshot = snapshot.slice()
    doc.snapshotChecksum = checksumOf(snapshot)
    doc.through = Math.max(doc.through, through)
    doc.updates = doc.updates.filter((e) => e.position > through)
    if (doc.next <= through) doc.next = through + 1
    this.advance(name, through)
  }

  async list(): Promise<string[]> {
    this.assertOpen()
    return [...this.data.documents.keys()].sort()
  }

  async markDamaged(name: string, reason: string): Promise<void> {
    this.assertOpen()
    const record = this.data.catalog.get(name)
    const damaged = { reason, detectedAt: Date.now() }
    if (!record) this.data.catalog.set(name, { lastPosition: 0, damaged })
    else record.damaged ??= damaged
  }

  async damaged(): Promise<DamagedDocument[]> {
    this.assertOpen()
    return [...this.data.catalog.entries()]
      .filter(([, r]) => r.damaged !== null)
      .map(([name, r]) => ({ name, lastPosition: r.lastPosition, ...r.damaged! }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  async restore(name: string, snapshot: Uint8Array): Promise<number> {
    this.assertOpen()
    const doc = this.data.documents.get(name)
    const through = Math.max(
      this.data.catalog.get(name)?.lastPosition ?? 0,
      doc?.through ?? 0,
      doc?.next ? doc.next - 1 : 0,
      ...(doc?.updates.map((e) => e.position) ?? []),
    )
    this.data.documents.set(name, {
      snapshot: snapshot.slice(),
      snapshotChecksum: checksumOf(snapshot),
      through,
      updates: [],
      next: through + 1,
    })
    this.data.catalog.set(name, { lastPosition: through, damaged: null })
    return through
  }

  async close(): Promise<void> {
    this.closed = true
  }
}
