import { createRequire } from "node:module"
import { pathToFileURL } from "node:url"
import { Worker } from "node:worker_threads"
import type { Logger } from "../log.js"

/**
 * The renewing thread's code. Plain JavaScript, evaluated (not a module file):
 * the relay may run from its TypeScript sources, whose loader a worker thread
 * does not inherit. It imports ioredis by the path the main thread resolved.
 */
const WORKER_SOURCE = `(async () => {
  const { parentPort, workerData } = await import("node:worker_threads")
  const loaded = await import(workerData.ioredis)
  const Redis = loaded.Redis ?? loaded.default?.Redis ?? loaded.default
  const { url, ttlMs, marginMs, maxStallMs, keyPrefix, relayId, script } = workerData
  const beat = new BigInt64Array(workerData.heartbeat)
  const paused = new Int32Array(workerData.paused)
  const redis = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    // A renewal answered after the lease could have lapsed is worth nothing, and one that never
    // answers (a black-holed connection) would hold \`renewing\` and stop every later renewal.
    commandTimeout: ttlMs,
    retryStrategy: (times) => Math.min(times * 100, 1000),
  })
  redis.on("error", () => {})
  redis.once("ready", () => parentPort.postMessage({ type: "ready" }))
  const held = new Map()
  let stalled = false
  let renewing = false
  let rounds = 0
  const renew = async () => {
    if (renewing || held.size === 0) return
    const sentAt = Date.now()
    const age = sentAt - Number(Atomics.load(beat, 0))
    if (age > maxStallMs) {
      if (!stalled) parentPort.postMessage({ type: "stalled", ms: age, leases: held.size })
      stalled = true
      return
    }
    stalled = false
    // The relay's storage fails: its leases lapse, so that a relay whose storage answers takes them.
    if (Atomics.load(paused, 0) === 1) return
    renewing = true
    const entries = [...held]
    const pipeline = redis.pipeline()
    for (const [name] of entries) pipeline.eval(script, 1, keyPrefix + name, relayId, ttlMs)
    // Last, a word of this round's own: Redis answers in order, so a connection that lost a reply on the
    // way (every later one answering the command before it) does not echo it, and none of the answers count.
    const word = String(++rounds)
    pipeline.ping(word)
    let results
    try {
      results = await pipeline.exec()
    } catch (error) {
      parentPort.postMessage({ type: "failed", error: String(error && error.message ? error.message : error) })
      return
    } finally {
      renewing = false
    }
    const echoed = results && results[entries.length]
    if (!echoed || echoed[0] || echoed[1] !== word) {
      // Replaced by a fresh connection (ioredis reconnects as after any drop): this one's replies are out of step,
      // or a command timed out on it.
      if (redis.status === "ready") redis.stream.destroy()
      parentPort.postMessage({ type: "failed", error: "Redis's replies could not be trusted: reconnecting" })
      return
    }
    entries.forEach(([name, lease], i) => {
      const answer = results && results[i]
      if (!answer || answer[0]) return
      if (held.get(name) !== lease) return
      if (answer[1] === 1) Atomics.store(lease.slot, 0, BigInt(sentAt + ttlMs - marginMs))
      else {
        held.delete(name)
        parentPort.postMessage({ type: "lost", name, generation: lease.generation })
      }
    })
  }
  const timer = setInterval(() => void renew(), workerData.everyMs)
  parentPort.on("message", (message) => {
    if (message.type === "hold")
      held.set(message.name, { generation: message.generation, slot: new BigInt64Array(message.slot) })
    else if (message.type === "drop") {
      if (held.get(message.name)?.generation === message.generation) held.delete(message.name)
    } else if (message.type === "close") {
      clearInterval(timer)
      redis.disconnect()
      parentPort.close()
    }
  })
})()`

/** How {@link LeaseRenewer} renews. */
export interface LeaseRenewerOptions {
  readonly redisUrl: string
  /** Prefix of the lease keys (the document's name follows). */
  readonly keyPrefix: string
  readonly relayId: string
  readonly ttlMs: number
  /** Subtracted from a renewed lease's expiry: the holder stops writing that much early. */
  readonly marginMs: number
  /** The renewal script (`RENEW` of `leases.ts`): extends the key while it holds `relayId`. */
  readonly script: string
  /** Renewals stop once the main thread's heartbeat is older than this (ms). */
  readonly maxStallMs: number
  readonly log: Logger
  /** A held lease was found taken or expired in Redis. */
  readonly lost: (name: string, generation: number) => void
}

/** One held lease as the renewer shares it: its expiry by this relay's clock, written by the renewing thread. */
export interface SharedLease {
  readonly generation: number
  /** `[0]`: until when (ms since epoch) the holder may write under it. */
  readonly validUntil: BigInt64Array
}

/**
 * Renews this relay's leases from a worker thread with its own Redis
 * connection, so that a relay whose event loop is busy (CPU starvation, a
 * burst of work) keeps its documents. The main thread writes a heartbeat into
 * shared memory every few milliseconds; the worker renews only while that
 * heartbeat is at most `maxStallMs` old, so a relay whose event loop hangs
 * loses its leases after `maxStallMs` + one lease lifetime. A killed process
 * takes the worker with it: its leases expire after one lifetime, as before.
 * Renewed expiries go to shared memory (`Atomics`): the main thread sees them
 * at once, without waiting for a message to be processed.
 */
export class LeaseRenewer {
  private readonly worker: Worker
  private readonly heartbeat = new BigInt64Array(new SharedArrayBuffer(8))
  /** `[0]` is 1 while renewals are paused (see {@link pause}). */
  private readonly paused = new Int32Array(new SharedArrayBuffer(4))
  private readonly beating: NodeJS.Timeout
  private generations = 0
  private stallReported = 0
  private readonly started: Promise<void>
  private markStarted: (() => void) | undefined

  constructor(private readonly options: LeaseRenewerOptions) {
    Atomics.store(this.heartbeat, 0, BigInt(Date.now()))
    this.started = new Promise((resolve) => {
      this.markStarted = resolve
    })
    const ioredis = pathToFileURL(createRequire(import.meta.url).resolve("ioredis")).href
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        ioredis,
        url: options.redisUrl,
        ttlMs: options.ttlMs,
        marginMs: options.marginMs,
        maxStallMs: options.maxStallMs,
        keyPrefix: options.keyPrefix,
        relayId: options.relayId,
        script: options.script,
        heartbeat: this.heartbeat.buffer,
        paused: this.paused.buffer,
        everyMs: Math.max(50, Math.floor(options.ttlMs / 3)),
      },
      // Its stdout and stderr are the process's own; no module flags of the main thread apply to it.
      execArgv: [],
    })
    this.worker.unref()
    this.worker.on("message", (message: RenewerMessage) => this.heard(message))
    this.worker.on("error", (error) => {
      // Leases then lapse by their own clock: writes stop, other relays take the documents over.
      options.log.error({ err: error }, "the lease renewal thread failed: this relay's leases will lapse")
    })
    this.beating = setInterval(
      () => Atomics.store(this.heartbeat, 0, BigInt(Date.now())),
      Math.max(10, Math.min(100, Math.floor(options.ttlMs / 15))),
    )
    this.beating.unref()
  }

  /**
   * Resolves once the renewing thread runs and reaches Redis; a lease taken
   * before may lapse while the thread starts (a busy machine takes a while).
   */
  ready(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    return Promise.race([
      this.started,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`the lease renewal thread did not reach Redis within ${timeoutMs} ms`)),
          timeoutMs,
        )
      }),
    ]).finally(() => clearTimeout(timer))
  }

  /**
   * Stops renewing every lease (they lapse after their lifetime) until
   * {@link resume}: for a relay that can no longer store what it orders.
   */
  pause(): void {
    Atomics.store(this.paused, 0, 1)
  }

  /** Renews again (leases another relay took meanwhile are found lost at the next renewal). */
  resume(): void {
    Atomics.store(this.paused, 0, 0)
  }

  /** Starts renewing `name` (whose lease is valid until `validUntil`); returns what the renewer shares. */
  hold(name: string, validUntil: number): SharedLease {
    const lease = { generation: ++this.generations, validUntil: new BigInt64Array(new SharedArrayBuffer(8)) }
    Atomics.store(lease.validUntil, 0, BigInt(validUntil))
    this.worker.postMessage({
      type: "hold",
      name,
      generation: lease.generation,
      slot: lease.validUntil.buffer,
    })
    return lease
  }

  /** Stops renewing `name` (its lease of that generation). */
  drop(name: string, lease: SharedLease): void {
    this.worker.postMessage({ type: "drop", name, generation: lease.generation })
  }

  private heard(message: RenewerMessage): void {
    switch (message.type) {
      case "ready":
        this.markStarted?.()
        return
      case "lost":
        this.options.lost(message.name, message.generation)
        return
      case "stalled":
        if (Date.now() - this.stallReported < 10_000) return
        this.stallReported = Date.now()
        this.options.log.warn(
          { stalledMs: message.ms, leases: message.leases },
          "the event loop did not answer in time: lease renewals paused, other relays will take its documents",
        )
        return
      case "failed":
        this.options.log.warn({ error: message.error }, "could not renew document leases")
        return
    }
  }

  /** Stops the thread. */
  async close(): Promise<void> {
    clearInterval(this.beating)
    this.worker.postMessage({ type: "close" })
    await this.worker.terminate()
  }
}

type RenewerMessage =
  | { readonly type: "ready" }
  | { readonly type: "lost"; readonly name: string; readonly generation: number }
  | { readonly type: "stalled"; readonly ms: number; readonly leases: number }
  | { readonly type: "failed"; readonly error: string }
