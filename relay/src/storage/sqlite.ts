import { dirname, resolve } from "node:path"
import { ErrorCode, ParleyError } from "@parley/shared"
import type Database from "better-sqlite3"
import { checksumOf } from "./checksum.js"
import { type DiskSpace, diskSpaceOf, formatBytes, writeReserve } from "./disk-space.js"
import { FileIdentity } from "./file-identity.js"
import { type AppendBatch, GroupCommit } from "./group-commit.js"
import { storageUnavailable } from "./guard.js"
import type { DamagedDocument, PingOptions, RelayStorage, StoredDocument } from "./types.js"
import { withoutSync } from "./wal-sync.js"

const CATALOG_SCHEMA = `
CREATE TABLE IF NOT EXISTS documents (
  doc TEXT PRIMARY KEY,
  last_position INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  damaged TEXT,
  damaged_at INTEGER
) WITHOUT ROWID;
`

const SCHEMA = `
CREATE TABLE IF NOT EXISTS updates (
  doc TEXT NOT NULL,
  position INTEGER NOT NULL,
  data BLOB NOT NULL,
  crc INTEGER,
  PRIMARY KEY (doc, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
  doc TEXT PRIMARY KEY,
  data BLOB NOT NULL,
  through INTEGER NOT NULL,
  crc INTEGER
) WITHOUT ROWID;
`

/** Needles per query of {@link SqliteStorage.holding} (one `instr` each in an OR chain). */
const NEEDLES_PER_QUERY = 100
/** Document names per query of {@link SqliteStorage.holding}. */
const NAMES_PER_QUERY = 400

const bytes = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length)

/** How a {@link SqliteStorage} is opened beyond its two databases. */
export interface SqliteStorageOptions {
  /**
   * The room on the disk holding the database, asked by each probe (see
   * {@link SqliteStorage.ping}); by default the file system's own figures.
   */
  readonly diskSpace?: () => DiskSpace
  /**
   * Makes the main database's write-ahead log durable (the backend's: an
   * `fdatasync` of `-wal` on the thread pool, see `WalSync`). Given, an
   * append's commit is written without a sync of its own and its positions
   * resolve once this resolves, the catalog written after it: the event loop
   * goes on while the disk works, and appends made meanwhile share the next
   * commit. Absent, the commit syncs itself (`synchronous=FULL`), on the event loop.
   */
  readonly syncLog?: () => Promise<void>
}

/** Calls what a rider of an append transaction asked to be called with its outcome (see `carry`). */
function settleRide(ride: { settle?: ((committed: boolean) => void) | undefined }, committed: boolean): void {
  const settle = ride.settle
  delete ride.settle
  settle?.(committed)
}

/** SQLite's verdict on a file whose pages are damaged (a bad page, a torn write, not a database at all). */
function isCorruption(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === "string" && (code.startsWith("SQLITE_CORRUPT") || code === "SQLITE_NOTADB")
}

/**
 * Free space below which a disk counts as full even while storage answers:
 * room for a few commits' pages (an append's commit writes about 15 pages of
 * 4 KiB with its hook rows), no more, so that a disk merely low on room keeps
 * taking appends.
 */
export const FULL_BELOW = 256 * 1024

/** Documents whose next log position {@link SqliteStorage} keeps in memory, at most. */
export const POSITIONS_KEPT = 10_000

/**
 * The documents of the SQLite backend (`SqliteBackend`, which opens both
 * databases): tables `updates` and `snapshots` in the main database, which
 * runs with WAL and `synchronous=FULL`, so that a commit is on disk before an
 * append resolves (or, with `syncLog`, the appends' commit is synced by it off
 * the event loop before they resolve). One row per update; appends of one
 * tick, or made while the previous commit was being synced, share a transaction.
 *
 * The catalog (which documents exist, their last log position, their damage)
 * lives in a second database file, written after each commit of the first:
 * WAL frames lost from the main file (a WAL file deleted or copied without, a
 * torn file system) then cannot erase the record with the data, and show as
 * damage. The catalog runs with `synchronous=NORMAL`: no second fsync per
 * append; after a power loss it may lag behind the data (harmless: a record
 * behind its data is taken as it is), never run ahead of it. Rare writes
 * (damage, restore) are synced.
 */
export class SqliteStorage implements RelayStorage {
  private readonly next = new Map<string, number>()
  private readonly group: GroupCommit
  private closed = false
  private readonly statements
  private rider: (() => ((committed: boolean) => void) | undefined) | undefined
  /** The directory of the database file (none in memory), and the room on its disk. */
  private readonly disk: { readonly dir: string; readonly space: () => DiskSpace } | undefined
  /** The database files, checked to be the ones opened before each commit and probe (see {@link FileIdentity}). */
  private readonly files: readonly FileIdentity[]

  /** `db` and `catalog` are two files, opened in WAL mode (the backend's); the storage creates its tables. */
  constructor(
    private readonly db: Database.Database,
    private readonly catalog: Database.Database,
    options: SqliteStorageOptions = {},
  ) {
    const dir = resolve(dirname(db.name))
    this.disk = db.memory ? undefined : { dir, space: options.diskSpace ?? (() => diskSpaceOf(dir)) }
    this.files = [db, catalog].filter((d) => !d.memory).map((d) => new FileIdentity(d.name))
    this.db.exec(SCHEMA)
    // Tables made before checksums gain the column; their rows keep NULL (not checked).
    for (const table of ["updates", "snapshots"]) {
      const columns = this.db.prepare<[], { name: string }>(`PRAGMA table_info(${table})`).all()
      if (!columns.some((c) => c.name === "crc")) this.db.exec(`ALTER TABLE ${table} ADD COLUMN crc INTEGER`)
    }
    // A one-row table the health probe rewrites: only a committed write shows that the disk has room again.
    this.db.exec("CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)")
    this.catalog.exec(CATALOG_SCHEMA)
    this.statements = {
      snapshot: this.db.prepare<[string], { data: Buffer; through: number; crc: number | null }>(
        "SELECT data, through, crc FROM snapshots WHERE doc = ?",
      ),
      updates: this.db.prepare<[string], { position: number; data: Buffer; crc: number | null }>(
        "SELECT position, data, crc FROM updates WHERE doc = ? ORDER BY position",
      ),
      lastPosition: this.db.prepare<[string, string], { last: number | null }>(
        "SELECT MAX(p) AS last FROM (SELECT MAX(position) AS p FROM updates WHERE doc = ? UNION ALL SELECT through AS p FROM snapshots WHERE doc = ?)",
      ),
      insert: this.db.prepare("INSERT INTO updates (doc, position, data, crc) VALUES (?, ?, ?, ?)"),
      upsertSnapshot: this.db.prepare(
        "INSERT INTO snapshots (doc, data, through, crc) VALUES (?, ?, ?, ?) ON CONFLICT(doc) DO UPDATE SET data = excluded.data, crc = excluded.crc, through = MAX(snapshots.through, excluded.through)",
      ),
      replaceSnapshot: this.db.prepare(
        "INSERT INTO snapshots (doc, data, through, crc) VALUES (?, ?, ?, ?) ON CONFLICT(doc) DO UPDATE SET data = excluded.data, crc = excluded.crc, through = excluded.through",
      ),
      trim: this.db.prepare("DELETE FROM updates WHERE doc = ? AND position <= ?"),
      probe: this.db.prepare("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)"),
      names: this.db.prepare<[], { doc: string }>(
        "SELECT doc FROM updates UNION SELECT doc FROM snapshots ORDER BY doc",
      ),
      lastPositions: this.db.prepare<[], { doc: string; last: number }>(
        "SELECT doc, MAX(p) AS last FROM (SELECT doc, MAX(position) AS p FROM updates GROUP BY doc UNION ALL SELECT doc, through AS p FROM snapshots) GROUP BY doc",
      ),
      dropUpdates: this.db.prepare("DELETE FROM updates WHERE doc = ?"),
      record: this.catalog.prepare<[string], { last_position: number; damaged: string | null }>(
        "SELECT last_position, damaged FROM documents WHERE doc = ?",
      ),
      advance: this.catalog.prepare<[string, number, number]>(
        "INSERT INTO documents (doc, last_position, created_at) VALUES (?, ?, ?) ON CONFLICT(doc) DO UPDATE SET last_position = MAX(last_position, excluded.last_position)",
      ),
      markDamaged: this.catalog.prepare<[string, number, string, number]>(
        "INSERT INTO documents (doc, last_position, created_at, damaged, damaged_at) VALUES (?, 0, ?, ?, ?) ON CONFLICT(doc) DO UPDATE SET damaged = COALESCE(damaged, excluded.damaged), damaged_at = COALESCE(damaged_at, excluded.damaged_at)",
      ),
      damaged: this.catalog.prepare<
        [],
        { doc: string; damaged: string; damaged_at: number; last_position: number }
      >(
        "SELECT doc, damaged, damaged_at, last_position FROM documents WHERE damaged IS NOT NULL ORDER BY doc",
      ),
      restored: this.catalog.prepare<[string, number, number]>(
        "INSERT INTO documents (doc, last_position, created_at) VALUES (?, ?, ?) ON CONFLICT(doc) DO UPDATE SET last_position = excluded.last_position, damaged = NULL, damaged_at = NULL",
      ),
    }
    this.adoptExisting()
    const advance = this.catalog.transaction((batch: AppendBatch, positions: number[][]) => {
      const now = Date.now()
      for (const [i, { name }] of batch.entries()) {
        const last = positions[i]!.at(-1)
        if (last !== undefined) this.statements.advance.run(name, last, now)
      }
    })
    // Set inside the transaction, called after it: a holder, since the closure assigns it.
    const ride: { settle?: ((committed: boolean) => void) | undefined } = {}
    const commit = this.db.transaction((batch: AppendBatch) => {
      // A cache, read again from the table when missing: kept for the documents written lately, not
      // for every document ever written (it grew by one entry per conversation and inbox for good).
      // Cleared only here, before this transaction hands out positions: every earlier one is committed.
      if (this.next.size >= POSITIONS_KEPT) this.next.clear()
      const positions = batch.map(({ name, updates }) =>
        updates.map((update) => {
          const position = this.nextPosition(name)
          this.statements.insert.run(name, position, update, checksumOf(update))
          this.next.set(name, position + 1)
          return position
        }),
      )
      ride.settle = this.rider?.()
      return positions
    })
    const syncLog = options.syncLog
    this.group = new GroupCommit((batch) => {
      let positions: number[][]
      delete ride.settle
      try {
        for (const file of this.files) file.check()
        positions = syncLog ? withoutSync(this.db, () => commit(batch)) : commit(batch)
      } catch (error) {
        // Positions handed out inside the rolled-back transaction are free again.
        this.next.clear()
        settleRide(ride, false)
        throw error
      }
      // The riding rows are the outbox's: events of changes stored before (acknowledged after their
      // own commit's sync), which its commits of their own never sync either (see `SqliteOutbox`).
      settleRide(ride, true)
      if (!syncLog) {
        // After the data's commit, never before: the catalog may lag behind the data, never run ahead.
        advance(batch, positions)
        return positions
      }
      // Acknowledged once on disk; the catalog after the data's sync, never before it. A failed sync
      // fails the batch (its rows may or may not be on disk: the update path reads back whether a
      // failed append was stored before it stores it again).
      return syncLog().then(() => {
        advance(batch, positions)
        return positions
      })
    })
  }

  /**
   * Writes that ride along in every append's transaction (the hook outbox's
   * pending rows): `rider` runs inside it, after the appends, and returns
   * what to call once the transaction committed (true) or rolled back (false).
   */
  carry(rider: () => ((committed: boolean) => void) | undefined): void {
    this.rider = rider
  }

  /** True while appends wait for a commit that has not started yet (see {@link carry}). */
  get commitScheduled(): boolean {
    return this.group.commitScheduled
  }

  /**
   * A new catalog next to existing data (a data directory from before the
   * catalog, or a catalog deleted by hand) records every stored document, so
   * that their later loss shows as damage.
   */
  private adoptExisting(): void {
    if (this.catalog.pragma("user_version", { simple: true }) !== 0) return
    const now = Date.now()
    this.catalog.transaction(() => {
      for (const { doc, last } of this.statements.lastPositions.all())
        this.statements.advance.run(doc, last, now)
      this.catalog.pragma("user_version = 1")
    })()
  }

  /** Runs a rare catalog write synced to disk, unlike the appends' catalog writes. */
  private synced<T>(write: () => T): T {
    this.catalog.pragma("synchronous = FULL")
    try {
      return this.catalog.transaction(write)()
    } finally {
      this.catalog.pragma("synchronous = NORMAL")
    }
  }

  private nextPosition(name: string): number {
    let next = this.next.get(name)
    if (next === undefined) {
      next = (this.statements.lastPosition.get(name, name)?.last ?? 0) + 1
      this.next.set(name, next)
    }
    return next
  }

  private assertOpen() {
    if (this.closed) throw new Error("storage is closed")
  }

  async holding(names: readonly string[], needles: readonly Uint8Array[]): Promise<Set<string>> {
    this.assertOpen()
    const found = new Set<string>()
    if (names.length === 0 || needles.length === 0) return found
    // What is still being appended is searched once committed.
    await this.group.drain()
    // instr on a BLOB compares bytes. Chunks keep a statement's parameters far under SQLite's limit, and its
    // OR chain of needles under its expression depth (1,000).
    for (let n = 0; n < needles.length; n += NEEDLES_PER_QUERY) {
      const some = needles.slice(n, n + NEEDLES_PER_QUERY)
      const match = some.map(() => "instr(data, ?) > 0").join(" OR ")
      for (let start = 0; start < names.length; start += NAMES_PER_QUERY) {
        const part = names.slice(start, start + NAMES_PER_QUERY).filter((name) => !found.has(name))
        if (part.length === 0) continue
        const list = part.map(() => "?").join(", ")
        const rows = this.db
          .prepare<unknown[], { doc: string }>(
            `SELECT doc FROM snapshots WHERE doc IN (${list}) AND (${match})
             UNION SELECT doc FROM updates WHERE doc IN (${list}) AND (${match})`,
          )
          .all(...part, ...some, ...part, ...some)
        for (const row of rows) found.add(row.doc)
      }
    }
    return found
  }

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    await this.group.settled(name)
    // The catalog first: it is written after the data, so read before it, it never runs ahead of it.
    const record = this.statements.record.get(name)
    const read = this.db.transaction(() => ({
      snapshot: this.statements.snapshot.get(name),
      updates: this.statements.updates.all(name),
    }))
    let stored: ReturnType<typeof read>
    try {
      stored = read()
    } catch (error) {
      if (isCorruption(error))
        throw new ParleyError(
          ErrorCode.DAMAGED,
          `SQLite cannot read the document: ${(error as Error).message}`,
          {
            cause: error,
          },
        )
      throw error
    }
    const { snapshot, updates } = stored
    return {
      snapshot: snapshot ? bytes(snapshot.data) : null,
      through: snapshot?.through ?? 0,
      snapshotChecksum: snapshot?.crc ?? null,
      updates: updates.map((row) => ({ position: row.position, update: bytes(row.data), checksum: row.crc })),
      record: record ? { lastPosition: record.last_position, damaged: record.damaged } : null,
    }
  }

  append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    this.assertOpen()
    return this.group.append(name, updates)
  }

  async compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    this.assertOpen()
    await this.group.settled(name)
    this.db.transaction(() => {
      this.statements.upsertSnapshot.run(name, snapshot, through, checksumOf(snapshot))
      this.statements.trim.run(name, through)
    })()
    if ((this.next.get(name) ?? 0) <= through) this.next.set(name, through + 1)
    this.statements.advance.run(name, through, Date.now())
  }

  async markDamaged(name: string, reason: string): Promise<void> {
    this.assertOpen()
    const now = Date.now()
    this.synced(() => this.statements.markDamaged.run(name, now, reason, now))
  }

  async damaged(): Promise<DamagedDocument[]> {
    this.assertOpen()
    return this.statements.damaged.all().map((row) => ({
      name: row.doc,
      reason: row.damaged,
      detectedAt: row.damaged_at,
      lastPosition: row.last_position,
    }))
  }

  async restore(name: string, snapshot: Uint8Array): Promise<number> {
    this.assertOpen()
    await this.group.settled(name)
    const recorded = this.statements.record.get(name)?.last_position ?? 0
    const through = this.db.transaction(() => {
      const stored = this.statements.lastPosition.get(name, name)?.last ?? 0
      const through = Math.max(recorded, stored, (this.next.get(name) ?? 1) - 1)
      this.statements.dropUpdates.run(name)
      this.statements.replaceSnapshot.run(name, snapshot, through, checksumOf(snapshot))
      return through
    })()
    this.next.set(name, through + 1)
    this.synced(() => this.statements.restored.run(name, through, Date.now()))
    return through
  }

  async list(): Promise<string[]> {
    this.assertOpen()
    await this.group.drain()
    return this.statements.names.all().map((row) => row.doc)
  }

  /**
   * Commits a one-row write (fsync'd like an append); while `recovering`,
   * first fails while the disk holding the database has less room than
   * {@link writeReserve} asks. The write alone is not enough then: on a disk
   * that just filled up it still fits in pages SQLite had allocated while
   * appends no longer do. The reserve is not asked while storage answers: a
   * disk with less free space than that still stores appends, and refusing
   * them would be a failure of the relay's own making. Only a disk without
   * room for a commit's pages ({@link FULL_BELOW} free) fails it then: the
   * probe's write still fits in pages SQLite holds, and readiness said
   * "ready" on a full disk until a user's message failed.
   */
  async ping(options: PingOptions = {}): Promise<void> {
    this.assertOpen()
    for (const file of this.files) file.check()
    if (this.disk) {
      const { free, size } = this.disk.space()
      const reserve = options.recovering ? writeReserve(size) : FULL_BELOW
      if (free < reserve)
        throw storageUnavailable(
          `the disk holding ${this.disk.dir} is full (${formatBytes(free)} free): writes resume once ${formatBytes(writeReserve(size))} is free`,
        )
    }
    this.statements.probe.run(Date.now())
  }

  /** Finishes pending appends; the backend closes the files. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.group.drain()
    this.closed = true
  }
}
