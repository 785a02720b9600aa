import type { Redis } from "ioredis"
import type pg from "pg"
import type { Logger } from "../log.js"

/** The fencing tokens' table: PostgreSQL, not Redis, issues them, so they survive a Redis restart. */
export const FENCES_SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_cluster_fences (
  doc TEXT PRIMARY KEY,
  token BIGINT NOT NULL,
  holder TEXT NOT NULL,
  claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
`

// Takes the lease when free, or refreshes it when this relay already holds it (its local record lapsed).
const ACQUIRE = `local v = redis.call('get', KEYS[1])
if v == false then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
return 0`
const RENEW = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0`
const RELEASE = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0`

interface Held {
  readonly token: number
  /** This relay may write until then: the lease's expiry as seen before the request that set it. */
  validUntil: number
}

/** How {@link Leases} behaves. */
export interface LeaseOptions {
  readonly redis: Redis
  readonly pool: pg.Pool
  readonly log: Logger
  /** Prefix of every Redis key. */
  readonly prefix: string
  /** This relay's id in the cluster. */
  readonly relayId: string
  /** Lease lifetime in ms; renewed every third of it. */
  readonly ttlMs: number
  /** Told when a lease this relay held was lost (taken, or not renewed in time). */
  readonly lost: (name: string) => void
}

/**
 * Per-document ownership across relays: a lease in Redis (`SET NX PX`,
 * renewed every third of its lifetime) says which relay orders a document;
 * a fencing token from PostgreSQL (`parley_cluster_fences`, incremented by
 * every new holder before it reads the log) is checked by every append and
 * compaction in the same transaction. A relay that lost its lease (paused,
 * partitioned from Redis) stops writing on its own once its lease's lifetime
 * has passed by its clock, and if it still tries, its token is older than the
 * row's and PostgreSQL refuses the write.
 */
export class Leases {
  private readonly held = new Map<string, Held>()
  private readonly timer: NodeJS.Timeout
  private closed = false

  constructor(private readonly options: LeaseOptions) {
    this.timer = setInterval(() => void this.renewAll(), Math.max(50, Math.floor(options.ttlMs / 3)))
    this.timer.unref()
  }

  private key(name: string): string {
    return `${this.options.prefix}lease:${name}`
  }

  /** The fencing token while this relay holds `name`'s lease by its own clock; else undefined. */
  tokenOf(name: string): number | undefined {
    const held = this.held.get(name)
    if (!held) return undefined
    if (Date.now() >= held.validUntil) return undefined
    return held.token
  }

  /** `name`'s token and until when this relay may write under it (its clock); undefined when not held. */
  heldOf(name: string): { readonly token: number; readonly validUntil: number } | undefined {
    return this.held.get(name)
  }

  /** The leases' lifetime in ms. */
  get ttlMs(): number {
    return this.options.ttlMs
  }

  /** Documents whose lease this relay holds. */
  get names(): string[] {
    return [...this.held.keys()]
  }

  /** The relay holding `name`'s lease in Redis, or null. */
  holder(name: string): Promise<string | null> {
    return this.options.redis.get(this.key(name))
  }

  /**
   * Takes `name`'s lease if it is free (or already this relay's), then claims
   * a new fencing token in PostgreSQL; resolves with it, or undefined when
   * another relay holds the lease. After it resolves, no write with an older
   * token can commit: the caller reads the log only then.
   */
  async acquire(name: string): Promise<number | undefined> {
    const { redis, pool, relayId, ttlMs } = this.options
    const sentAt = Date.now()
    const taken = await redis.eval(ACQUIRE, 1, this.key(name), relayId, ttlMs)
    if (taken !== 1) return undefined
    const { rows } = await pool.query<{ token: string }>(
      `INSERT INTO parley_cluster_fences (doc, token, holder) VALUES ($1, 1, $2)
       ON CONFLICT (doc) DO UPDATE SET token = parley_cluster_fences.token + 1, holder = EXCLUDED.holder,
         claimed_at = now()
       RETURNING token`,
      [name, relayId],
    )
    const token = Number(rows[0]!.token)
    // Writes stop a tenth of the lifetime early: clocks drift, and a renewal's answer can be late.
    this.held.set(name, { token, validUntil: sentAt + ttlMs - Math.ceil(ttlMs / 10) })
    return token
  }

  /** Gives `name`'s lease up (if this relay still holds it). */
  async release(name: string): Promise<void> {
    if (!this.held.delete(name)) return
    await this.options.redis.eval(RELEASE, 1, this.key(name), this.options.relayId).catch(() => undefined)
  }

  private async renewAll(): Promise<void> {
    if (this.closed || this.held.size === 0) return
    const names = [...this.held.keys()]
    const sentAt = Date.now()
    const pipeline = this.options.redis.pipeline()
    for (const name of names)
      pipeline.eval(RENEW, 1, this.key(name), this.options.relayId, this.options.ttlMs)
    let results: [Error | null, unknown][] | null
    try {
      results = await pipeline.exec()
    } catch (error) {
      this.options.log.warn({ err: error }, "could not renew document leases")
      return
    }
    names.forEach((name, i) => {
      const held = this.held.get(name)
      if (!held) return
      const [error, renewed] = results?.[i] ?? [new Error("no answer"), 0]
      if (error) return
      if (renewed === 1) held.validUntil = sentAt + this.options.ttlMs - Math.ceil(this.options.ttlMs / 10)
      else {
        this.held.delete(name)
        this.options.log.warn({ doc: name }, "lost the document's lease")
        this.options.lost(name)
      }
    })
  }

  /** Stops renewing and gives every lease up. */
  async close(): Promise<void> {
    this.closed = true
    clearInterval(this.timer)
    await Promise.all(this.names.map((name) => this.release(name)))
  }
}
