import { randomUUID } from "node:crypto"
import { ErrorCode, ParleyError } from "@parley/shared"
import type pg from "pg"
import { inTransaction } from "../pg-transaction.js"
import { checksumOf } from "./checksum.js"
import { type AppendBatch, GroupCommit } from "./group-commit.js"
import { storageUnavailable } from "./guard.js"
import { stillHolds } from "./postgres-relays-lock.js"
import type { DamagedDocument, RelayStorage, StoredDocument } from "./types.js"

/** The documents' tables (see {@link PostgresStorage}), created by the backend. */
export const DOCUMENTS_SCHEMA = `
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
-- Checksums (CRC-32 of data): rows written before them keep NULL, which is not checked. Looked up
-- first: ALTER TABLE locks the table even when the column is there.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'parley_updates'::regclass AND attname = 'crc') THEN
    ALTER TABLE parley_updates ADD COLUMN crc INTEGER;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'parley_snapshots'::regclass AND attname = 'crc') THEN
    ALTER TABLE parley_snapshots ADD COLUMN crc INTEGER;
  END IF;
END $$;
DO $$
BEGIN
  IF to_regclass('parley_documents') IS NULL THEN
    CREATE TABLE parley_documents (
      doc TEXT PRIMARY KEY,
      last_position BIGINT NOT NULL,
      created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
      damaged TEXT,
      damaged_at TIMESTAMPTZ
    );
    -- Documents stored before the catalog existed are recorded, so that their later loss shows as damage.
    INSERT INTO parley_documents (doc, last_position)
      SELECT doc, MAX(p) FROM (
        SELECT doc, MAX(position) AS p FROM parley_updates GROUP BY doc
        UNION ALL SELECT doc, through FROM parley_snapshots) AS known
      GROUP BY doc;
  END IF;
END $$;
`

const ADVANCE = `INSERT INTO parley_documents (doc, last_position) VALUES ($1, $2)
  ON CONFLICT (doc) DO UPDATE SET last_position = GREATEST(parley_documents.last_position, EXCLUDED.last_position)`

/** Longest the storage probe waits for a lock on a table appends write, in ms: it must not queue behind one. */
export const PROBE_LOCK_TIMEOUT_MS = 1000

/** Longest each statement of an append waits for a lock, in ms (see `PostgresStorage.commit`). */
export const APPEND_LOCK_TIMEOUT_MS = 1000

/** How long a document found locked has its appends refused at once, without waiting on the lock again. */
export const LOCKED_REFUSED_MS = 2000

/**
 * How long after a document was found locked each batch first asks which of its documents another
 * session holds (one round trip, no waiting) instead of finding each by waiting out its lock.
 */
export const LOCKS_WARY_MS = 30_000

/**
 * The probe's writes: what an append writes, into the same tables (position
 * 0, which no append uses, under the probe's own document name).
 */
const PROBE_WRITES: readonly (readonly [table: string, statement: string])[] = [
  ["parley_updates", "INSERT INTO parley_updates (doc, position, data, crc) VALUES ($1, 0, '', 0)"],
  ["parley_documents", "INSERT INTO parley_documents (doc, last_position) VALUES ($1, 0)"],
]

/**
 * The probe's failure on `table`, said as an operator needs it: which table is
 * locked, or why the server refuses writes. Anything else is passed on.
 */
async function probeFailure(client: pg.PoolClient, table: string, error: unknown): Promise<unknown> {
  const code = (error as { code?: unknown } | null)?.code
  const message = error instanceof Error ? error.message : String(error)
  if (code === "55P03")
    return storageUnavailable(
      `PostgreSQL table ${table} is locked: a write to it waited ${PROBE_LOCK_TIMEOUT_MS} ms for a lock another session holds`,
      error,
    )
  if (code === "25006") {
    // Which of the two: a standby is not fixed by a setting, and the operator looks in different places.
    await client.query("ROLLBACK").catch(() => undefined)
    const recovery = await client.query<{ recovery: boolean }>("SELECT pg_is_in_recovery() AS recovery").then(
      (result) => result.rows[0]?.recovery,
      () => undefined,
    )
    return storageUnavailable(
      recovery
        ? `PostgreSQL refuses writes: the server is a standby (in recovery): ${message}`
        : `PostgreSQL refuses writes: transactions are read-only (default_transaction_read_only or transaction_read_only is on): ${message}`,
      error,
    )
  }
  if (typeof code === "string" && code.startsWith("53"))
    return storageUnavailable(
      `PostgreSQL cannot write ${table} (out of resources, ${code}): ${message}`,
      error,
    )
  return error
}

/** PostgreSQL's verdict on damaged pages (`data_corrupted`, `index_corrupted`). */
function isCorruption(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return code === "XX001" || code === "XX002"
}

const bytes = (buffer: Buffer): Uint8Array => new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length)

/** The retryable refusal of appends to a document another PostgreSQL session holds. */
export const lockedRefusal = (cause?: unknown): ParleyError =>
  new ParleyError(
    ErrorCode.UNAVAILABLE,
    `the document is locked by another PostgreSQL session (waited ${APPEND_LOCK_TIMEOUT_MS} ms): try again`,
    cause === undefined ? undefined : { cause },
  )

/**
 * What a relay without a cluster holds the database by (its token of the
 * relays' lock's fence, see `holdRelaysLock`): every document write checks it.
 */
export interface DatabaseFence {
  readonly token: string
  /** Told when a write finds the database taken by another: the relay stops. */
  readonly onTaken: () => void
}

/**
 * The documents of the PostgreSQL backend (`PostgresBackend`, which owns the
 * pool): tables `parley_updates`, `parley_snapshots`, and the catalog
 * `parley_documents`, written in the same transactions. A commit
 * returns once PostgreSQL has flushed its WAL (its default `synchronous_commit`),
 * so an append is durable when it resolves. Appends of one tick share one
 * transaction. Positions are computed inside the transaction, so several relays
 * may share a database (a document is still served by one relay at a time).
 */
export class PostgresStorage implements RelayStorage {
  private readonly group: GroupCommit
  private closed = false
  /** The document name of this storage's probe rows: its own, so that probes of several relays never wait on each other's rows. */
  private readonly probeName = `parley-probe:${randomUUID()}`
  /** Documents found locked by another session, until when their appends are refused at once. */
  private readonly locked = new Map<string, number>()
  /** Until when batches check their documents for locks first (see {@link LOCKS_WARY_MS}). */
  private waryUntil = 0

  /** `pool` is the backend's, with {@link DOCUMENTS_SCHEMA} created. */
  constructor(
    private readonly pool: pg.Pool,
    private readonly fence?: DatabaseFence,
  ) {
    this.group = new GroupCommit((batch) => this.commit(batch))
  }

  /**
   * Inside a write's transaction: refuses it (retryably, and tells the fence's
   * owner) once another lone relay or an offline command took the database.
   * For the backend's other stores' writes too (sealed history).
   */
  async checkFence(client: pg.ClientBase): Promise<void> {
    if (!this.fence) return
    let holds: boolean
    try {
      holds = await stillHolds(client, this.fence.token)
    } catch (error) {
      // Named, as the probe names a locked table: "canceling statement due to lock timeout" did not say which.
      if ((error as { code?: unknown } | null)?.code === "55P03")
        throw storageUnavailable(
          "PostgreSQL table parley_relay_fence is locked: another session holds the lone relay's fence row",
          error,
        )
      throw error
    }
    if (holds) return
    this.fence.onTaken()
    throw storageUnavailable(
      "another relay or an offline command took this database while this relay's lock connection was down: this relay stores nothing more",
    )
  }

  /**
   * Commits a tick's appends in one transaction. One document whose row or
   * lock another session holds (an operator's `SELECT … FOR UPDATE`, a stalled
   * backend) used to hold the whole batch, and every later one, until the
   * storage timeout: each statement now waits at most
   * {@link APPEND_LOCK_TIMEOUT_MS} for a lock; if the probe's writes (under a
   * name of its own) still go through, that document's appends alone fail,
   * with the retryable UNAVAILABLE, and the rest commit. A table locked whole
   * fails the probe too: storage is failing then, as before. Every document of
   * the batch another session holds is found at once (a batch re-run once per
   * locked document outlasted the storage timeout with a dozen: an outside
   * probe), and refused at once for {@link LOCKED_REFUSED_MS} after.
   */
  private async commit(batch: AppendBatch): Promise<(number[] | Error)[]> {
    const now = Date.now()
    for (const [name, until] of this.locked) if (until <= now) this.locked.delete(name)
    const results: (number[] | Error | undefined)[] = batch.map(({ name }) =>
      this.locked.has(name) ? lockedRefusal() : undefined,
    )
    // Locks were found lately: another session may hold more of the documents, each of which would
    // hold this batch (and every batch behind it) for the lock wait: a dozen locked conversations,
    // each written to in its own batch, delayed every other conversation's acknowledgements by 7 s.
    if (now < this.waryUntil) {
      const names = [...new Set(batch.flatMap(({ name }, i) => (results[i] === undefined ? [name] : [])))]
      if (names.length > 0) {
        const busy = await this.lockedAmong(names)
        if (busy.size > 0) {
          const until = Date.now() + LOCKED_REFUSED_MS
          for (const name of busy) this.locked.set(name, until)
          for (const [i, { name }] of batch.entries()) if (busy.has(name)) results[i] = lockedRefusal()
        }
      }
    }
    for (;;) {
      const live = batch.flatMap((entry, i) => (results[i] === undefined ? [{ entry, i }] : []))
      if (live.length === 0) return results as (number[] | Error)[]
      let current: string | undefined
      try {
        // The lock wait is set with BEGIN, in the same round trip.
        const positions = await inTransaction(
          this.pool,
          async (client) => {
            await this.checkFence(client)
            return this.appendAll(
              client,
              live.map(({ entry }) => entry),
              (name) => {
                current = name
              },
            )
          },
          `BEGIN; SET LOCAL lock_timeout = ${APPEND_LOCK_TIMEOUT_MS}`,
        )
        for (const [k, { i }] of live.entries()) results[i] = positions[k]!
      } catch (error) {
        const locked = current
        if (locked === undefined || (error as { code?: unknown } | null)?.code !== "55P03") throw error
        // Throws storage's failure when every document would wait (a table locked, the server read-only).
        await this.ping()
        const busy = await this.lockedAmong([...new Set(live.map(({ entry }) => entry.name))])
        busy.add(locked)
        const until = Date.now() + LOCKED_REFUSED_MS
        this.waryUntil = Date.now() + LOCKS_WARY_MS
        for (const name of busy) this.locked.set(name, until)
        for (const { entry, i } of live) if (busy.has(entry.name)) results[i] = lockedRefusal(error)
      }
    }
  }

  /**
   * Which of `names` another session holds now (their append lock, or their
   * catalog row), found without waiting on any: one transaction, no writes.
   */
  private lockedAmong(names: readonly string[]): Promise<Set<string>> {
    return inTransaction(this.pool, async (client) => {
      const busy = new Set<string>()
      const appending = await client.query<{ doc: string; free: boolean }>(
        "SELECT d AS doc, pg_try_advisory_xact_lock(hashtext(d)) AS free FROM unnest($1::text[]) AS d",
        [names],
      )
      for (const row of appending.rows) if (!row.free) busy.add(row.doc)
      const rows = await client.query<{ doc: string }>(
        "SELECT doc FROM parley_documents WHERE doc = ANY($1::text[])",
        [names],
      )
      const free = await client.query<{ doc: string }>(
        "SELECT doc FROM parley_documents WHERE doc = ANY($1::text[]) FOR UPDATE SKIP LOCKED",
        [names],
      )
      const unlocked = new Set(free.rows.map((row) => row.doc))
      for (const { doc } of rows.rows) if (!unlocked.has(doc)) busy.add(doc)
      return busy
    })
  }

  /** The statements of `batch`'s appends on `client`, in its transaction; `at` hears which document each is for. */
  private async appendAll(
    client: pg.ClientBase,
    batch: AppendBatch,
    at: (name: string) => void,
  ): Promise<number[][]> {
    const next = new Map<string, number>()
    const result: number[][] = []
    for (const { name, updates } of batch) {
      at(name)
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
        await client.query("INSERT INTO parley_updates (doc, position, data, crc) VALUES ($1, $2, $3, $4)", [
          name,
          position,
          Buffer.from(update.buffer, update.byteOffset, update.byteLength),
          checksumOf(update),
        ])
        positions.push(position++)
      }
      next.set(name, position)
      if (positions.length > 0) await client.query(ADVANCE, [name, positions.at(-1)])
      result.push(positions)
    }
    return result
  }

  private assertOpen() {
    if (this.closed) throw new Error("storage is closed")
  }

  async holding(names: readonly string[], needles: readonly Uint8Array[]): Promise<Set<string>> {
    this.assertOpen()
    const found = new Set<string>()
    if (names.length === 0 || needles.length === 0) return found
    await this.group.drain()
    // position() on bytea compares bytes, in the database: no stored byte comes to the relay.
    const { rows } = await this.pool.query<{ doc: string }>(
      `SELECT doc FROM parley_snapshots WHERE doc = ANY($1::text[])
         AND EXISTS (SELECT 1 FROM unnest($2::bytea[]) n WHERE position(n IN data) > 0)
       UNION SELECT doc FROM parley_updates WHERE doc = ANY($1::text[])
         AND EXISTS (SELECT 1 FROM unnest($2::bytea[]) n WHERE position(n IN data) > 0)`,
      [names, needles.map((n) => Buffer.from(n.buffer, n.byteOffset, n.byteLength))],
    )
    for (const row of rows) found.add(row.doc)
    return found
  }

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    await this.group.settled(name)
    // One snapshot of the database, so a concurrent compaction cannot drop entries between the reads.
    try {
      return await inTransaction(
        this.pool,
        async (client) => {
          const record = await client.query<{ last_position: string; damaged: string | null }>(
            "SELECT last_position, damaged FROM parley_documents WHERE doc = $1",
            [name],
          )
          const snapshot = await client.query<{ data: Buffer; through: string; crc: number | null }>(
            "SELECT data, through, crc FROM parley_snapshots WHERE doc = $1",
            [name],
          )
          const updates = await client.query<{ position: string; data: Buffer; crc: number | null }>(
            "SELECT position, data, crc FROM parley_updates WHERE doc = $1 ORDER BY position",
            [name],
          )
          const found = record.rows[0]
          return {
            snapshot: snapshot.rows[0] ? bytes(snapshot.rows[0].data) : null,
            through: Number(snapshot.rows[0]?.through ?? 0),
            snapshotChecksum: snapshot.rows[0]?.crc ?? null,
            updates: updates.rows.map((row) => ({
              position: Number(row.position),
              update: bytes(row.data),
              checksum: row.crc,
            })),
            record: found ? { lastPosition: Number(found.last_position), damaged: found.damaged } : null,
          }
        },
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
      )
    } catch (error) {
      if (isCorruption(error))
        throw new ParleyError(
          ErrorCode.DAMAGED,
          `PostgreSQL cannot read the document: ${(error as Error).message}`,
          { cause: error },
        )
      throw error
    }
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
      await this.checkFence(client)
      await client.query(
        `INSERT INTO parley_snapshots (doc, data, through, crc) VALUES ($1, $2, $3, $4)
         ON CONFLICT (doc) DO UPDATE SET data = EXCLUDED.data, crc = EXCLUDED.crc,
           through = GREATEST(parley_snapshots.through, EXCLUDED.through)`,
        [
          name,
          Buffer.from(snapshot.buffer, snapshot.byteOffset, snapshot.byteLength),
          through,
          checksumOf(snapshot),
        ],
      )
      await client.query("DELETE FROM parley_updates WHERE doc = $1 AND position <= $2", [name, through])
      await client.query(ADVANCE, [name, through])
    })
  }

  async markDamaged(name: string, reason: string): Promise<void> {
    this.assertOpen()
    await this.pool.query(
      `INSERT INTO parley_documents (doc, last_position, damaged, damaged_at) VALUES ($1, 0, $2, now())
       ON CONFLICT (doc) DO UPDATE SET damaged = COALESCE(parley_documents.damaged, EXCLUDED.damaged),
         damaged_at = COALESCE(parley_documents.damaged_at, EXCLUDED.damaged_at)`,
      [name, reason],
    )
  }

  async damaged(): Promise<DamagedDocument[]> {
    this.assertOpen()
    const { rows } = await this.pool.query<{
      doc: string
      damaged: string
      damaged_at: Date
      last_position: string
    }>(
      "SELECT doc, damaged, damaged_at, last_position FROM parley_documents WHERE damaged IS NOT NULL ORDER BY doc",
    )
    return rows.map((row) => ({
      name: row.doc,
      reason: row.damaged,
      detectedAt: row.damaged_at.getTime(),
      lastPosition: Number(row.last_position),
    }))
  }

  async restore(name: string, snapshot: Uint8Array): Promise<number> {
    this.assertOpen()
    await this.group.settled(name)
    return inTransaction(this.pool, async (client) => {
      await this.checkFence(client)
      await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [name])
      const { rows } = await client.query<{ last: string | null }>(
        `SELECT GREATEST(
           (SELECT MAX(position) FROM parley_updates WHERE doc = $1),
           (SELECT through FROM parley_snapshots WHERE doc = $1),
           (SELECT last_position FROM parley_documents WHERE doc = $1)) AS last`,
        [name],
      )
      const through = Number(rows[0]?.last ?? 0)
      await client.query("DELETE FROM parley_updates WHERE doc = $1", [name])
      await client.query(
        `INSERT INTO parley_snapshots (doc, data, through, crc) VALUES ($1, $2, $3, $4)
         ON CONFLICT (doc) DO UPDATE SET data = EXCLUDED.data, crc = EXCLUDED.crc, through = EXCLUDED.through`,
        [
          name,
          Buffer.from(snapshot.buffer, snapshot.byteOffset, snapshot.byteLength),
          through,
          checksumOf(snapshot),
        ],
      )
      await client.query(
        `INSERT INTO parley_documents (doc, last_position) VALUES ($1, $2)
         ON CONFLICT (doc) DO UPDATE SET last_position = EXCLUDED.last_position, damaged = NULL, damaged_at = NULL`,
        [name, through],
      )
      return through
    })
  }

  /**
   * The write an append makes, rolled back: a row into `parley_updates` and
   * one into `parley_documents` (under a document name of this probe's own,
   * which no document has), in a transaction that waits at most
   * {@link PROBE_LOCK_TIMEOUT_MS} for a lock. It fails, naming the cause, on
   * a table locked by another session, a read-only server (a standby after a
   * failover, `default_transaction_read_only`), one out of disk space or not
   * answering; `SELECT 1`, the probe before it, answered through all of
   * those. Costs one connection for four short statements; nothing is kept
   * (the rolled-back rows are dead tuples, vacuumed with the rest).
   */
  async ping(): Promise<void> {
    this.assertOpen()
    const client = await this.pool.connect()
    const onError = () => {}
    client.on("error", onError)
    let failure: Error | undefined
    try {
      // The pool's statement_timeout (the storage timeout) still bounds each statement.
      await client.query(`BEGIN; SET LOCAL lock_timeout = ${PROBE_LOCK_TIMEOUT_MS}`)
      // A relay another took the database from is not ready again, whatever the database answers.
      await this.checkFence(client)
      for (const [table, statement] of PROBE_WRITES) {
        try {
          await client.query(statement, [this.probeName])
        } catch (error) {
          throw await probeFailure(client, table, error)
        }
      }
      await client.query("ROLLBACK")
    } catch (error) {
      failure = error instanceof Error ? error : new Error(String(error))
      throw error
    } finally {
      client.off("error", onError)
      // A connection whose probe failed is not reused: its transaction may still be open.
      client.release(failure)
    }
  }

  /** Finishes pending appends; the backend ends the pool. */
  async close(): Promise<void> {
    if (this.closed) return
    await this.group.drain()
    this.closed = true
  }
}
