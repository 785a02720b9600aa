import { mkdirSync } from "node:fs"
import { join } from "node:path"
import Database from "better-sqlite3"
import { type AppendBatch, GroupCommit } from "./group-commit.js"
import type { RelayStorage, StoredDocument } from "./types.js"

/** File name of the embedded database inside the data directory. */
export const SQLITE_FILE = "parley.sqlite"

const SCHEMA = `
CREATE TABLE IF NOT EXISTS updates (
  doc TEXT NOT NULL,
  position INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (doc, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
  doc TEXT PRIMARY KEY,
  data BLOB NOT NULL,
  through INTEGER NOT NULL
) WITHOUT ROWID;
`

const bytes = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length)

/**
 * The embedded default store: `<dataDir>/parley.sqlite` with WAL and
 * `synchronous=FULL`, so that a commit is on disk before an append resolves.
 * One row per update; appends of one tick share a transaction.
 */
export class SqliteStorage implements RelayStorage {
  private readonly db: Database.Database
  private readonly next = new Map<string, number>()
  private readonly group: GroupCommit
  private closed = false
  private readonly statements

  constructor(dataDir: string) {
    mkdirSync(dataDir, { recursive: true })
    this.db = new Database(join(dataDir, SQLITE_FILE))
    this.db.pragma("journal_mode = WAL")
    this.db.pragma("synchronous = FULL")
    this.db.exec(SCHEMA)
    // A one-row table the health probe rewrites: only a committed write shows that the disk has room again.
    this.db.exec("CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL)")
    this.statements = {
      snapshot: this.db.prepare<[string], { data: Buffer; through: number }>(
        "SELECT data, through FROM snapshots WHERE doc = ?",
      ),
      updates: this.db.prepare<[string], { position: number; data: Buffer }>(
        "SELECT position, data FROM updates WHERE doc = ? ORDER BY position",
      ),
      lastPosition: this.db.prepare<[string, string], { last: number | null }>(
        "SELECT MAX(p) AS last FROM (SELECT MAX(position) AS p FROM updates WHERE doc = ? UNION ALL SELECT through AS p FROM snapshots WHERE doc = ?)",
      ),
      insert: this.db.prepare("INSERT INTO updates (doc, position, data) VALUES (?, ?, ?)"),
      upsertSnapshot: this.db.prepare(
        "INSERT INTO snapshots (doc, data, through) VALUES (?, ?, ?) ON CONFLICT(doc) DO UPDATE SET data = excluded.data, through = MAX(snapshots.through, excluded.through)",
      ),
      trim: this.db.prepare("DELETE FROM updates WHERE doc = ? AND position <= ?"),
      probe: this.db.prepare("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)"),
      names: this.db.prepare<[], { doc: string }>(
        "SELECT doc FROM updates UNION SELECT doc FROM snapshots ORDER BY doc",
      ),
    }
    const commit = this.db.transaction((batch: AppendBatch) =>
      batch.map(({ name, updates }) =>
        updates.map((update) => {
          const position = this.nextPosition(name)
          this.statements.insert.run(name, position, update)
          this.next.set(name, position + 1)
          return position
        }),
      ),
    )
    this.group = new GroupCommit((batch) => {
      try {
        return commit(batch)
      } catch (error) {
        // Positions handed out inside the rolled-back transaction are free again.
        this.next.clear()
        throw error
      }
    })
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

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    await this.group.settled(name)
    const read = this.db.transaction(() => ({
      snapshot: this.statements.snapshot.get(name),
      updates: this.statements.updates.all(name),
    }))
    const { snapshot, updates } = read()
    return {
      snapshot: snapshot ? bytes(snapshot.data) : null,
      updates: updates.map((row) => ({ position: row.position, update: bytes(row.data) })),
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
      this.statements.upsertSnapshot.run(name, snapshot, through)
      this.statements.trim.run(name, through)
    })()
    if ((this.next.get(name) ?? 0) <= through) this.next.set(name, through + 1)
  }

  async list(): Promise<string[]> {
    this.assertOpen()
    await this.group.drain()
    return this.statements.names.all().map((row) => row.doc)
  }

  /** Commits a one-row write (fsync'd like an append): fails while the disk is full. */
  async ping(): Promise<void> {
    this.assertOpen()
    this.statements.probe.run(Date.now())
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.group.drain()
    this.closed = true
    this.db.close()
  }
}
