import type { Redis } from "ioredis"
import type pg from "pg"
import type { Logger } from "../log.js"
import { LeaseRenewer, type SharedLease } from "./lease-renewer.js"

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
  /** {@link LeaseOptions.recordedAt}'s answer at the claim. */
  readonly recordedThrough?: number
  /** `validUntil[0]`: this relay may write until then, the lease's expiry as seen before the request that set it. */
  readonly shared: SharedLease
}

/** Default of {@link LeaseOptions.maxStallMs}. */
export const DEFAULT_MAX_STALL_MS = 5000

/** How {@link Leases} behaves. */
export interface LeaseOptions {
  /** For taking, releasing and looking up leases (the main thread's connection). */
  readonly redis: Redis
  /** Where the renewing thread connects (its own connection). */
  readonly redisUrl: string
  /**
   * A relay whose event loop has not run for this long (ms) stops renewing
   * its leases (default 5 s): a busy relay keeps its documents, a hung one
   * loses them after this plus one lease lifetime.
   */
  readonly maxStallMs?: number
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
  /**
   * Read right after each claim, before this relay may write under the new token: how far the
   * document's hook events were recorded then (their watermark), see {@link Leases.recordedAtClaim}.
   */
  readonly recordedAt?: (name: string) => Promise<number | undefined>
}

/**
 * Per-document ownership across relays: a lease in Redis (`SET NX PX`,
 * renewed every third of its lifetime from a worker thread, see
 * {@link LeaseRenewer}) says which relay orders a document;
 * a fencing token from PostgreSQL (`parley_cluster_fences`, incremented by
 * every new holder before it reads the log) is checked by every append and
 * compaction in the same transaction. A relay that lost its lease (paused,
 * partitioned from Redis) stops writing on its own once its lease's lifetime
 * has passed by its clock, and if it still tries, its token is older than the
 * row's and PostgreSQL refuses the write.
 */
export class Leases {
  private readonly held = new Map<string, Held>()
  private readonly renewer: LeaseRenewer
  private readonly marginMs: number
  private closed = false

  constructor(private readonly options: LeaseOptions) {
    // Writes stop a tenth of the lifetime early: clocks drift, and a renewal's answer can be late.
    this.marginMs = Math.ceil(options.ttlMs / 10)
    this.renewer = new LeaseRenewer({
      redisUrl: options.redisUrl,
      keyPrefix: `${options.prefix}lease:`,
      relayId: options.relayId,
      ttlMs: options.ttlMs,
      marginMs: this.marginMs,
      script: RENEW,
      maxStallMs: options.maxStallMs ?? DEFAULT_MAX_STALL_MS,
      log: options.log,
      lost: (name, generation) => {
        const held = this.held.get(name)
        if (held?.shared.generation !== generation) return
        this.held.delete(name)
        options.log.warn({ doc: name, token: held.token }, "lost the document's lease")
        options.lost(name)
      },
    })
  }

  private key(name: string): string {
    return `${this.options.prefix}lease:${name}`
  }

  /** Resolves once leases are renewed (the renewing thread reached Redis); rejects after `timeoutMs`. */
  ready(timeoutMs = 10_000): Promise<void> {
    return this.renewer.ready(timeoutMs)
  }

  /** The fencing token while this relay holds `name`'s lease by its own clock; else undefined. */
  tokenOf(name: string): number | undefined {
    const held = this.held.get(name)
    if (!held) return undefined
    if (Date.now() >= Number(Atomics.load(held.shared.validUntil, 0))) return undefined
    return held.token
  }

  /** `name`'s token and until when this relay may write under it (its clock); undefined when not held. */
  heldOf(name: string): { readonly token: number; readonly validUntil: number } | undefined {
    const held = this.held.get(name)
    return held && { token: held.token, validUntil: Number(Atomics.load(held.shared.validUntil, 0)) }
  }

  /** Lets every lease lapse (renewing none) until {@link resumeRenewals}. */
  pauseRenewals(): void {
    this.renewer.pause()
  }

  /** Renews the leases still held again. */
  resumeRenewals(): void {
    this.renewer.resume()
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
    let rows: { token: string }[]
    let recordedThrough: number | undefined
    try {
      ;({ rows } = await pool.query<{ token: string }>(
        `INSERT INTO parley_cluster_fences (doc, token, holder) VALUES ($1, 1, $2)
         ON CONFLICT (doc) DO UPDATE SET token = parley_cluster_fences.token + 1, holder = EXCLUDED.holder,
           claimed_at = now()
         RETURNING token`,
        [name, relayId],
      ))
      // A statement of its own, after the claim committed: the claim's snapshot predates the records it
      // waited for. Nothing here writes under the new token yet (it is not held until this returns).
      recordedThrough = await this.options.recordedAt?.(name)
    } catch (error) {
      // This relay cannot reach storage: the lease just taken would name it to the other relays for its
      // whole life, again at each retry, while it can write nothing (an outside probe: a relay cut off
      // from PostgreSQL kept the healthy one from taking over for 12–18 s). Given back now.
      const previous = this.held.get(name)
      if (previous) {
        this.held.delete(name)
        this.renewer.drop(name, previous.shared)
      }
      await redis.eval(RELEASE, 1, this.key(name), relayId).catch(() => undefined)
      throw error
    }
    const token = Number(rows[0]!.token)
    const previous = this.held.get(name)
    if (previous) this.renewer.drop(name, previous.shared)
    this.held.set(name, {
      token,
      ...(recordedThrough !== undefined ? { recordedThrough } : {}),
      shared: this.renewer.hold(name, sentAt + ttlMs - this.marginMs),
    })
    return token
  }

  /**
   * How far `name`'s hook events were recorded when this relay last claimed it (undefined: not held,
   * no watermark then, or not asked). Only the last claimant records a document's events (see
   * `recordingFence`), so events of changes stored before the claim and not recorded by then are
   * the new owner's to derive: those past this mark, even once its own records moved the watermark
   * on (a write ordered here while its takeover was still reading the log).
   */
  recordedAtClaim(name: string): number | undefined {
    return this.held.get(name)?.recordedThrough
  }

  /** Gives `name`'s lease up (if this relay still holds it). */
  async release(name: string): Promise<void> {
    const held = this.held.get(name)
    if (!held) return
    this.held.delete(name)
    this.renewer.drop(name, held.shared)
    await this.options.redis.eval(RELEASE, 1, this.key(name), this.options.relayId).catch(() => undefined)
  }

  /** Stops renewing and gives every lease up. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.all(this.names.map((name) => this.release(name)))
    await this.renewer.close()
  }
}
