/** A document as stored: its latest snapshot, then the log entries written after it, in order. */
export interface StoredDocument {
  readonly snapshot: Uint8Array | null
  /** Highest log position the snapshot covers (0 without a snapshot). */
  readonly through: number
  /** The checksum stored with the snapshot (`checksumOf`); null or absent for one stored before checksums. */
  readonly snapshotChecksum?: number | null
  readonly updates: readonly {
    readonly position: number
    readonly update: Uint8Array
    /** The checksum stored with the entry; null or absent for one stored before checksums. */
    readonly checksum?: number | null
  }[]
  /**
   * What the catalog knows of the document, kept apart from its data so that
   * lost data shows as damage rather than as a document never created; null
   * when the catalog has no record of it.
   */
  readonly record: DocumentRecord | null
}

/** The catalog's small record of one document. */
export interface DocumentRecord {
  /**
   * Highest log position known stored (appends and compactions). It may lag
   * behind the data after a crash, never run ahead of it: data that ends
   * before it was lost.
   */
  readonly lastPosition: number
  /** Why the relay found the document damaged, or null when it did not. */
  readonly damaged: string | null
}

/** A document the relay found damaged, as {@link RelayStorage.damaged} lists it. */
export interface DamagedDocument {
  readonly name: string
  readonly reason: string
  /** When it was found damaged (ms since the epoch). */
  readonly detectedAt: number
  /** The catalog's last log position of the document. */
  readonly lastPosition: number
}

/**
 * Where the relay keeps documents: an append-only log of Yjs updates per
 * document, periodically folded into a snapshot, and a catalog recording which
 * documents exist, up to which log position, and which were found damaged.
 * A part of every backend (`../backend/`); all pass `relay/test/conformance/backend.ts`.
 */
export interface RelayStorage {
  /**
   * The snapshot and every log entry after it, in position order, with the
   * catalog's record. A document storage never heard of is empty, with no
   * record. Judging whether it is damaged is the caller's
   * (`findDamage` in `integrity.ts`).
   */
  load(name: string): Promise<StoredDocument>
  /**
   * Appends `updates` to the document's log. Resolves only once they are durable
   * (committed and synced to disk), with their log positions, which increase
   * monotonically per document with no gaps. Appends made in the same tick share
   * one commit. The catalog's record is created or advanced with them.
   */
  append(name: string, updates: readonly Uint8Array[]): Promise<number[]>
  /** Atomically replaces the snapshot with `snapshot` and drops the log entries with position <= `through`. */
  compact(name: string, snapshot: Uint8Array, through: number): Promise<void>
  /**
   * Which of the documents `names` hold one of `needles` (bytes) anywhere in
   * their stored snapshot or log, searched where they are stored (a purge
   * looks for a deleted message's id in a big room's inboxes), after the
   * appends in flight are committed. Optional for a storage of your own:
   * without it the relay loads each document's stored bytes and searches them.
   */
  holding?(names: readonly string[], needles: readonly Uint8Array[]): Promise<Set<string>>
  /** Names of every stored document (for rebuilding derived data such as inboxes), sorted. */
  list(): Promise<string[]>
  /**
   * Resolves when a write to the tables (or files) appends use would be
   * stored now, and rejects, saying why, when it would not: locked, read-only,
   * out of room. The relay's probe of its storage: every few seconds while it
   * answers (readiness), and with backoff while it fails, with
   * `recovering` set (a backend may then ask for a margin, such as free disk
   * space, before it says "back"). It must not wait on a lock longer than
   * about a second: one probe runs at a time. Optional: the relay falls back
   * to {@link list}, which only shows that the backend reads.
   */
  ping?(options?: PingOptions): Promise<void>
  /** Records that `name` is damaged (creating its record if needed); the first reason is kept. */
  markDamaged(name: string, reason: string): Promise<void>
  /** Every document recorded as damaged, by name. */
  damaged(): Promise<DamagedDocument[]>
  /**
   * The operator's repair: replaces everything stored of `name` by `snapshot`
   * alone and clears its damage. The snapshot is stored as covering the highest
   * position the document ever had (catalog or data), so later positions keep
   * increasing; resolves with that position.
   */
  restore(name: string, snapshot: Uint8Array): Promise<number>
  /** Finishes pending appends and releases the backend. */
  close(): Promise<void>
}

/** What a {@link RelayStorage.ping} is for. */
export interface PingOptions {
  /**
   * True when the probe decides whether writes are let through (while
   * storage is failing, and once at the start): the backend may ask for a
   * margin so that they do not fail again at once (SQLite: free disk space).
   */
  readonly recovering?: boolean
}
