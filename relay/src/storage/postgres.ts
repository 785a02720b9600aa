import type pg from "pg"
import { inTransaction, openPool } from "../postgres.js"
import { type AppendBatch, GroupCommit } from "./group-commit.js"
import type { RelayStorage, StoredDocument } from "./types.js"

const SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_updates (
  doc TEXT NOT NULL,
  position BIGINT NOT NULL,
  data BYTEA NOT NULL,
  PRIMARY KEY (doc, position)
);
CREATE TABLE IF NOT EXISTS parley_snapshots (
  doc TEXT PRIMARY KEY,
  data BYTEA NOT NULL,
  through BIGINT NOT NULL
);
`

const bytes = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length)

/**
 * PostgreSQL backend (tables `parley_updates`, `parley_snapshots`). A commit
 * returns once PostgreSQL has flushed its WAL (its default `synchronous_commit`),
 * so an append is durable when it resolves. Appends of one tick share one
 * transaction. Positions are computed inside the transaction, so several relays
 * may share a database (a document is still served by one relay at a time).
 */
export class PostgresStorage implements RelayStorage {
  private readonly group: GroupCommit
  private closed = false

  private constructor(private readonly pool: pg.Pool) {
    this.group = new GroupCommit((batch) => this.commit(batch))
  }

  /** Connects and creates the tables if needed. `timeoutMs` bounds every connect, query and statement. */
  static async open(
    url: string,
    onIdleError: (error: Error) => void = () => {},
    timeoutMs?: number,
  ): Promise<PostgresStorage> {
    return new PostgresStorage(
      await openPool({
        url,
        max: 4,
        schema: SCHEMA,
        setupLock: 3,
        onIdleError,
        ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      }),
    )
  }

  private commit(batch: AppendBatch): Promise<number[][]> {
    return inTransaction(this.pool, async (client) => {
      const next = new Map<string, number>()
      const result: number[][] = []
      for (const { name, updates } of batch) {
        let position = next.get(name)
        if (position === undefined) {
          // Serialises concurrent writers of one document across relays for this transaction.
          await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [name])
          const { rows } = await client.query<{ last: string | null }>(
            `SELECT GREATEST(
               (SELECT MAX(position) FROM parley_updates WHERE doc = $1),
               (SELECT through FROM parley_snapshots WHERE doc = $1)) AS last`,
            [name],
          )
          position = Number(rows[0]?.last ?? 0) + 1
        }
        const positions: number[] = []
        for (const update of updates) {
          await client.query("INSERT INTO parley_updates (doc, position, data) VALUES ($1, $2, $3)", [
            name,
            position,
            Buffer.from(update.buffer, update.byteOffset, update.byteLength),
          ])
          positions.push(position++)
        }
        next.set(name, position)
        result.push(positions)
      }
      return result
    })
  }

  private assertOpen() {
    if (this.closed) throw new Error("storage is closed")
  }

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    await this.group.settled(name)
    // One snapshot of the database, so a concurrent compaction cannot drop entries between the reads.
    return inTransaction(
      this.pool,
      async (client) => {
        const snapshot = await client.query<{ data: Buffer }>(
          "SELECT data FROM parley_snapshots WHERE doc = $1",
          [name],
        )
        const updates = await client.query<{ position: string; data: Buffer }>(
          "SELECT position, data FROM parley_updates WHERE doc = $1 ORDER BY position",
          [name],
        )
        return {
          snapshot: snapshot.rows[0] ? bytes(snapshot.rows[0].data) : null,
          updates: updates.rows.map((row) => ({ position: Number(row.position), update: bytes(row.data) })),
        }
      },
      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
  }

  async list(): Promise<string[]> {
    this.assertOpen()
    await this.group.drain()
    const rows = await this.pool.query<{ doc: string }>(
      "SELECT doc FROM parley_updates UNION SELECT doc FROM parley_snapshots ORDER BY doc",
    )
    return rows.rows.map((row) => row.doc)
  }

  append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    this.assertOpen()
    return this.group.append(name, updates)
  }

  async compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    this.assertOpen()
    await this.group.settled(name)
    await inTransaction(this.pool, async (client) => {
      await client.query(
        `INSERT INTO parley_snapshots (doc, data, through) VALUES ($1, $2, $3)
         ON CONFLICT (doc) DO UPDATE SET data = EXCLUDED.data,
           through = GREATEST(parley_snapshots.through, EXCLUDED.through)`,
        [name, Buffer.from(snapshot.buffer, snapshot.byteOffset, snapshot.byteLength), through],
      )
      await client.query("DELETE FROM parley_updates WHERE doc = $1 AND position <= $2", [name, through])
    })
  }

  /** One round trip on a pooled connection (a server out of disk space still answers it). */
  async ping(): Promise<void> {
    this.assertOpen()
    await this.pool.query("SELECT 1")
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.group.drain()
    this.closed = true
    await this.pool.end()
  }
}
