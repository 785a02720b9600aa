import { ErrorCode, ParleyError } from "@parley/shared"
import type pg from "pg"
import { inTransaction } from "../pg-transaction.js"
import { checksumOf } from "../storage/checksum.js"
import { type AppendBatch, GroupCommit } from "../storage/group-commit.js"
import {
  APPEND_LOCK_TIMEOUT_MS,
  LOCKED_REFUSED_MS,
  LOCKS_WARY_MS,
  lockedRefusal,
  type PostgresStorage,
} from "../storage/postgres.js"
import type { DamagedDocument, RelayStorage, StoredDocument } from "../storage/types.js"
import type { WireEntry } from "./wire.js"

const ADVANCE = `INSERT INTO parley_documents (doc, last_position) VALUES ($1, $2)
  ON CONFLICT (doc) DO UPDATE SET last_position = GREATEST(parley_documents.last_position, EXCLUDED.last_position)`
const ADVANCE_MANY = `INSERT INTO parley_documents (doc, last_position) SELECT * FROM unnest($1::text[], $2::bigint[])
  ON CONFLICT (doc) DO UPDATE SET last_position = GREATEST(parley_documents.last_position, EXCLUDED.last_position)`

/** The refusal of a write by a relay that does not (or no longer) hold the document's lease. */
export function notOwner(name: string): ParleyError {
  return new ParleyError(
    ErrorCode.UNAVAILABLE,
    `this relay does not order ${JSON.stringify(name)} (its lease moved to another relay): retry`,
  )
}

/** What {@link FencedStorage} asks of the cluster. */
export interface FenceSource {
  /** The fencing token of `name` while this relay holds its lease; undefined otherwise. */
  tokenOf(name: string): number | undefined
  /** Entries were committed: tell the other relays. Never throws. */
  stored(name: string, entries: readonly WireEntry[]): void
}

/**
 * The documents of a clustered relay: reads as {@link PostgresStorage}, but
 * every append and compaction checks, in its own transaction, that this
 * relay's fencing token is the document's current one (`FOR UPDATE` on the
 * fence row: a new holder's claim waits for it to commit, and it for the
 * claim; two appends of one document never compute the same position).
 * Appends of one tick, of any documents, share one transaction (one commit,
 * one WAL flush) of six statements whatever their number: the fence rows of
 * all their documents are locked in name order (two relays' batches cannot
 * deadlock), and a document whose token is not current fails alone (its
 * appends are left out, the others commit). So does one whose fence row
 * another PostgreSQL session holds (an operator's `SELECT … FOR UPDATE`): each
 * statement waits at most `APPEND_LOCK_TIMEOUT_MS` for a lock, the rows held
 * are found without waiting, and those documents' appends are refused
 * (retryable UNAVAILABLE) for `LOCKED_REFUSED_MS` while the rest commit.
 * Before, one locked row held every document the relay orders for as long as
 * the lock lasted, and its readiness flapped with the storage timeouts (an
 * outside probe). Committed entries are published to the other relays.
 */
export class FencedStorage implements RelayStorage {
  private readonly group: GroupCommit
  /** Documents whose fence row another session held, until when their appends are refused at once. */
  private readonly locked = new Map<string, number>()
  /** Until when batches look for locked documents first (see `LOCKS_WARY_MS`). */
  private waryUntil = 0

  constructor(
    private readonly pool: pg.Pool,
    private readonly reads: PostgresStorage,
    private readonly fence: FenceSource,
  ) {
    this.group = new GroupCommit((batch) => this.commit(batch))
  }

  async holding(names: readonly string[], needles: readonly Uint8Array[]): Promise<Set<string>> {
    // Its own appends in flight first (the reads' storage commits none of them).
    await this.group.drain()
    return this.reads.holding(names, needles)
  }

  async load(name: string): Promise<StoredDocument> {
    await this.group.settled(name)
    return this.reads.load(name)
  }

  list(): Promise<string[]> {
    return this.reads.list()
  }

  ping(): Promise<void> {
    return this.reads.ping()
  }

  markDamaged(name: string, reason: string): Promise<void> {
    return this.reads.markDamaged(name, reason)
  }

  damaged(): Promise<DamagedDocument[]> {
    return this.reads.damaged()
  }

  restore(name: string, snapshot: Uint8Array): Promise<number> {
    return this.reads.restore(name, snapshot)
  }

  append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    // Refused at once when not the owner by this relay's clock; checked again when the batch commits.
    if (this.fence.tokenOf(name) === undefined) return Promise.reject(notOwner(name))
    // The group copies the updates: the caller may reuse its buffers before the transaction runs.
    return this.track(this.group.append(name, updates))
  }

  /** Appends and compactions still running: `close` waits for them. */
  private readonly running = new Set<Promise<unknown>>()

  private track<T>(promise: Promise<T>): Promise<T> {
    this.running.add(promise)
    void promise.then(
      () => this.running.delete(promise),
      () => this.running.delete(promise),
    )
    return promise
  }

  private async commit(batch: AppendBatch): Promise<(number[] | Error)[]> {
    const now = Date.now()
    for (const [name, until] of this.locked) if (until <= now) this.locked.delete(name)
    const refused = new Map<string, ParleyError>()
    for (const { name } of batch) if (this.locked.has(name)) refused.set(name, lockedRefusal())
    const tokens = new Map<string, number>()
    for (const { name } of batch) {
      const token = this.fence.tokenOf(name)
      if (token !== undefined && !refused.has(name)) tokens.set(name, token)
    }
    // Locks were found lately: the batch's documents another session holds are found first, without
    // waiting on each in turn (a dozen locked conversations delayed every other one's writes 7–13 s).
    if (now < this.waryUntil) {
      const names = [...tokens.keys()].filter((name) => !refused.has(name))
      if (names.length > 0) {
        const until = Date.now() + LOCKED_REFUSED_MS
        for (const name of await this.lockedFences(names)) {
          this.locked.set(name, until)
          refused.set(name, lockedRefusal())
        }
      }
    }
    let positions = new Map<string, number>()
    let unheld = 0
    for (;;) {
      const names = [...tokens.keys()].filter((name) => !refused.has(name)).sort()
      if (names.length === 0) break
      try {
        positions = await this.appendOwned(names, tokens, batch)
        break
      } catch (error) {
        if ((error as { code?: unknown } | null)?.code !== "55P03") throw error
        const busy = await this.lockedFences(names)
        // Nothing held by another session among them: the holder let go between the timeout and the
        // look (another relay's takeover claiming fence rows after a relay died), tried again once; held
        // by nobody twice, storage is failing (a table locked whole, say). Before, the first such miss
        // took storage for failing: a survivor refused every write and answered /readyz 503 for seconds.
        if (busy.size === 0 && unheld++ === 0) continue
        if (busy.size === 0) throw error
        const until = Date.now() + LOCKED_REFUSED_MS
        this.waryUntil = Date.now() + LOCKS_WARY_MS
        for (const name of busy) {
          this.locked.set(name, until)
          refused.set(name, lockedRefusal(error))
        }
      }
    }
    const results: (number[] | Error)[] = []
    const stored = new Map<string, WireEntry[]>()
    for (const { name, updates } of batch) {
      const first = positions.get(name)
      if (first === undefined) {
        results.push(refused.get(name) ?? notOwner(name))
        continue
      }
      const given = updates.map((_, i) => first + i)
      positions.set(name, first + updates.length)
      results.push(given)
      const entries = stored.get(name) ?? []
      for (const [i, update] of updates.entries()) entries.push({ position: given[i]!, update })
      stored.set(name, entries)
    }
    for (const [name, entries] of stored) this.fence.stored(name, entries)
    return results
  }

  /**
   * Which of `names`' fence rows another session holds now, found without
   * waiting on any: one transaction, no writes.
   */
  private lockedFences(names: readonly string[]): Promise<Set<string>> {
    // The table itself locked (LOCK TABLE) holds even these reads: then storage is failing, said at once.
    return inTransaction(
      this.pool,
      async (client) => {
        const busy = new Set<string>()
        // The fence rows the append locks, and the documents rows it advances (an operator's
        // `SELECT … FOR UPDATE` on those held every conversation of the relay, taken for storage failing).
        for (const table of ["parley_cluster_fences", "parley_documents"]) {
          const { rows } = await client.query<{ doc: string }>(
            `SELECT doc FROM ${table} WHERE doc = ANY($1::text[])`,
            [names],
          )
          const { rows: free } = await client.query<{ doc: string }>(
            `SELECT doc FROM ${table} WHERE doc = ANY($1::text[]) FOR UPDATE SKIP LOCKED`,
            [names],
          )
          const unlocked = new Set(free.map((row) => row.doc))
          for (const { doc } of rows) if (!unlocked.has(doc)) busy.add(doc)
        }
        return busy
      },
      `BEGIN; SET LOCAL lock_timeout = ${APPEND_LOCK_TIMEOUT_MS}`,
    )
  }

  /**
   * Appends `batch`'s updates of the documents `names` (sorted) whose fence
   * token is still this relay's, in one transaction; resolves each such
   * document's first position. Throws PostgreSQL's lock timeout (55P03).
   */
  private async appendOwned(
    names: readonly string[],
    tokens: ReadonlyMap<string, number>,
    batch: AppendBatch,
  ): Promise<Map<string, number>> {
    const positions = new Map<string, number>()
    await inTransaction(
      this.pool,
      async (client) => {
        const { rows: fences } = await client.query<{ doc: string; token: string }>(
          `SELECT doc, token FROM parley_cluster_fences WHERE doc = ANY($1::text[])
           ORDER BY doc COLLATE "C" FOR UPDATE`,
          [names],
        )
        const current = new Set(fences.filter((f) => Number(f.token) === tokens.get(f.doc)).map((f) => f.doc))
        const owned = names.filter((name) => current.has(name))
        if (owned.length === 0) return
        const { rows } = await client.query<{ doc: string; last: string | null }>(
          `SELECT d.doc, GREATEST(
             (SELECT MAX(position) FROM parley_updates WHERE doc = d.doc),
             (SELECT through FROM parley_snapshots WHERE doc = d.doc)) AS last
           FROM unnest($1::text[]) AS d(doc)`,
          [owned],
        )
        for (const row of rows) positions.set(row.doc, Number(row.last ?? 0) + 1)
        const docs: string[] = []
        const at: number[] = []
        const data: Buffer[] = []
        const crcs: number[] = []
        for (const { name, updates } of batch) {
          let next = positions.get(name)
          if (next === undefined) continue
          for (const update of updates) {
            docs.push(name)
            at.push(next++)
            data.push(Buffer.from(update.buffer, update.byteOffset, update.byteLength))
            crcs.push(checksumOf(update))
          }
          positions.set(name, next)
        }
        await client.query(
          `INSERT INTO parley_updates (doc, position, data, crc)
           SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::integer[])`,
          [docs, at, data, crcs],
        )
        await client.query(ADVANCE_MANY, [owned, owned.map((name) => positions.get(name)! - 1)])
        // Back to each document's first position, for handing them out.
        for (const row of rows) positions.set(row.doc, Number(row.last ?? 0) + 1)
      },
      // The lock wait is set with BEGIN, in the same round trip.
      `BEGIN; SET LOCAL lock_timeout = ${APPEND_LOCK_TIMEOUT_MS}`,
    )
    return positions
  }

  compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    return this.track(this.compactNow(name, Buffer.from(snapshot), through))
  }

  private async compactNow(name: string, snapshot: Buffer, through: number): Promise<void> {
    // Only the owner folds the log; another relay's memory may lag behind it.
    const token = this.fence.tokenOf(name)
    if (token === undefined) return
    await inTransaction(
      this.pool,
      async (client) => {
        await this.checkFence(client, name, token)
        await client.query(
          `INSERT INTO parley_snapshots (doc, data, through, crc) VALUES ($1, $2, $3, $4)
         ON CONFLICT (doc) DO UPDATE SET data = EXCLUDED.data, crc = EXCLUDED.crc,
           through = GREATEST(parley_snapshots.through, EXCLUDED.through)`,
          [name, snapshot, through, checksumOf(snapshot)],
        )
        await client.query("DELETE FROM parley_updates WHERE doc = $1 AND position <= $2", [name, through])
        await client.query(ADVANCE, [name, through])
      },
      `BEGIN; SET LOCAL lock_timeout = ${APPEND_LOCK_TIMEOUT_MS}`,
    ).catch((error: unknown) => {
      // Its fence row held by another session: this compaction waits for the next (the log stays whole).
      throw (error as { code?: unknown } | null)?.code === "55P03" ? lockedRefusal(error) : error
    })
  }

  private async checkFence(client: pg.PoolClient, name: string, token: number): Promise<void> {
    const { rows } = await client.query<{ token: string }>(
      "SELECT token FROM parley_cluster_fences WHERE doc = $1 FOR UPDATE",
      [name],
    )
    if (Number(rows[0]?.token) !== token) throw notOwner(name)
  }

  async close(): Promise<void> {
    await this.group.drain()
    await Promise.allSettled([...this.running])
    await this.reads.close()
  }
}
