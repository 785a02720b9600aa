import { ErrorCode, ParleyError } from "@parley/shared"
import type pg from "pg"
import { inTransaction } from "../postgres.js"
import type { PostgresStorage } from "../storage/postgres.js"
import type { DamagedDocument, RelayStorage, StoredDocument } from "../storage/types.js"
import type { WireEntry } from "./wire.js"

const ADVANCE = `INSERT INTO parley_documents (doc, last_position) VALUES ($1, $2)
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
 * claim; two appends of one document never compute the same position). Appends are not grouped across documents: a refused fence then
 * fails only its own document. Committed entries are published to the other
 * relays.
 */
export class FencedStorage implements RelayStorage {
  constructor(
    private readonly pool: pg.Pool,
    private readonly reads: PostgresStorage,
    private readonly fence: FenceSource,
  ) {}

  load(name: string): Promise<StoredDocument> {
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
    // Copied now: the caller may reuse its buffers before the transaction runs.
    const copies = updates.map((u) => Buffer.from(u))
    return this.track(this.appendCopies(name, copies))
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

  private async appendCopies(name: string, updates: readonly Buffer[]): Promise<number[]> {
    const token = this.fence.tokenOf(name)
    if (token === undefined) throw notOwner(name)
    const positions = await inTransaction(this.pool, async (client) => {
      await this.checkFence(client, name, token)
      const { rows } = await client.query<{ last: string | null }>(
        `SELECT GREATEST(
           (SELECT MAX(position) FROM parley_updates WHERE doc = $1),
           (SELECT through FROM parley_snapshots WHERE doc = $1)) AS last`,
        [name],
      )
      const first = Number(rows[0]?.last ?? 0) + 1
      await client.query(
        `INSERT INTO parley_updates (doc, position, data)
         SELECT $1, $2 + t.i - 1, t.d FROM unnest($3::bytea[]) WITH ORDINALITY AS t(d, i)`,
        [name, first, updates],
      )
      const last = first + updates.length - 1
      await client.query(ADVANCE, [name, last])
      return updates.map((_, i) => first + i)
    })
    this.fence.stored(
      name,
      positions.map((position, i) => ({ position, update: new Uint8Array(updates[i]!) })),
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
    await inTransaction(this.pool, async (client) => {
      await this.checkFence(client, name, token)
      await client.query(
        `INSERT INTO parley_snapshots (doc, data, through) VALUES ($1, $2, $3)
         ON CONFLICT (doc) DO UPDATE SET data = EXCLUDED.data,
           through = GREATEST(parley_snapshots.through, EXCLUDED.through)`,
        [name, snapshot, through],
      )
      await client.query("DELETE FROM parley_updates WHERE doc = $1 AND position <= $2", [name, through])
      await client.query(ADVANCE, [name, through])
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
    await Promise.allSettled([...this.running])
    await this.reads.close()
  }
}
