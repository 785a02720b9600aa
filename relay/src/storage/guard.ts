import { ErrorCode, ParleyError } from "@parley/shared"
import type { DamagedDocument, PingOptions, RelayStorage, StoredDocument } from "./types.js"

/** Default of every storage timeout, relay-side and PostgreSQL's, in ms (`--storage-timeout-ms`). */
export const DEFAULT_STORAGE_TIMEOUT_MS = 5000

/**
 * Longest a write may wait for the backend, with nothing asked of it since
 * answered, before the relay reports not ready (capped at half the storage
 * timeout): above PostgreSQL's lock wait for appends (1 s), so a conversation
 * whose row another session holds does not make the relay look stalled.
 */
export const STALL_MS = 2000

/** How often a relay probes its storage while it answers (see {@link StorageGuardOptions.watchIntervalMs}), in ms. */
export const DEFAULT_WATCH_INTERVAL_MS = 2000

/** Whether the storage answers, as {@link StorageGuard} last found it. */
export type StorageState =
  | { readonly state: "ok" }
  | {
      readonly state: "failing"
      readonly error: ParleyError
      readonly since: number
      /**
       * Whether reads are still served: true while only writes failed (a full
       * disk), false once a read failed too (a database that does not answer).
       */
      readonly reads: boolean
    }

/** How a {@link StorageGuard} bounds and watches its storage. */
export interface StorageGuardOptions {
  /** Longest a storage call may take before it counts as failed, in ms. */
  readonly timeoutMs: number
  /** First wait between probes while failing, in ms; it doubles up to {@link maxProbeIntervalMs}. Default 100. */
  readonly probeIntervalMs?: number
  /** Longest wait between probes, in ms. Default 2000. */
  readonly maxProbeIntervalMs?: number
  /**
   * While storage answers, probe it every this many ms too (the backend's
   * `ping`: a write it would store), so that a storage that stopped taking
   * writes (a locked table, a read-only or standby server) is found failing
   * without waiting for an append to time out, and writes are refused at
   * once. Off when absent; the relay sets {@link DEFAULT_WATCH_INTERVAL_MS}.
   */
  readonly watchIntervalMs?: number
  /** Hears every change of state (for logs and metrics). */
  readonly onChange?: (state: StorageState) => void
  /**
   * Whether a backend's error says the database sent nothing back (a driver's
   * own read or connect timeout), as a call past its deadline does: reads are
   * then refused at once too. The backend's; absent, only deadlines count.
   */
  readonly noAnswer?: (error: unknown) => boolean
}

/** A storage failure as the relay reports it: typed, retryable, with the backend's error as its cause. */
export function storageUnavailable(message: string, cause?: unknown): ParleyError {
  return new ParleyError(ErrorCode.STORAGE_UNAVAILABLE, message, cause === undefined ? undefined : { cause })
}

/** True for errors that say the storage failed (not that a request was wrong). */
export function isStorageFailure(error: unknown): error is ParleyError {
  return error instanceof ParleyError && error.code === ErrorCode.STORAGE_UNAVAILABLE
}

/** A call waiting for its deadline in a {@link DeadlineQueue}. */
interface Waiting {
  /** When it falls due (`performance.now()`). */
  readonly due: number
  readonly expire: () => void
}

/**
 * The deadlines of calls that share one timeout, on one timer (as the hook
 * dispatcher's attempts): with the same timeout for all they fall due in the
 * order the calls began, so the timer only ever waits for the oldest still
 * running, and it is left running (never keeping the process alive) rather
 * than set and cleared per call: a timer per call was a visible part of a
 * busy relay's CPU and garbage (several storage and outbox calls per chat
 * message).
 */
class DeadlineQueue {
  /** In the order the calls began (a Set keeps insertion order), so oldest first. */
  private readonly running = new Set<Waiting>()
  private timer: NodeJS.Timeout | undefined

  constructor(private readonly ms: number) {}

  /** Calls `expire` once `ms` have passed, unless {@link settle}d first. */
  add(expire: () => void): Waiting {
    const entry: Waiting = { due: performance.now() + this.ms, expire }
    this.running.add(entry)
    if (!this.timer) this.arm(this.ms)
    return entry
  }

  settle(entry: Waiting): void {
    this.running.delete(entry)
  }

  private arm(delay: number): void {
    this.timer = setTimeout(() => this.fire(), delay)
    this.timer.unref?.()
  }

  private fire(): void {
    this.timer = undefined
    const now = performance.now()
    const due: Waiting[] = []
    for (const entry of this.running) {
      if (entry.due > now) {
        this.arm(Math.max(1, Math.ceil(entry.due - now)))
        break
      }
      due.push(entry)
    }
    if (due.length === 0) return
    // Decided after the event loop's next poll: an answer that arrived while the relay itself was
    // busy longer than the deadline (a large load, a stall) is read first, and its call is not failed.
    // With the storage probed every few seconds, such stalls would otherwise trip the breaker.
    setImmediate(() => {
      for (const entry of due) if (this.running.delete(entry)) entry.expire()
    })
  }
}

/** One queue per timeout (a relay uses one or two). */
const deadlineQueues = new Map<number, DeadlineQueue>()

function deadlineQueue(ms: number): DeadlineQueue {
  let queue = deadlineQueues.get(ms)
  if (!queue) {
    queue = new DeadlineQueue(ms)
    deadlineQueues.set(ms, queue)
  }
  return queue
}

/** Rejects with a STORAGE_UNAVAILABLE error when `promise` has not settled within `ms`. */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return settledWithin(promise, ms, () => `storage did not ${what} within ${ms} ms`)
}

/**
 * The errors of calls that got no answer by their deadline: the database does
 * not answer at all (a stopped server, a link that drops every packet), so it
 * does not answer reads either, unlike a write refused with an error (a full
 * disk, a locked table found by the probe) while reads go on.
 */
const pastDeadline = new WeakSet<ParleyError>()

/** Rejects a call before its deadline (see `settledWithin`'s `refusals`). */
export type Refusal = (error: ParleyError) => void

/**
 * `promise`, or a STORAGE_UNAVAILABLE error saying `late()` when it has not
 * settled within `ms`. Either rejection goes through `failed` when given;
 * `settled` is called once `promise` settles (after its deadline too), with
 * its error when it rejected. With
 * `refusals`, the call is in that set until it is answered, as a function
 * that rejects it at once with the error given (the guard refuses writes in
 * flight so when it finds storage failing). One promise and no timer of its
 * own per call (see {@link DeadlineQueue}).
 */
function settledWithin<T>(
  promise: Promise<T>,
  ms: number,
  late: () => string,
  failed?: (error: unknown) => unknown,
  settled?: (rejected: boolean, error?: unknown) => void,
  refusals?: Set<Refusal>,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const queue = deadlineQueue(ms)
    // Out of the set before `failed` runs: the guard's failure handling refuses what is in it.
    const refuse: Refusal = (error) => {
      refusals!.delete(refuse)
      queue.settle(entry)
      reject(error)
    }
    const entry = queue.add(() => {
      refusals?.delete(refuse)
      const error = storageUnavailable(late())
      pastDeadline.add(error)
      reject(failed ? failed(error) : error)
    })
    refusals?.add(refuse)
    promise.then(
      (value) => {
        settled?.(false)
        queue.settle(entry)
        refusals?.delete(refuse)
        resolve(value)
      },
      (error: unknown) => {
        settled?.(true, error)
        queue.settle(entry)
        refusals?.delete(refuse)
        reject(failed ? failed(error) : error)
      },
    )
  })
}

/**
 * A circuit breaker around the relay's storage. Every call gets a deadline;
 * any failure (an error of the backend, a reset connection, a full disk, a
 * call that outlived its deadline) becomes a STORAGE_UNAVAILABLE error and
 * marks the storage failing; so does a failed probe while it answers (with
 * {@link StorageGuardOptions.watchIntervalMs}: the backend's `ping`, a write
 * it would store, every few seconds). While failing, writes fail at once with
 * that error instead of each waiting for its own deadline (those in flight
 * too: they are refused when the failure is found, and still tracked until
 * they settle in the backend), and a probe (the backend's `ping`, with
 * backoff) runs until the storage answers again. One probe runs at a time:
 * none starts while another has not settled in the backend.
 * Reads are still served while only writes have failed (a full disk still
 * reads: members keep getting their conversations); once a read fails too,
 * reads fail at once as well, until the probe succeeds.
 *
 * The guard reports recovery only once every call that failed by its deadline
 * has also settled in the backend: a write the relay gave up on can then no
 * longer land behind the relay's back while it checks what was stored.
 */
export class StorageGuard implements RelayStorage {
  private current: StorageState = { state: "ok" }
  /** Backend calls not settled yet (running, or abandoned at their deadline). */
  private readonly running = new Set<Promise<unknown>>()
  private readonly waiters = new Set<{ resolve: () => void; reject: (error: unknown) => void }>()
  /** The writes not answered yet, each as a function that refuses it at once (see {@link fail}). */
  private readonly writes = new Set<Refusal>()
  /**
   * The reads not answered yet (and the calls of the stores of the same
   * database, see `withDeadlines`): refused at once when the database is
   * found answering nothing, as later ones are (see {@link refuseReads}).
   */
  private readonly reads = new Set<Refusal>()
  /** When each write (or watch probe) not settled in the backend began, oldest first (a Set keeps insertion order). */
  private readonly writesSince = new Set<{ readonly at: number }>()
  /**
   * When the latest-begun call the backend answered began (`performance.now()`), whatever the
   * answer: a write still waiting that began before it waits on something of its own (a row lock
   * while another relay takes a conversation over, the commits queued ahead of it, the pool), not
   * on a storage that stopped answering (see {@link stalledSince}).
   */
  private answeredFrom = Number.NEGATIVE_INFINITY
  private stallTimer: NodeJS.Timeout | undefined
  private probeTimer: NodeJS.Timeout | undefined
  private probeDelay: number
  private watchTimer: NodeJS.Timeout | undefined
  /**
   * The watch's probe has not settled in the backend: the next watch does not start (a recovery
   * probe waits for it, as for any call still running, before it starts its own).
   */
  private probing = false
  private closed = false

  constructor(
    private readonly inner: RelayStorage,
    private readonly options: StorageGuardOptions,
  ) {
    this.probeDelay = options.probeIntervalMs ?? 100
    if (options.watchIntervalMs !== undefined) {
      this.watchTimer = setInterval(() => void this.watch(), options.watchIntervalMs)
      this.watchTimer.unref()
      // A write that waits with nothing answered since it began gets a probe of its own well before
      // the stall bound, so that its answer (or its silence) tells the two apart even on a relay
      // where nothing else is asked meanwhile.
      this.stallTimer = setInterval(() => this.askIfStalled(), this.stallMs / 4)
      this.stallTimer.unref()
    }
  }

  /** The storage's state: `ok`, or `failing` with the last error and since when. */
  get state(): StorageState {
    return this.current
  }

  /** True unless the storage is failing (writes are then refused). */
  get available(): boolean {
    return this.current.state === "ok"
  }

  /**
   * When the oldest write still waiting for the backend began (epoch ms), if
   * it has waited longer than {@link stallMs} and the backend has answered
   * nothing asked since it began; undefined otherwise. A backend that stopped
   * answering mid-write (a stopped server process, a link that drops every
   * packet) is found failing only at the storage timeout: until then the
   * relay reports not ready for it (`/readyz`), so that a load balancer stops
   * sending it new clients seconds earlier. A write that waits while the
   * backend answers later calls (reads, other writes, a probe) waits on
   * something of its own — a row lock while a conversation's ownership moves
   * after a relay died, the commits queued ahead of it, a busy pool — and the
   * relay still serves: before, a survivor of a relay's death answered 503
   * for seconds, and a load balancer closed every session it held.
   */
  stalledSince(): number | undefined {
    const write = this.unansweredWrite()
    if (!write) return undefined
    const waited = performance.now() - write.at
    return waited > this.stallMs ? Date.now() - waited : undefined
  }

  /** The oldest write still waiting that began after every call the backend answered began. */
  private unansweredWrite(): { readonly at: number } | undefined {
    for (const write of this.writesSince) if (write.at > this.answeredFrom) return write
    return undefined
  }

  /** Probes now (one probe at a time) when a write has waited half the stall bound with nothing answered since. */
  private askIfStalled(): void {
    const write = this.unansweredWrite()
    if (write && performance.now() - write.at > this.stallMs / 2) void this.watch()
  }

  /** The backend answered a call that began at `began` (`performance.now()`). */
  private answered(began: number): void {
    if (began > this.answeredFrom) this.answeredFrom = began
  }

  /** How long a write may wait before the storage counts as stalled (see {@link stalledSince}). */
  get stallMs(): number {
    return Math.min(STALL_MS, this.options.timeoutMs / 2)
  }

  /** True while reads are served: the storage answers, or fails for writes only (a full disk). */
  get readable(): boolean {
    return this.readsServed()
  }

  /**
   * Resolves once the storage answers again (at once when it does now).
   * Rejects when `signal` aborts or the guard closes.
   */
  whenAvailable(signal?: AbortSignal): Promise<void> {
    if (this.current.state === "ok") return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        resolve: () => {
          signal?.removeEventListener("abort", abort)
          resolve()
        },
        reject: (error: unknown) => {
          signal?.removeEventListener("abort", abort)
          reject(error)
        },
      }
      const abort = () => {
        this.waiters.delete(waiter)
        reject(new ParleyError(ErrorCode.UNAVAILABLE, "the relay is shutting down"))
      }
      if (signal?.aborted) return abort()
      signal?.addEventListener("abort", abort)
      this.waiters.add(waiter)
    })
  }

  /**
   * Probes the storage once, as while it fails (a start on a full disk): a
   * failure marks it failing, and the probe then runs until it succeeds.
   * Resolves either way; see {@link state}.
   */
  async check(): Promise<void> {
    // As strict as the probe that lets writes through again: a start on a nearly full disk is one.
    await this.call("answer a probe", () => this.probeInner({ recovering: true })).catch(() => {})
  }

  load(name: string): Promise<StoredDocument> {
    return this.read("load a document", () => this.inner.load(name))
  }

  append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    return this.call("store an update", () => this.inner.append(name, updates))
  }

  /** The inner storage's search, when it has one (see {@link RelayStorage.holding}). */
  get holding(): RelayStorage["holding"] {
    const inner = this.inner
    if (!inner.holding) return undefined
    return (names, needles) => this.read("search stored documents", () => inner.holding!(names, needles))
  }

  compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    return this.call("store a snapshot", () => this.inner.compact(name, snapshot, through))
  }

  list(): Promise<string[]> {
    return this.read("list documents", () => this.inner.list())
  }

  /** Probes the backend as the watch does (a write it would store); a failure marks storage failing. */
  ping(): Promise<void> {
    return this.call("answer a probe", () => this.probeInner())
  }

  markDamaged(name: string, reason: string): Promise<void> {
    return this.call("record a damaged document", () => this.inner.markDamaged(name, reason))
  }

  damaged(): Promise<DamagedDocument[]> {
    return this.read("list damaged documents", () => this.inner.damaged())
  }

  restore(name: string, snapshot: Uint8Array): Promise<number> {
    return this.call("restore a document", () => this.inner.restore(name, snapshot))
  }

  async close(): Promise<void> {
    this.closed = true
    clearTimeout(this.probeTimer)
    this.probeTimer = undefined
    clearInterval(this.watchTimer)
    this.watchTimer = undefined
    clearInterval(this.stallTimer)
    this.stallTimer = undefined
    const error = new ParleyError(ErrorCode.UNAVAILABLE, "the relay is shutting down")
    for (const waiter of this.waiters) waiter.reject(error)
    this.waiters.clear()
    await this.inner.close()
  }

  private probeInner(options?: PingOptions): Promise<void> {
    if (!this.inner.ping) return this.inner.list().then(() => {})
    return options ? this.inner.ping(options) : this.inner.ping()
  }

  /**
   * The watch's probe while storage answers: a failure (or no answer within
   * the storage timeout) marks it failing as a failed write would. Skipped
   * while a probe still runs, so that a probe stuck on a lock cannot pile up.
   */
  private async watch(): Promise<void> {
    if (this.closed || this.probing || this.current.state !== "ok") return
    this.probing = true
    let probe: Promise<void>
    try {
      probe = this.probeInner()
    } catch (error) {
      probe = Promise.reject(error)
    }
    this.track(probe)
    const since = { at: performance.now() }
    this.writesSince.add(since)
    const done = (error?: unknown) => {
      this.probing = false
      this.writesSince.delete(since)
      if (error === undefined || !this.unanswered(error)) this.answered(since.at)
    }
    probe.then(() => done(), done)
    try {
      await withDeadline(probe, this.options.timeoutMs, "answer a probe")
    } catch (error) {
      if (this.closed || this.current.state !== "ok") return
      this.fail(
        isStorageFailure(error)
          ? error
          : storageUnavailable(`storage probe failed: ${messageOf(error)}`, error),
        this.unanswered(error),
      )
    }
  }

  /** A call that only reads: still made while writes fail, unless reads failed too. */
  private read<T>(what: string, run: () => Promise<T>): Promise<T> {
    return this.call(what, run, true)
  }

  private call<T>(what: string, run: () => Promise<T>, reads = false): Promise<T> {
    if (this.current.state === "failing" && !this.closed && !(reads && this.current.reads)) {
      return Promise.reject(
        storageUnavailable(`storage is failing: ${this.current.error.message}`, this.current.error),
      )
    }
    let inner: Promise<T>
    try {
      inner = run()
    } catch (error) {
      inner = Promise.reject(error)
    }
    // Tracked until it settles in the backend, past its deadline too (see the class comment).
    this.running.add(inner)
    const began = performance.now()
    const since = reads ? undefined : { at: began }
    if (since) this.writesSince.add(since)
    const ms = this.options.timeoutMs
    return settledWithin(
      inner,
      ms,
      () => `storage did not ${what} within ${ms} ms`,
      (error) => this.failure(error, what, reads),
      (rejected, error) => {
        this.running.delete(inner)
        if (since) this.writesSince.delete(since)
        // Late or not, with a result or an error of the database: it answered (see `stalledSince`).
        if (!rejected || !this.unanswered(error)) this.answered(began)
      },
      reads ? this.reads : this.writes,
    )
  }

  /**
   * The set a store of the same database puts its unanswered calls in (see
   * `withDeadlines`): they are refused with the reads in flight.
   */
  get inFlightReads(): Set<Refusal> {
    return this.reads
  }

  /**
   * Refuses the reads in flight once reads are no longer served: they wait on
   * a database that answers nothing (a stopped server, a dropped link), each
   * for its own deadline otherwise (up to the storage timeout per request).
   * They stay tracked until they settle in the backend.
   */
  private refuseReads(error: ParleyError): void {
    if (this.reads.size === 0 || this.readsServed()) return
    const refusal = storageUnavailable(`storage is failing: ${error.message}`, error)
    for (const refuse of [...this.reads]) refuse(refusal)
  }

  /**
   * What a call that failed with `error` rejects with; a storage failure marks
   * the storage failing (and reads too when the call only read).
   */
  private failure(error: unknown, what: string, read: boolean): unknown {
    // A typed refusal of the backend (a damaged document, say) says nothing about its availability.
    if ((error instanceof ParleyError && !isStorageFailure(error)) || this.closed) return error
    const failure = isStorageFailure(error)
      ? error
      : storageUnavailable(`storage failed to ${what}: ${messageOf(error)}`, error)
    this.fail(failure, read || this.unanswered(error))
    return failure
  }

  /**
   * Told by a store of the same database (see `withDeadlines`) that one of
   * its calls failed with `error` (typed `failure`): when the database
   * answered nothing, storage is failing, reads too.
   */
  answeredNothing(error: unknown, failure: ParleyError): void {
    if (this.closed || !this.unanswered(error)) return
    this.fail(failure, true)
  }

  /** Whether `error` (or what it wraps) says the database answered nothing (a deadline, or the backend's {@link StorageGuardOptions.noAnswer}). */
  private unanswered(error: unknown): boolean {
    for (let at = error, depth = 0; at !== undefined && depth < 4; depth++) {
      if ((at instanceof ParleyError && pastDeadline.has(at)) || this.options.noAnswer?.(at)) return true
      at = at instanceof Error ? at.cause : undefined
    }
    return false
  }

  private track(promise: Promise<unknown>): void {
    this.running.add(promise)
    const settled = () => this.running.delete(promise)
    promise.then(settled, settled)
  }

  private fail(error: ParleyError, read: boolean): void {
    const wasOk = this.current.state === "ok"
    const reads = !read && (wasOk || this.readsServed())
    this.current = { state: "failing", error, since: wasOk ? Date.now() : this.since(), reads }
    if (wasOk) {
      this.probeDelay = this.options.probeIntervalMs ?? 100
      this.options.onChange?.(this.current)
      // Writes in flight wait on what failed (a lock, a dead connection): refused now, as later ones
      // are, rather than each at its own deadline. They stay tracked until they settle in the backend.
      if (this.writes.size > 0) {
        const refusal = storageUnavailable(`storage is failing: ${error.message}`, error)
        for (const refuse of [...this.writes]) refuse(refusal)
      }
    }
    this.refuseReads(error)
    this.scheduleProbe()
  }

  private since(): number {
    return this.current.state === "failing" ? this.current.since : Date.now()
  }

  private readsServed(): boolean {
    return this.current.state !== "failing" || this.current.reads
  }

  private scheduleProbe(): void {
    if (this.probeTimer || this.closed) return
    const delay = this.probeDelay
    this.probeDelay = Math.min(delay * 2, this.options.maxProbeIntervalMs ?? 2000)
    this.probeTimer = setTimeout(() => void this.probe(), delay)
    this.probeTimer.unref()
  }

  private async probe(): Promise<void> {
    try {
      // Calls abandoned at their deadline (and a probe of the watch) must settle first (see the class comment).
      if (this.running.size > 0)
        await withDeadline(Promise.allSettled([...this.running]), this.options.timeoutMs, "settle")
      const probe = this.probeInner({ recovering: true })
      this.track(probe)
      await withDeadline(probe, this.options.timeoutMs, "answer a probe")
    } catch (error) {
      this.probeTimer = undefined
      if (this.closed) return
      this.current = {
        state: "failing",
        error: isStorageFailure(error)
          ? error
          : storageUnavailable(`storage probe failed: ${messageOf(error)}`, error),
        since: this.since(),
        reads: this.readsServed() && !this.unanswered(error),
      }
      this.refuseReads(this.current.error)
      this.scheduleProbe()
      return
    }
    this.probeTimer = undefined
    if (this.closed) return
    this.current = { state: "ok" }
    this.options.onChange?.(this.current)
    for (const waiter of this.waiters) waiter.resolve()
    this.waiters.clear()
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/** `error` of a storage call doing `what`, typed: a ParleyError as it is, anything else STORAGE_UNAVAILABLE. */
export function asStorageFailure(what: string, error: unknown): ParleyError {
  return error instanceof ParleyError
    ? error
    : storageUnavailable(`${what} failed: ${messageOf(error)}`, error)
}

/**
 * `target` with a deadline on every method that returns a promise (except
 * `close`), and its failures typed as STORAGE_UNAVAILABLE: for the stores
 * beside the documents (hook outbox, client-id bindings), so that none of
 * them can hang a caller or surface an untyped backend error. With `shared`,
 * the documents' guard of the same database: while it finds the database
 * answering nothing (reads failing too), every call is refused at once.
 */
export function withDeadlines<T extends object>(
  target: T,
  timeoutMs: number,
  label: string,
  shared?: StorageGuard,
): T {
  // One wrapper per method, made on first use: a call makes no closure or message string of its own.
  const wrappers = new Map<PropertyKey, { method: unknown; wrapper: (...args: unknown[]) => unknown }>()
  return new Proxy(target, {
    get(object, property, receiver) {
      const value = Reflect.get(object, property, receiver)
      if (typeof value !== "function" || property === "close" || property === "constructor") return value
      const known = wrappers.get(property)
      if (known?.method === value) return known.wrapper
      const what = `${label}: ${String(property)}`
      const late = () => `storage did not finish ${what} within ${timeoutMs} ms`
      const failed = (error: unknown) => {
        const typed = asStorageFailure(what, error)
        // Found here first (a key lookup, an idempotency record): the breaker learns of it too, so that
        // the next call is refused at once, not left to wait for its own deadline (an outside probe).
        shared?.answeredNothing(error, typed)
        return typed
      }
      const wrapper = (...args: unknown[]) => {
        // The database answers nothing (see `StorageGuard.readable`): refused at once, not left to wait
        // for its deadline and hold a connection of the pool meanwhile.
        const state = shared?.state
        if (state?.state === "failing" && !state.reads)
          return Promise.reject(storageUnavailable(`storage is failing: ${state.error.message}`, state.error))
        const result = Reflect.apply(value, object, args)
        if (!(result instanceof Promise)) return result
        // In the documents' reads in flight: refused with them once the database is found answering nothing.
        return settledWithin(result, timeoutMs, late, failed, undefined, shared?.inFlightReads)
      }
      wrappers.set(property, { method: value, wrapper })
      return wrapper
    },
  })
}
