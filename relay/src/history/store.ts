import type Database from "better-sqlite3"
import type pg from "pg"
import { inTransaction } from "../pg-transaction.js"

/** A sealed segment as stored: its immutable bytes under its document and index. */
export interface StoredSegment {
  readonly index: number
  /** First and last sequence number it holds. */
  readonly from: number
  readonly to: number
  /** Hex SHA-256 of `bytes`: its immutable name (ETag). */
  readonly hash: string
  readonly bytes: Uint8Array
}

/** A sealed segment's filter of its message ids (`IdFilter`, encoded), by the segment's index. */
export interface StoredIdFilter {
  readonly index: number
  readonly bytes: Uint8Array
}

/**
 * The index under which directory page `page` of a conversation's folded
 * history is stored (shared `DirectoryPage`): beside its segments, below 0, so
 * that one table (and one purge of a conversation's rows) holds both.
 */
export const directoryPageIndex = (page: number): number => -1 - page

/**
 * The index under which epoch record `record` of a conversation (shared
 * `EpochRecord`) is stored: below every directory page index a conversation
 * can reach (a page per thousands of messages), above PostgreSQL's INTEGER's
 * lowest; one purge of the conversation's rows removes them too.
 */
export const epochRecordIndex = (record: number): number => -1_000_000_000 - record

/**
 * The index under which the reactions folded into segment `segment` (the
 * items that held them, see `FoldedReactions`) are stored: below the epoch
 * records, above PostgreSQL's INTEGER's lowest for the first 147 million segments.
 */
export const foldedReactionsIndex = (segment: number): number => -2_000_000_000 - segment

/**
 * The index of a conversation's fold directory (which segments hold folded
 * reactions of which Yjs client, see `FoldDirectory`): the row just above
 * the folded-reaction rows, far below any epoch record a conversation reaches.
 */
export const FOLD_DIRECTORY_INDEX = foldedReactionsIndex(-1)

/**
 * Where the relay keeps conversations' sealed history segments (see shared
 * `history.ts`): written once when sealed, read on demand. A part of every
 * backend; all pass `relay/test/conformance/history.ts`. Directory pages are
 * stored with them under negative indexes ({@link directoryPageIndex}), and
 * so are epoch records ({@link epochRecordIndex}).
 */
export interface HistoryStore {
  /**
   * Stores a segment durably. Storing an index again replaces it: a segment is
   * referenced only once the live document's summary names its hash, which the
   * relay writes after this resolves, so a crash in between leaves an
   * unreferenced segment that the next sealing rewrites.
   */
  put(doc: string, segment: StoredSegment): Promise<void>
  /** The segment at `index`, or null. */
  get(doc: string, index: number): Promise<StoredSegment | null>
  /** Every segment of `doc`, by index (for the relay's directory of sealed messages); no directory page. */
  all(doc: string): Promise<StoredSegment[]>
  /**
   * Stores the filter of segment `index`'s message ids durably (replacing
   * any): written before the live document names the segment, like the
   * segment itself; derived from it, so a missing one is built again.
   */
  putIdFilter(doc: string, index: number, bytes: Uint8Array): Promise<void>
  /** The id filters of `doc`'s segments from index `from` on, by index (without reading the segments). */
  idFilters(doc: string, from: number): Promise<StoredIdFilter[]>
  /**
   * What one turn of sealing stores before the live document names it —
   * segments (and directory pages) with their id filters — durably in one
   * commit: all of it or none. The same rows as {@link put} and
   * {@link putIdFilter} each; one commit (one fsync) instead of two or three
   * per segment.
   */
  putSealed(doc: string, sealed: SealedRows): Promise<void>
  close(): Promise<void>
}

/** Rows {@link HistoryStore.putSealed} stores in one commit. */
export interface SealedRows {
  /** Segments, and directory pages under their negative indexes. */
  readonly segments: readonly StoredSegment[]
  readonly idFilters: readonly StoredIdFilter[]
}

const copy = (s: StoredSegment): StoredSegment => ({ ...s, bytes: s.bytes.slice() })

/** Segments in process memory. */
export class MemoryHistoryStore implements HistoryStore {
  private readonly docs = new Map<string, Map<number, StoredSegment>>()
  private readonly filters = new Map<string, Map<number, Uint8Array>>()

  async put(doc: string, segment: StoredSegment): Promise<void> {
    const segments = this.docs.get(doc) ?? new Map<number, StoredSegment>()
    this.docs.set(doc, segments)
    segments.set(segment.index, copy(segment))
  }

  async get(doc: string, index: number): Promise<StoredSegment | null> {
    const found = this.docs.get(doc)?.get(index)
    return found ? copy(found) : null
  }

  async all(doc: string): Promise<StoredSegment[]> {
    return [...(this.docs.get(doc)?.values() ?? [])]
      .filter((s) => s.index >= 0)
      .sort((a, b) => a.index - b.index)
      .map(copy)
  }

  async putIdFilter(doc: string, index: number, bytes: Uint8Array): Promise<void> {
    const filters = this.filters.get(doc) ?? new Map<number, Uint8Array>()
    this.filters.set(doc, filters)
    filters.set(index, bytes.slice())
  }

  async idFilters(doc: string, from: number): Promise<StoredIdFilter[]> {
    return [...(this.filters.get(doc) ?? [])]
      .filter(([index]) => index >= from)
      .sort(([a], [b]) => a - b)
      .map(([index, bytes]) => ({ index, bytes: bytes.slice() }))
  }

  async putSealed(doc: string, sealed: SealedRows): Promise<void> {
    for (const segment of sealed.segments) await this.put(doc, segment)
    for (const filter of sealed.idFilters) await this.putIdFilter(doc, filter.index, filter.bytes)
  }

  /** Forgets every segment of `doc` and their id filters (a purge of a deleted conversation). */
  drop(doc: string): void {
    this.docs.delete(doc)
    this.filters.delete(doc)
  }

  async close(): Promise<void> {}
}

/** The segments' table in SQLite (created by {@link SqliteHistoryStore}). */
export const SQLITE_HISTORY_SCHEMA = `
CREATE TABLE IF NOT EXISTS history_segments (
  doc TEXT NOT NULL,
  idx INTEGER NOT NULL,
  from_seq INTEGER NOT NULL,
  to_seq INTEGER NOT NULL,
  hash TEXT NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (doc, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history_id_filters (
  doc TEXT NOT NULL,
  idx INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (doc, idx)
) WITHOUT ROWID;
`

interface SegmentRow {
  idx: number
  from_seq: number
  to_seq: number
  hash: string
  data: Buffer | Uint8Array
}

interface FilterRow {
  idx: number
  data: Buffer | Uint8Array
}

const fromFilterRow = (row: FilterRow): StoredIdFilter => ({
  index: Number(row.idx),
  bytes: new Uint8Array(row.data),
})

const fromRow = (row: SegmentRow): StoredSegment => ({
  index: Number(row.idx),
  from: Number(row.from_seq),
  to: Number(row.to_seq),
  hash: row.hash,
  bytes: new Uint8Array(row.data),
})

/** Segments in the backend's SQLite database (`synchronous=FULL`: durable once `put` returns). */
export class SqliteHistoryStore implements HistoryStore {
  private readonly statements
  private readonly putRows: (doc: string, sealed: SealedRows) => void

  constructor(db: Database.Database) {
    db.exec(SQLITE_HISTORY_SCHEMA)
    this.statements = {
      put: db.prepare(
        "INSERT OR REPLACE INTO history_segments (doc, idx, from_seq, to_seq, hash, data) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      get: db.prepare<[string, number], SegmentRow>(
        "SELECT idx, from_seq, to_seq, hash, data FROM history_segments WHERE doc = ? AND idx = ?",
      ),
      all: db.prepare<[string], SegmentRow>(
        "SELECT idx, from_seq, to_seq, hash, data FROM history_segments WHERE doc = ? AND idx >= 0 ORDER BY idx",
      ),
      putIdFilter: db.prepare("INSERT OR REPLACE INTO history_id_filters (doc, idx, data) VALUES (?, ?, ?)"),
      idFilters: db.prepare<[string, number], FilterRow>(
        "SELECT idx, data FROM history_id_filters WHERE doc = ? AND idx >= ? ORDER BY idx",
      ),
    }
    this.putRows = db.transaction((doc: string, sealed: SealedRows) => {
      for (const s of sealed.segments)
        this.statements.put.run(doc, s.index, s.from, s.to, s.hash, Buffer.from(s.bytes))
      for (const f of sealed.idFilters) this.statements.putIdFilter.run(doc, f.index, Buffer.from(f.bytes))
    })
  }

  async putSealed(doc: string, sealed: SealedRows): Promise<void> {
    this.putRows(doc, sealed)
  }

  async put(doc: string, s: StoredSegment): Promise<void> {
    this.statements.put.run(doc, s.index, s.from, s.to, s.hash, Buffer.from(s.bytes))
  }

  async get(doc: string, index: number): Promise<StoredSegment | null> {
    const row = this.statements.get.get(doc, index)
    return row ? fromRow(row) : null
  }

  async all(doc: string): Promise<StoredSegment[]> {
    return this.statements.all.all(doc).map(fromRow)
  }

  async putIdFilter(doc: string, index: number, bytes: Uint8Array): Promise<void> {
    this.statements.putIdFilter.run(doc, index, Buffer.from(bytes))
  }

  async idFilters(doc: string, from: number): Promise<StoredIdFilter[]> {
    return this.statements.idFilters.all(doc, from).map(fromFilterRow)
  }

  async close(): Promise<void> {}
}

/** The segments' table in PostgreSQL (created by the backend). */
export const POSTGRES_HISTORY_SCHEMA = `CREATE TABLE IF NOT EXISTS parley_history_segments (
  doc TEXT NOT NULL,
  idx INTEGER NOT NULL,
  from_seq BIGINT NOT NULL,
  to_seq BIGINT NOT NULL,
  hash TEXT NOT NULL,
  data BYTEA NOT NULL,
  PRIMARY KEY (doc, idx)
);
CREATE TABLE IF NOT EXISTS parley_history_id_filters (
  doc TEXT NOT NULL,
  idx INTEGER NOT NULL,
  data BYTEA NOT NULL,
  PRIMARY KEY (doc, idx)
);`

const PG_PUT_SEGMENT = `INSERT INTO parley_history_segments (doc, idx, from_seq, to_seq, hash, data) VALUES ($1, $2, $3, $4, $5, $6)
  ON CONFLICT (doc, idx) DO UPDATE SET from_seq = $3, to_seq = $4, hash = $5, data = $6`
const PG_PUT_ID_FILTER = `INSERT INTO parley_history_id_filters (doc, idx, data) VALUES ($1, $2, $3)
  ON CONFLICT (doc, idx) DO UPDATE SET data = $3`

/** Segments in PostgreSQL, table `parley_history_segments`; each `put` is one committed statement. */
export class PostgresHistoryStore implements HistoryStore {
  constructor(
    private readonly pool: pg.Pool,
    /**
     * A lone relay's check that the database is still its own, run in each write's transaction
     * (`PostgresStorage.checkFence`): a relay another took the database from overwrote segments.
     */
    private readonly fence?: (client: pg.ClientBase) => Promise<void>,
  ) {}

  /** Runs the write `statement` with `values`, fenced when a fence is set. */
  private async write(statement: string, values: unknown[]): Promise<void> {
    if (!this.fence) {
      await this.pool.query(statement, values)
      return
    }
    await inTransaction(this.pool, async (client) => {
      await this.fence!(client)
      await client.query(statement, values)
    })
  }

  async put(doc: string, s: StoredSegment): Promise<void> {
    await this.write(PG_PUT_SEGMENT, [doc, s.index, s.from, s.to, s.hash, Buffer.from(s.bytes)])
  }

  async get(doc: string, index: number): Promise<StoredSegment | null> {
    const { rows } = await this.pool.query<SegmentRow>(
      "SELECT idx, from_seq, to_seq, hash, data FROM parley_history_segments WHERE doc = $1 AND idx = $2",
      [doc, index],
    )
    return rows[0] ? fromRow(rows[0]) : null
  }

  async all(doc: string): Promise<StoredSegment[]> {
    const { rows } = await this.pool.query<SegmentRow>(
      "SELECT idx, from_seq, to_seq, hash, data FROM parley_history_segments WHERE doc = $1 AND idx >= 0 ORDER BY idx",
      [doc],
    )
    return rows.map(fromRow)
  }

  async putIdFilter(doc: string, index: number, bytes: Uint8Array): Promise<void> {
    await this.write(PG_PUT_ID_FILTER, [doc, index, Buffer.from(bytes)])
  }

  async putSealed(doc: string, sealed: SealedRows): Promise<void> {
    // `inTransaction`: a connection the server terminates mid-transaction must not crash the process.
    await inTransaction(this.pool, async (client) => {
      await this.fence?.(client)
      for (const s of sealed.segments)
        await client.query(PG_PUT_SEGMENT, [doc, s.index, s.from, s.to, s.hash, Buffer.from(s.bytes)])
      for (const f of sealed.idFilters)
        await client.query(PG_PUT_ID_FILTER, [doc, f.index, Buffer.from(f.bytes)])
    })
  }

  async idFilters(doc: string, from: number): Promise<StoredIdFilter[]> {
    const { rows } = await this.pool.query<FilterRow>(
      "SELECT idx, data FROM parley_history_id_filters WHERE doc = $1 AND idx >= $2 ORDER BY idx",
      [doc, from],
    )
    return rows.map(fromFilterRow)
  }

  async close(): Promise<void> {}
}
