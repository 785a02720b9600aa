/** A document as stored: its latest snapshot, then the log entries written after it, in order. */
export interface StoredDocument {
  readonly snapshot: Uint8Array | null
  readonly updates: readonly { readonly position: number; readonly update: Uint8Array }[]
}

/**
 * Where the relay keeps documents: an append-only log of Yjs updates per
 * document, periodically folded into a snapshot. Every backend passes the
 * suite in `relay/test/conformance/storage.ts`.
 */
export interface RelayStorage {
  /** The snapshot and every log entry after it, in position order. An unknown document is empty. */
  load(name: string): Promise<StoredDocument>
  /**
   * Appends `updates` to the document's log. Resolves only once they are durable
   * (committed and synced to disk), with their log positions, which increase
   * monotonically per document. Appends made in the same tick share one commit.
   */
  append(name: string, updates: readonly Uint8Array[]): Promise<number[]>
  /** Atomically replaces the snapshot with `snapshot` and drops the log entries with position <= `through`. */
  compact(name: string, snapshot: Uint8Array, through: number): Promise<void>
  /** Names of every stored document (for rebuilding derived data such as inboxes), sorted. */
  list(): Promise<string[]>
  /**
   * Resolves when the backend answers, and can write where it can tell (a
   * probe of the relay's storage health while it is failing). Optional: the
   * relay falls back to {@link list}.
   */
  ping?(): Promise<void>
  /** Finishes pending appends and releases the backend. */
  close(): Promise<void>
}
