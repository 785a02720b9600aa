import { randomUUID } from "node:crypto"
import { ErrorCode, ParleyError, toParleyError } from "@parley/shared"
import type pg from "pg"
import client from "prom-client"
import * as Y from "yjs"
import type { DocumentHost, HostedConnection } from "../document-host.js"
import type { ServerWriteOptions } from "../extension.js"
import type { Outbox } from "../hooks/outbox.js"
import { hookWatermark } from "../hooks/postgres-outbox.js"
import type { Logger } from "../log.js"
import { describePrincipal, type Principal } from "../principal.js"
import type { PurgedContent } from "../purge/redact.js"
import type { ReplicaView } from "../replica-view.js"
import { RELAY_DOC_OPTIONS } from "../replica-view.js"
import type { StorageState } from "../storage/guard.js"
import type { UserLedger } from "../user-limits.js"
import { inspectUpdate } from "../yjs-updates.js"
import { FairQueue } from "./fair-queue.js"
import type { FenceSource } from "./fenced-storage.js"
import { Leases } from "./leases.js"
import { ClusterMetrics } from "./metrics.js"
import { ClusterPresence } from "./presence.js"
import { CheckedRedis } from "./redis-connection.js"
import { type RoutedCore, STALE_COPY, type UpdateRouter } from "./router.js"
import {
  clusterSalt,
  digestSettings,
  type RelaySettingValues,
  SETTINGS_REFRESH_MS,
  SettingsCheck,
  type SettingsState,
} from "./settings.js"
import { ClusterUsage } from "./usage.js"
import { type ClusterMessage, decodeClusterMessage, encodeClusterMessage, type WireEntry } from "./wire.js"

/** How often the sweep also looks for documents whose log runs past their events (a crash's leftovers, rare). */
const BEHIND_EVERY_SWEEPS = 15

/**
 * How often Redis is probed for `/readyz`, and how long a probe may take: a
 * Redis that stalls (paused, overloaded, a black-holed connection) raises no
 * error, its commands only time out.
 */
const REDIS_PING_MS = 1000
/**
 * How often a relay tells again of the stock providers connected to it (documents another relay
 * orders): well within the default `--epoch-stock-grace-ms` (5 minutes) that each notice holds epochs.
 */
const STOCK_NOTICE_MS = 60_000
/** Times a server-side write is made again on a fresher copy before its caller is told to retry. */
const STALE_COPY_ATTEMPTS = 8
/** Wait before a failed takeover is tried again (doubling, up to {@link TAKEOVER_RETRY_MAX_MS}). */
const TAKEOVER_RETRY_MS = 250
const TAKEOVER_RETRY_MAX_MS = 5_000
/**
 * How long storage must have failed before a relay lets its leases lapse:
 * past a blip (a failover, a dropped connection the pool replaces), which
 * costs less than moving every document it orders.
 */
export const STORAGE_FAILING_LEASE_MS = 3000

/** Lifetime of the probe's key, in ms: long enough to outlive a probe, short enough to leave nothing behind. */
const PROBE_KEY_MS = 10_000

/** Documents read back from PostgreSQL at once after the subscriber connection came back. */
const CATCH_UP_CONCURRENCY = 4

/** Defaults of {@link ClusterOptions}. */
export const DEFAULT_CLUSTER_OPTIONS = {
  keyPrefix: "parley:",
  leaseMs: 1500,
  leaseStallMs: 5000,
  forwardTimeoutMs: 1000,
  writeDeadlineMs: 10_000,
  settingsRefreshMs: SETTINGS_REFRESH_MS,
} as const

/** How a relay joins a cluster. */
export interface ClusterOptions {
  /** Redis connection string (`redis://host:6379`). */
  readonly redisUrl: string
  /** Prefix of every Redis key and channel: several clusters (or tests) may share one Redis. */
  readonly keyPrefix?: string
  /** Lifetime of a document's lease in ms: how long ordering stays with a relay that died. */
  readonly leaseMs?: number
  /**
   * Leases are renewed from a worker thread while this relay's event loop
   * answers within this many ms (a busy relay keeps its documents); a relay
   * whose event loop hangs longer loses them.
   */
  readonly leaseStallMs?: number
  /** How long a forwarded change waits for the owner's answer before the lease is looked at again. */
  readonly forwardTimeoutMs?: number
  /** Longest a change waits for an owner in all (then UNAVAILABLE, retryable). */
  readonly writeDeadlineMs?: number
  /** How often the relay publishes its shared settings again and compares them with the others' (see {@link SettingsCheck}). */
  readonly settingsRefreshMs?: number
  readonly log: Logger
  /** The backend's pool (fencing tokens). */
  readonly pool: pg.Pool
  /** Where the cluster's metrics are registered (the relay's registry); default a registry of their own. */
  readonly registry?: client.Registry
}

/** What Redis is doing, for `/readyz`. */
export interface RedisState {
  readonly ready: boolean
  readonly error?: string
  readonly since: number
}

interface Waiting {
  resolve(reply: Extract<ClusterMessage, { type: "reply" }>): void
  timer: NodeJS.Timeout
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref())

/**
 * One relay's membership of a cluster: N relays over one PostgreSQL and one
 * Redis serve the same documents.
 *
 * - Every relay that has a document loaded follows it: the owner publishes
 *   each committed append on the document's channel, the others apply it to
 *   their copy and send it to their connections (a gap is read from
 *   PostgreSQL). Awareness goes over the same channel.
 * - One relay orders each document: the holder of its lease ({@link Leases}).
 *   A relay receiving an update for a document another relay orders forwards
 *   it to that relay's channel, waits for the answer, and acknowledges to its
 *   client once its own copy holds the stored change. A document nobody
 *   orders is taken by the first relay that has a change for it.
 * - When the owner dies its lease expires (default 1.5 s); a relay with a
 *   change waiting notices on its next look and takes over.
 */
export class Cluster implements UpdateRouter, FenceSource {
  readonly relayId = randomUUID()
  readonly leases: Leases
  /** Who is connected to which conversation through any relay (push skips them). */
  readonly presence: ClusterPresence
  private readonly redis: CheckedRedis
  private readonly sub: CheckedRedis
  private readonly prefix: string
  private readonly options: Required<Omit<ClusterOptions, "log" | "pool" | "registry">> & ClusterOptions
  readonly metrics: ClusterMetrics
  private core: RoutedCore | undefined
  private readonly hosts = new Map<string, DocumentHost>()
  private readonly waiting = new Map<string, Waiting>()
  private readonly reached = new Map<string, Set<() => void>>()
  private readonly takingOver = new Map<string, Promise<boolean>>()
  /** Documents whose takeover failed and is tried again (see {@link finishTakeoverLater}), with the lease's token. */
  private readonly retryingTakeover = new Map<string, { readonly token: number }>()
  /** Per document, the last change this relay routed: the next one waits for it (see {@link inOrder}). */
  private readonly chains = new Map<string, FairQueue>()
  private state: RedisState = { ready: false, since: Date.now() }
  private sweeper: NodeJS.Timeout | undefined
  private storageWatch: NodeJS.Timeout | undefined
  private pinger: NodeJS.Timeout | undefined
  private pinging = false
  private usage: ClusterUsage | undefined
  private settings: SettingsCheck | undefined
  private sweeping = false
  private closed = false

  private constructor(options: ClusterOptions) {
    this.options = { ...DEFAULT_CLUSTER_OPTIONS, ...options }
    this.prefix = this.options.keyPrefix
    this.metrics = new ClusterMetrics(options.registry ?? new client.Registry())
    const redisOptions = {
      // Commands fail at once while Redis is away: a write must fail fast, not queue.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      // A Redis that stops answering (a black-holed connection) fails a command after 2 s instead of
      // leaving it, and whatever awaits it (a forward, a push's presence query), pending for good.
      commandTimeout: 2000,
      retryStrategy: (times: number) => Math.min(times * 100, 1000),
      lazyConnect: true,
    }
    // Each dropped for a fresh connection once its replies cannot be trusted (a timeout, a reply out of step).
    this.redis = new CheckedRedis(options.redisUrl, redisOptions)
    // The subscriber re-subscribes by itself after a reconnect (ioredis autoResubscribe).
    this.sub = new CheckedRedis(options.redisUrl, {
      ...redisOptions,
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
    })
    for (const connection of [this.redis, this.sub]) {
      connection.on("error", (error: Error) => this.redisFailed(error))
      // Not before `open` connected both (a command would connect a lazy connection itself).
      connection.on("ready", () => {
        if (this.pinger) void this.ping()
      })
    }
    // Every connection after the first: what was published while it was down is lost to this relay.
    let subscribed = false
    this.sub.on("ready", () => {
      if (subscribed) this.catchUp()
      subscribed = true
    })
    this.leases = new Leases({
      redis: this.redis,
      redisUrl: options.redisUrl,
      maxStallMs: this.options.leaseStallMs,
      pool: options.pool,
      log: options.log,
      prefix: this.prefix,
      relayId: this.relayId,
      ttlMs: this.options.leaseMs,
      lost: () => this.metrics.leasesLost.inc(),
      recordedAt: (name) => hookWatermark(options.pool, name),
    })
    this.metrics.countOwnedWith(() => this.leases.names.filter((name) => this.owns(name)).length)
    this.presence = new ClusterPresence(this.redis, this.prefix, this.relayId, options.log)
    this.sub.on("messageBuffer", (channel: Buffer, message: Buffer) => {
      if (this.usage && channel.toString() === this.usage.channel) this.usage.received(message)
      else this.received(message)
    })
  }

  /** Connects to Redis and listens on this relay's channel. */
  static async open(options: ClusterOptions): Promise<Cluster> {
    const cluster = new Cluster(options)
    try {
      await cluster.redis.connect()
      await cluster.sub.connect()
      await cluster.sub.subscribe(cluster.relayChannel(cluster.relayId), cluster.purgesChannel())
      await cluster.leases.ready()
    } catch (error) {
      await cluster.close()
      throw error
    }
    await cluster.ping()
    cluster.pinger = setInterval(() => void cluster.ping(), REDIS_PING_MS)
    cluster.pinger.unref()
    return cluster
  }

  /**
   * Probes both connections: ready when both answer within
   * {@link REDIS_PING_MS}, failing (with the reason) when either does not.
   * The command connection writes (`SET` with `PX` on a key of this relay's
   * own), as its publishes and leases do: a Redis that still answers `PING`
   * may refuse or hold writes (`CLIENT PAUSE … WRITE`, a replica after a
   * failover, out of memory). The subscriber connection can only `PING`.
   * Each connection also echoes a word of this probe's own: a connection that
   * answers with another command's reply (one went missing on the way) is
   * replaced. One probe at a time: the next waits until this one is answered.
   */
  private async ping(): Promise<void> {
    if (this.pinging || this.closed) return
    this.pinging = true
    const word = randomUUID()
    const answered = (connection: CheckedRedis, reply: unknown, expected: string) => {
      // A subscribed connection answers `PING` with `["pong", word]`.
      if ((Array.isArray(reply) ? reply[1] : reply) === expected) return
      const error = new Error("Redis answered the probe with another command's reply")
      connection.distrust(error)
      throw error
    }
    const probe = Promise.all([
      this.redis
        .set(`${this.prefix}probe:${this.relayId}`, "1", "PX", PROBE_KEY_MS)
        .then((reply) => answered(this.redis, reply, "OK")),
      this.redis.ping(word).then((reply) => answered(this.redis, reply, word)),
      this.sub.ping(word).then((reply) => answered(this.sub, reply, word)),
    ])
    // The next probe starts once this one is answered or failed (the connections' command timeout
    // bounds that), not at its deadline: probes held by a paused Redis do not pile up.
    probe.then(
      () => {
        this.pinging = false
      },
      () => {
        this.pinging = false
      },
    )
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        // Decided after the event loop's next poll: a reply that arrived while this relay was busy
        // (a stall longer than the deadline) is read first, and is not taken for Redis being late.
        setImmediate(() => reject(new Error(`Redis did not take a write within ${REDIS_PING_MS} ms`)))
      }, REDIS_PING_MS)
    })
    try {
      await Promise.race([probe, late])
      if (!this.state.ready) {
        this.options.log.info("Redis is back: cluster writes are accepted")
        this.state = { ready: true, since: Date.now() }
      }
    } catch (error) {
      if (!this.closed) this.redisFailed(error instanceof Error ? error : new Error(String(error)))
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * The subscriber connection is back (ioredis subscribes again to every
   * channel on its own): reads what was stored while it was down from
   * PostgreSQL, for every document this relay follows. Without it, a change
   * published meanwhile reached none of this relay's clients until the next
   * change of that document showed the gap, however long that took.
   */
  private catchUp(): void {
    // After ioredis' own `ready` work (the SUBSCRIBEs, sent right after this event): this PING is
    // answered once they are in effect, so a change is either published after them or stored before the read.
    setImmediate(async () => {
      try {
        await this.sub.ping()
      } catch {
        return // Down again: the next reconnect catches up.
      }
      // A document this relay orders holds everything stored of it already.
      const queue = [...this.hosts.values()].filter((host) => !this.owns(host.key))
      const work = async () => {
        for (let host = queue.shift(); host && !this.closed; host = queue.shift())
          await this.core!.applyRemote(host, "fetch").catch((error: unknown) =>
            this.options.log.warn({ err: error, doc: host!.key }, "could not catch up with a document"),
          )
      }
      await Promise.all(Array.from({ length: CATCH_UP_CONCURRENCY }, work))
    })
  }

  /**
   * Publishes digests of this relay's shared settings (`values` and its lease timings, keyed by the
   * cluster's salt from PostgreSQL) and compares them with the other relays'
   * now and every few seconds (see {@link SettingsCheck}). Rejects with a
   * `StartupError` naming the settings that differ when they do and `change`
   * (`--cluster-config-change`) does not declare it. Before this relay takes
   * any lease: a relay refused here ordered nothing.
   */
  async checkSettings(values: RelaySettingValues, change: boolean): Promise<void> {
    const salt = await clusterSalt(this.options.pool)
    const shared = {
      ...values,
      "lease-ms": String(this.options.leaseMs),
      "lease-stall-ms": String(this.options.leaseStallMs),
    }
    this.settings = await SettingsCheck.join({
      redis: this.redis,
      prefix: this.prefix,
      relayId: this.relayId,
      log: this.options.log,
      metrics: this.metrics,
      digests: digestSettings(shared, salt),
      change,
      refreshMs: this.options.settingsRefreshMs,
    })
  }

  /** Whether this relay's shared settings agree with those of the relays that joined before it, for `/readyz`. */
  get settingsState(): SettingsState {
    return this.settings?.state ?? { agreed: true }
  }

  /** Whether Redis answers, for `/readyz`. */
  get redisState(): RedisState {
    return this.state
  }

  /** False while forwards are refused at once, Redis not answering (see `UpdateRouter.forwarding`). */
  get forwarding(): boolean {
    return this.state.ready
  }

  private redisFailed(error: Error): void {
    if (this.state.ready || this.state.error === undefined)
      this.options.log.error(
        { err: error },
        "Redis is failing: changes to documents this relay does not order are refused",
      )
    if (this.state.ready || this.state.error === undefined)
      this.state = { ready: false, error: error.message, since: Date.now() }
  }

  private relayChannel(id: string): string {
    return `${this.prefix}relay:${id}`
  }

  private docChannel(name: string): string {
    return `${this.prefix}doc:${name}`
  }

  /** Every relay's purges, for every relay: any of them may hold a document's events (see {@link purged}). */
  private purgesChannel(): string {
    return `${this.prefix}purges`
  }

  // --- UpdateRouter

  attach(core: RoutedCore): void {
    this.core = core
  }

  async loaded(host: DocumentHost): Promise<void> {
    this.hosts.set(host.key, host)
    try {
      // Bounded: while Redis is away the subscription waits for it (and is made on reconnect), the load does not.
      await Promise.race([this.sub.subscribe(this.docChannel(host.key)), sleep(1000)])
    } catch (error) {
      // Followed from storage instead: every forwarded change reads what it lacks before its ack.
      this.options.log.warn({ err: error, doc: host.key }, "could not follow the document over Redis")
    }
    // What was stored between this relay's read and its subscription.
    await this.core!.applyRemote(host, "fetch")
  }

  unloaded(host: DocumentHost): void {
    if (this.hosts.get(host.key) !== host) return
    this.hosts.delete(host.key)
    void this.sub.unsubscribe(this.docChannel(host.key)).catch(() => undefined)
    // The lease stays until the sweep finds nothing owed for it: its hooks may still be delivering.
  }

  /**
   * Every `intervalMs`: takes over documents the outbox owes deliveries for
   * that no relay orders (their owner died, or let them go), so that they are
   * delivered without waiting for their next change; and gives up the leases
   * of documents this relay neither has loaded nor owes anything for.
   */
  startSweeping(outbox: Outbox | undefined, intervalMs = 2000): void {
    this.sweeper = setInterval(() => {
      // Stock providers connected here to documents another relay orders, told again while they stay.
      if (Date.now() - this.stockNoticeAt >= STOCK_NOTICE_MS) {
        this.stockNoticeAt = Date.now()
        for (const host of this.hosts.values())
          if ([...host.connections].some((connection) => !connection.session.wantsParley))
            this.stockProvider(host.key)
      }
      if (this.sweeping || this.closed) return
      this.sweeping = true
      this.sweep(outbox)
        .catch((error: unknown) => this.options.log.warn({ err: error }, "cluster sweep failed"))
        .finally(() => {
          this.sweeping = false
        })
    }, intervalMs)
    this.sweeper.unref()
  }

  private sweeps = 0
  /** When stock providers connected here were last told to the relays that order their documents. */
  private stockNoticeAt = 0

  private async sweep(outbox: Outbox | undefined): Promise<void> {
    // Documents owed deliveries, or whose stored log runs past their recorded events (an owner
    // died between storing a change and recording its events): a relay takes over each ownerless one.
    // `behind` reads one row per document the outbox knows: every 15th sweep (30 s by default), not every one.
    const lagging = this.sweeps++ % BEHIND_EVERY_SWEEPS === 0 ? ((await outbox?.behind()) ?? []) : []
    const owed = new Set([...((await outbox?.pendingDocuments()) ?? []), ...lagging])
    for (const name of owed) {
      if (this.owns(name) || this.takingOver.has(name)) continue
      if ((await this.leases.holder(name)) === null) await this.takeOver(name)
    }
    // Conversations a purge may be owed for (a relay killed between a deletion and its purge, or
    // stopped while storage failed): the relay that orders one, or takes it over when no relay does,
    // loads it, and the load finds and runs the purge (relay README, "A purge cut short").
    // Unreadable (storage failing): the records stay for a later sweep, and the leases below are
    // still let go; a released conversation that owes a purge is found again from its record.
    const purgesOwed = await this.core!.owedPurges().catch((error: unknown) => {
      this.options.log.warn({ err: error }, "could not read which conversations owe a purge")
      return []
    })
    for (const name of purgesOwed) {
      owed.add(name)
      if (this.hosts.has(name) || this.takingOver.has(name)) continue
      if (!this.owns(name) && !((await this.leases.holder(name)) === null && (await this.takeOver(name))))
        continue
      await this.core!.finishOwedPurges(name).catch((error: unknown) => {
        // A damaged document is refused until an operator restores it: not worth a line every sweep.
        if (!(error instanceof ParleyError && error.code === ErrorCode.DAMAGED))
          this.options.log.warn({ err: error, doc: name }, "could not load a document that may owe a purge")
      })
    }
    for (const name of this.leases.names)
      if (
        !this.hosts.has(name) &&
        !owed.has(name) &&
        !this.takingOver.has(name) &&
        !this.retryingTakeover.has(name) &&
        !this.chains.has(name)
      )
        await this.leases.release(name)
  }

  owns(name: string): boolean {
    return this.leases.tokenOf(name) !== undefined
  }

  tokenOf(name: string): number | undefined {
    return this.leases.tokenOf(name)
  }

  stored(name: string, entries: readonly WireEntry[]): void {
    const message = encodeClusterMessage({ type: "stored", from: this.relayId, name, entries })
    this.redis.publish(this.docChannel(name), Buffer.from(message)).catch((error: unknown) => {
      // The others read it from PostgreSQL at their next gap or forwarded change.
      this.options.log.warn({ err: error, doc: name }, "could not publish a stored change")
    })
  }

  /**
   * A purge ran here: the other relays drop what they hold of the content
   * too. Deliveries of a document's events outlive its lease on the relay
   * that recorded them (push notifications a failing device waits with, a
   * slow webhook's backlog, an event stream's batch), and only the relay that
   * ran the purge was told. At most once, as Redis publishes: a relay that
   * misses it (Redis away) keeps what it held, as before.
   */
  purged(purge: PurgedContent): void {
    if (this.closed) return
    const message = encodeClusterMessage({ type: "purged", from: this.relayId, purge })
    this.redis.publish(this.purgesChannel(), Buffer.from(message)).catch((error: unknown) => {
      this.options.log.warn({ err: error, doc: purge.name }, "could not tell the other relays of a purge")
    })
  }

  /**
   * A fresh epoch of `name` is stored here: the other relays drop their
   * copies (of the old epoch, which the new one's changes do not apply to:
   * their clients' writes were refused as depending on missing changes,
   * for good). At most once, as Redis publishes; a relay that misses it
   * finds the new epoch at its next read from storage (see `applyRemote`).
   */
  epochStarted(name: string): void {
    if (this.closed) return
    const message = encodeClusterMessage({ type: "epoch", from: this.relayId, name })
    this.redis.publish(this.docChannel(name), Buffer.from(message)).catch((error: unknown) => {
      this.options.log.warn({ err: error, doc: name }, "could not tell the other relays of a fresh epoch")
    })
  }

  /**
   * A stock provider connected to `name` here, or left it: told to the relay
   * that orders it (every relay holding it hears it), and again every
   * {@link STOCK_NOTICE_MS} while one stays (see {@link startSweeping}).
   */
  stockProvider(name: string): void {
    if (this.closed || this.owns(name)) return
    const message = encodeClusterMessage({ type: "stock", from: this.relayId, name })
    this.redis.publish(this.docChannel(name), Buffer.from(message)).catch(() => undefined)
  }

  awareness(host: DocumentHost, update: Uint8Array): void {
    if (this.closed) return
    const message = encodeClusterMessage({ type: "awareness", from: this.relayId, name: host.key, update })
    this.redis.publish(this.docChannel(host.key), Buffer.from(message)).catch(() => undefined)
  }

  async submit(
    host: DocumentHost,
    principal: Principal,
    update: Uint8Array,
    connection: HostedConnection,
    seen: ReplicaView,
    local: () => Promise<unknown>,
  ): Promise<unknown> {
    // A reconnecting client's sync step 2 usually brings nothing new: answered here, nothing to order.
    if (inspectUpdate(host.doc, update).noop) return local()
    const queued = performance.now()
    return this.inOrder(host.key, principal, async () => {
      const through = await this.route(host, "client", principal, update, local, { seen })
      if (through === undefined) return
      await this.reach(host, through)
      connection.saved()
      this.metrics.routeSeconds.observe((performance.now() - queued) / 1000)
    })
  }

  /**
   * Runs the changes of one document that reach this relay one after the
   * other, each writer's in arrival order, wherever they are ordered. A
   * client's updates build on each other (each continues its Yjs clock): if
   * a retry after a failover overtook an earlier one, the owner would refuse
   * it as depending on changes it does not have. Writers take turns (see
   * `FairQueue`): another writer's change never depends on one waiting here,
   * since this relay's clients see a change only once its owner stored it.
   * The cost: this relay has one change per document in flight at a time
   * (its latency bounds the relay's rate for one conversation; other relays
   * and other conversations run in parallel).
   */
  private inOrder<T>(name: string, writer: Principal, run: () => Promise<T>): Promise<T> {
    let chain = this.chains.get(name)
    if (!chain) {
      chain = new FairQueue()
      this.chains.set(name, chain)
    }
    const queue = chain
    // Writers take turns (see `FairQueue`); each one's changes keep their order.
    const next = queue.add(describePrincipal(writer), run)
    const forget = () => {
      if (!queue.busy && this.chains.get(name) === queue) this.chains.delete(name)
    }
    // After the queue's own step: it is idle once its last task settled.
    void next.then(
      () => setImmediate(forget),
      () => setImmediate(forget),
    )
    return next
  }

  async write(
    host: DocumentHost,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    local: () => Promise<unknown>,
    options: ServerWriteOptions = {},
  ): Promise<void> {
    return this.inOrder(host.key, actor, () => this.writeInOrder(host, actor, change, local, options))
  }

  private async writeInOrder(
    host: DocumentHost,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    local: () => Promise<unknown>,
    options: ServerWriteOptions,
  ): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.writeOnce(host, actor, change, local, options)
        return
      } catch (error) {
        // Its checks read a copy older than the owner's document (another relay's change to it not
        // here yet): made again, on a copy holding what the owner stored.
        if (!(error instanceof ParleyError && error.rule === STALE_COPY)) throw error
        if (attempt >= STALE_COPY_ATTEMPTS)
          throw new ParleyError(
            ErrorCode.UNAVAILABLE,
            `the document changed while this write was made, ${attempt} times: nothing was stored, retry`,
            { rule: STALE_COPY, cause: error },
          )
        this.metrics.forwarded.inc({ outcome: "stale-copy" })
        await this.core!.applyRemote(host, "fetch")
        await sleep(Math.min(20 * attempt, 100))
      }
    }
  }

  private async writeOnce(
    host: DocumentHost,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    local: () => Promise<unknown>,
    options: ServerWriteOptions,
  ): Promise<void> {
    if (this.owns(host.key) || (await this.takeOver(host.key))) {
      await local()
      return
    }
    // Written on a copy of this relay's replica and ordered by the owner, under a client id of the
    // writer's for this load: for the relay too, never the replica's own. This relay writes under that
    // one in memory (derived data, `DerivedWrites`) while the copy is on its way, from the replica's
    // clock, which does not hold the copy's items: the same ids for other items, and the owner's change
    // skipped here as known when it comes back. (Its items coming back would also make Yjs give the
    // replica a new client id, one more per forwarded write.)
    const replica = host.doc
    // Derived data in memory only (never stored by a relay that does not order the document): the
    // change may build on it (an entry it replaces or removes), so it goes along, else the owner holds
    // the change pending on items it never gets and stores nothing.
    const unstored = this.core!.unstoredSince(host)
    const copy = new Y.Doc(RELAY_DOC_OPTIONS)
    let failure: unknown
    let update: Uint8Array | undefined
    let base: Uint8Array | undefined
    try {
      Y.applyUpdate(copy, Y.encodeStateAsUpdate(replica))
      // What the change's checks (exists? a participant? the same message?) read: the owner refuses the
      // write if its document holds more, or two relays' copies of an empty document would both create it.
      // The relay's own derived writes (inbox entries recomputed from their conversations) check nothing
      // a later recomputation would not put right: not held to it, so that busy inboxes do not retry.
      // Nor a change whose every check the owner's rules make again (see `ServerWriteOptions`).
      if (actor.kind !== "relay" && !options.checkedByRules) base = Y.encodeStateVector(copy)
      copy.clientID = host.clientIdFor(actor)
      const updates: Uint8Array[] = []
      copy.on("update", (u: Uint8Array) => updates.push(u))
      try {
        copy.transact(() => change(copy), actor)
      } catch (error) {
        failure = error
      }
      if (updates.length > 0)
        update = unstored
          ? Y.encodeStateAsUpdate(copy, unstored)
          : updates.length === 1
            ? updates[0]
            : Y.mergeUpdates(updates)
    } finally {
      copy.destroy()
    }
    if (update) {
      try {
        const through = await this.route(host, "server", actor, update, local, base ? { base } : {})
        if (through !== undefined) await this.reach(host, through)
      } catch (error) {
        // The owner may have stored the copy all the same (a reply lost, its change not read back
        // here): this replica does not hold those items, and the next copy made from it would give
        // new items their ids, which the owner would skip as known — a write lost without a word.
        // (Not after a stale-copy refusal: the owner stored nothing.)
        if (!(error instanceof ParleyError && error.rule === STALE_COPY)) host.retireClientIdFor(actor)
        throw error
      }
    }
    if (failure !== undefined) throw failure
  }

  /**
   * Runs `local` when this relay orders the document (taking its lease when
   * free), else forwards the change to the owner; resolves with the owner's
   * log position after it (undefined when it ran here).
   */
  private async route(
    host: DocumentHost,
    kind: "client" | "server",
    principal: Principal,
    update: Uint8Array,
    local: () => Promise<unknown>,
    extra: { readonly base?: Uint8Array; readonly seen?: ReplicaView } = {},
  ): Promise<number | undefined> {
    const deadline = Date.now() + this.options.writeDeadlineMs
    const name = host.key
    while (!this.closed) {
      if (this.owns(name)) {
        await local()
        return undefined
      }
      // Forwarding needs Redis: while its probe fails, refused at once (retryable), not after each
      // forward's own command timeout with the document's later changes waiting behind it.
      if (!this.state.ready)
        throw new ParleyError(
          ErrorCode.UNAVAILABLE,
          "Redis is not answering: the change was not stored, retry",
        )
      let holder: string | null
      try {
        holder = await this.leases.holder(name)
      } catch (cause) {
        throw new ParleyError(
          ErrorCode.UNAVAILABLE,
          "Redis is not answering: the change was not stored, retry",
          {
            cause,
          },
        )
      }
      if (holder === null || holder === this.relayId) {
        if (await this.takeOver(name)) continue
      } else {
        const reply = await this.forward(holder, { name, kind, principal, update, ...extra })
        if (reply?.error) {
          // UNAVAILABLE: that relay no longer orders it (or is stopping); anything else is the answer,
          // and so is an UNAVAILABLE the owner's rules gave (`missing-changes`: the sender is to resend).
          if (reply.error.code !== ErrorCode.UNAVAILABLE || reply.error.rule !== undefined) {
            this.metrics.forwarded.inc({ outcome: "refused" })
            throw new ParleyError(reply.error.code, reply.error.message, {
              ...(reply.error.rule ? { rule: reply.error.rule as never } : {}),
            })
          }
          this.metrics.forwarded.inc({ outcome: "not-owner" })
        } else if (reply?.through !== undefined) {
          this.metrics.forwarded.inc({ outcome: "stored" })
          return reply.through
        }
      }
      if (Date.now() >= deadline) break
      await sleep(Math.min(100, this.options.leaseMs / 10))
    }
    throw new ParleyError(ErrorCode.UNAVAILABLE, "no relay could order this document in time: retry")
  }

  /** Takes the document's lease when free; then catches up and runs what a new owner owes. */
  private takeOver(name: string): Promise<boolean> {
    let running = this.takingOver.get(name)
    if (!running) {
      running = (async () => {
        const token = await this.leases.acquire(name).catch((error: unknown) => {
          this.options.log.warn({ err: error, doc: name }, "could not take the document's lease")
          return undefined
        })
        if (token === undefined) return false
        // Told before anything else runs: from here on a change may be ordered here (`owns`), and what
        // its hooks record must come after what the takeover recovers from the log.
        const ended = this.core!.claimed(name)
        try {
          await this.finishTakeover(name)
        } catch (error) {
          // The lease is this relay's: nobody else derives what the last owner left unrecorded, and a
          // record of a change ordered here would move the watermark past it (lost for good). So the
          // takeover is tried again while the lease lasts, the document's records still held behind it.
          this.finishTakeoverLater(name, token, ended, error)
          throw error
        }
        ended()
        this.metrics.tookOver.inc()
        this.options.log.info({ doc: name, token }, "ordering the document")
        return true
      })().finally(() => this.takingOver.delete(name))
      this.takingOver.set(name, running)
    }
    return running
  }

  /** A takeover's work once the lease is taken: this relay's copy caught up, then the core's takeover. */
  private async finishTakeover(name: string): Promise<void> {
    const recordedThrough = this.leases.recordedAtClaim(name)
    const host = this.hosts.get(name)
    if (host) await this.core!.applyRemote(host, "fetch")
    await this.core!.tookOver(name, recordedThrough !== undefined ? { recordedThrough } : {})
  }

  /**
   * Tries a failed takeover (a storage error after the claim) again, with backoff, until it succeeds
   * or the lease it was made under is gone (lost, given up, or the relay closes); only then is
   * `ended` called, which lets the document's records held since the claim go on.
   */
  private finishTakeoverLater(name: string, token: number, ended: () => void, error: unknown): void {
    const attempt = { token }
    this.retryingTakeover.set(name, attempt)
    const held = () =>
      !this.closed && this.retryingTakeover.get(name) === attempt && this.leases.heldOf(name)?.token === token
    void (async () => {
      this.options.log.error({ err: error, doc: name }, "a takeover failed: trying it again")
      for (let tries = 1, delay = TAKEOVER_RETRY_MS; held(); tries++) {
        await sleep(delay)
        delay = Math.min(delay * 2, TAKEOVER_RETRY_MAX_MS)
        if (!held()) break
        try {
          await this.finishTakeover(name)
          this.metrics.tookOver.inc()
          this.options.log.info({ doc: name, token, attempts: tries + 1 }, "ordering the document")
          break
        } catch (next) {
          this.options.log.warn({ err: next, doc: name, attempts: tries + 1 }, "a takeover failed again")
        }
      }
      if (this.retryingTakeover.get(name) === attempt) this.retryingTakeover.delete(name)
      ended()
    })()
  }

  private forward(
    holder: string,
    request: Pick<
      Extract<ClusterMessage, { type: "request" }>,
      "name" | "kind" | "principal" | "update" | "base"
    >,
  ): Promise<Extract<ClusterMessage, { type: "reply" }> | undefined> {
    const id = randomUUID()
    const message = encodeClusterMessage({ type: "request", id, replyTo: this.relayId, ...request })
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id)
        // Retried after a look at the lease: frequent ones mean a slow (starved) owner or a lost one.
        this.options.log.warn(
          { doc: request.name, owner: holder, timeoutMs: this.options.forwardTimeoutMs },
          "a forwarded change got no answer in time: retrying",
        )
        this.metrics.forwarded.inc({ outcome: "unanswered" })
        resolve(undefined)
      }, this.options.forwardTimeoutMs)
      this.waiting.set(id, { resolve, timer })
      this.redis.publish(this.relayChannel(holder), Buffer.from(message)).then(
        (receivers) => {
          // Nobody listens on a dead relay's channel: look at the lease again at once.
          if (receivers === 0 && this.waiting.delete(id)) {
            clearTimeout(timer)
            this.metrics.forwarded.inc({ outcome: "no-receiver" })
            resolve(undefined)
          }
        },
        () => {
          if (this.waiting.delete(id)) {
            clearTimeout(timer)
            this.metrics.forwarded.inc({ outcome: "unpublished" })
            resolve(undefined)
          }
        },
      )
    })
  }

  /** Resolves once this relay's copy of `host` holds everything through `position`. */
  private async reach(host: DocumentHost, position: number): Promise<void> {
    if (host.lastPosition >= position || host.destroyed) return
    await new Promise<void>((resolve) => {
      let set = this.reached.get(host.key)
      if (!set) {
        set = new Set()
        this.reached.set(host.key, set)
      }
      const done = () => {
        clearTimeout(timer)
        set!.delete(check)
        if (set!.size === 0 && this.reached.get(host.key) === set) this.reached.delete(host.key)
        resolve()
      }
      const check = () => {
        if (host.lastPosition >= position || host.destroyed) done()
      }
      // The published change is late or lost: read it from PostgreSQL.
      const timer = setTimeout(() => {
        void this.core!.applyRemote(host, "fetch").finally(done)
      }, 500)
      set.add(check)
    })
    if (host.lastPosition < position && !host.destroyed)
      throw new ParleyError(ErrorCode.UNAVAILABLE, "the stored change could not be read back: retry")
  }

  private received(bytes: Buffer): void {
    let message: ClusterMessage
    try {
      message = decodeClusterMessage(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength))
    } catch (error) {
      this.options.log.error({ err: error }, "dropped a cluster message")
      return
    }
    switch (message.type) {
      case "stored": {
        if (message.from === this.relayId) return
        const host = this.hosts.get(message.name)
        if (!host) return
        void this.core!.applyRemote(host, message.entries).then(
          () => this.notifyReached(host),
          (error: unknown) =>
            this.options.log.error({ err: error, doc: host.key }, "could not apply a stored change"),
        )
        return
      }
      case "awareness": {
        if (message.from === this.relayId) return
        const host = this.hosts.get(message.name)
        if (host) {
          try {
            this.core!.applyAwareness(host, message.update)
          } catch (error) {
            this.options.log.warn({ err: error, doc: host.key }, "dropped another relay's awareness update")
          }
        }
        return
      }
      case "purged":
        if (message.from !== this.relayId) this.core?.purgedElsewhere(message.purge)
        return
      case "stock":
        if (message.from !== this.relayId) this.core?.stockProviderElsewhere(message.name)
        return
      case "epoch": {
        if (message.from === this.relayId) return
        const host = this.hosts.get(message.name)
        if (host)
          void this.core!.epochElsewhere(host).catch((error: unknown) =>
            this.options.log.error(
              { err: error, doc: host.key },
              "could not drop a document of an old epoch",
            ),
          )
        return
      }
      case "request":
        void this.answer(message)
        return
      case "reply": {
        const waiting = this.waiting.get(message.id)
        if (!waiting) return
        this.waiting.delete(message.id)
        clearTimeout(waiting.timer)
        waiting.resolve(message)
        return
      }
    }
  }

  private notifyReached(host: DocumentHost): void {
    for (const check of [...(this.reached.get(host.key) ?? [])]) check()
  }

  /** The owner's side of a forwarded change. */
  private async answer(request: Extract<ClusterMessage, { type: "request" }>): Promise<void> {
    let reply: ClusterMessage
    if (!this.owns(request.name)) {
      this.metrics.answered.inc({ outcome: "not-owner" })
      reply = {
        type: "reply",
        id: request.id,
        error: { code: ErrorCode.UNAVAILABLE, message: "not the owner" },
      }
    } else {
      try {
        const through =
          request.kind === "client"
            ? await this.core!.submitForwarded(request.name, request.principal, request.update, request.seen)
            : await this.core!.writeForwarded(request.name, request.principal, request.update, request.base)
        reply = { type: "reply", id: request.id, through }
        this.metrics.answered.inc({ outcome: "stored" })
      } catch (cause) {
        this.metrics.answered.inc({ outcome: "refused" })
        const error = toParleyError(cause)
        reply = {
          type: "reply",
          id: request.id,
          error: { code: error.code, message: error.message, ...(error.rule ? { rule: error.rule } : {}) },
        }
      }
    }
    await this.redis
      .publish(this.relayChannel(request.replyTo), Buffer.from(encodeClusterMessage(reply)))
      .catch((error: unknown) => this.options.log.warn({ err: error }, "could not answer a forwarded change"))
  }

  /**
   * Counts each user's per-user limits across the cluster: `ledger` (the
   * core's) learns what the user holds and spends on the other relays.
   */
  async shareUsage(ledger: UserLedger, intervalMs?: number): Promise<void> {
    const channel = `${this.prefix}usage`
    this.usage = new ClusterUsage(this.redis, channel, this.relayId, ledger, this.options.log, intervalMs)
    await this.sub.subscribe(channel)
  }

  /**
   * Lets this relay's leases lapse while its storage has failed for longer
   * than {@link STORAGE_FAILING_LEASE_MS}, and renews again once it answers:
   * a relay cut off from PostgreSQL alone (its network, its pool) cannot store
   * what it orders, and while it renewed its leases the other relays, whose
   * storage answers, refused every write to its conversations for the whole
   * partition (an outside probe: 25 s, peers' messages 15 s late at the
   * median). Fencing keeps the lapsed holder's late writes out either way.
   */
  followStorage(state: () => StorageState): void {
    let paused = false
    this.storageWatch = setInterval(() => {
      const now = state()
      const failingFor = now.state === "failing" ? Date.now() - now.since : 0
      if (!paused && failingFor > Math.max(STORAGE_FAILING_LEASE_MS, this.options.leaseMs)) {
        paused = true
        this.leases.pauseRenewals()
        this.options.log.warn(
          { failingForMs: failingFor, leases: this.leases.names.length },
          "storage failing: lease renewals paused, so that relays whose storage answers take this relay's documents",
        )
      } else if (paused && now.state === "ok") {
        paused = false
        this.leases.resumeRenewals()
        this.options.log.info("storage answers again: lease renewals resumed")
      }
    }, 250)
    this.storageWatch.unref()
  }

  /** Gives up every lease and leaves Redis. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.storageWatch)
    clearInterval(this.sweeper)
    clearInterval(this.pinger)
    this.usage?.close()
    await this.settings?.close()
    await this.presence.close()
    await this.leases.close().catch(() => undefined)
    for (const waiting of this.waiting.values()) clearTimeout(waiting.timer)
    this.redis.disconnect()
    this.sub.disconnect()
  }
}
