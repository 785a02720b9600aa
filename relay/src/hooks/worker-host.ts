import { type FSWatcher, watch } from "node:fs"
import { Worker } from "node:worker_threads"
import { ErrorCode, isErrorCode, ParleyError } from "@parley/shared"
import pino from "pino"
import type { Logger } from "../log.js"
import type { PushNotification } from "../push/notification.js"
import type { HookContext, PushNotificationContext, PushNotificationResult } from "./define.js"
import { DeferDelivery, type DeliveryAttempt, PermanentDeliveryError } from "./dispatcher.js"
import type { HookEvent } from "./events.js"
import { HOOK_LOAD_TIMEOUT_MS } from "./loader.js"
import {
  Batcher,
  CALL_STATE_BYTES,
  CallState,
  CONTEXT_OPERATIONS,
  droppedMessage,
  type FromWorker,
  type HookWorkerData,
  LogBudget,
  type ModuleInfo,
  type ToWorker,
  toWire,
  type WireError,
} from "./worker-protocol.js"

/** Default heap limit of the hook worker, in MB (`--hook-memory-mb`). */
export const DEFAULT_HOOK_MEMORY_MB = 512
/** How long past a call's time the worker has to show that its event loop still runs before it is restarted. */
export const HOOK_WORKER_GRACE_MS = 1_000
/** First wait before loading the modules again after a restart's load failed (doubling, at most {@link RELOAD_DELAY_MAX_MS}). */
const RELOAD_DELAY_MS = 1_000
/**
 * Longest wait between loads while the modules fail to. Hook calls wait for a load (see
 * {@link HookWorker.respawn}), so after a fix the hooks directory's watcher cannot see (a file
 * outside it) deliveries stay held up to this long; a minute held every conversation's hooks that
 * long (an outside probe). Not less: a load costs a worker's start and the modules' imports, about
 * 1.4 s of a core for a module importing `@parley/relay` (measured on a busy 2-core machine).
 */
const RELOAD_DELAY_MAX_MS = 15_000
/**
 * Wait after a change in the hooks directory, while the modules fail to load, before loading them
 * again: an editor saves in a few steps (a temporary file, a rename).
 */
const CHANGE_SETTLE_MS = 200
/**
 * How many times one handler call (a module's handler for one event) may
 * block or crash the worker before its delivery is dead-lettered rather than
 * retried. Both are most often the handler's own work on the event (a regular
 * expression backtracking on a user's text, a parser throwing from a callback
 * or allocating past the heap), so every retry does it again, and each costs a
 * restart that interrupts every conversation's hook calls: at 8 attempts one
 * 35-byte message cost about 88 s of a core, and one message whose handler
 * exited held other conversations' hooks up to 28 s at a time for over two
 * minutes (outside probes). Blocks and crashes of one call count together.
 */
export const BLOCKS_BEFORE_DEAD_LETTER = 2
/**
 * Longest a handler's code may run without yielding (before its first
 * `await`, or in any continuation after one, or a timer it set) before the
 * worker counts as blocked and is restarted, whatever the hook timeout:
 * every module's calls wait behind it meanwhile, so a block was held the
 * whole timeout plus the grace (11 s by default) per attempt. A loop after
 * an `await` (`await conversations.get(id)`, then a backtracking regular
 * expression) was held so, twice, about 24 s (an outside probe).
 */
export const HOOK_SYNC_LIMIT_MS = 2_000
/** How often the host looks at which handler the worker runs synchronously. */
const SYNC_CHECK_MS = 250
/** Longest chunk of the worker's own output logged (as the worker cuts its log lines). */
const MAX_OUTPUT_CHARS = 16 * 1024
/** Settled calls remembered by what they were, to name a block their leftover code caused. */
const SETTLED_REMEMBERED = 1_000
/** Calls remembered as having blocked or crashed the worker (the oldest forgotten beyond). */
const BLOCKS_REMEMBERED = 1_000

/** Options of {@link HookWorker.start}. */
export interface HookWorkerOptions {
  /** The hooks directory (`--hooks`). */
  readonly dir: string
  readonly log: Logger
  /** Time allowed to one handler call (the hook timeout). */
  readonly timeoutMs: number
  /** The worker's heap limit in MB (default {@link DEFAULT_HOOK_MEMORY_MB}). */
  readonly memoryMb?: number
  /** Longest one module may take to load (default {@link HOOK_LOAD_TIMEOUT_MS}). */
  readonly loadTimeoutMs?: number
  /** Past a call's time, how long the worker has to answer before it is restarted (default {@link HOOK_WORKER_GRACE_MS}). */
  readonly graceMs?: number
  /** How long one handler may run without yielding (default {@link HOOK_SYNC_LIMIT_MS}). */
  readonly syncLimitMs?: number
}

/** A call the worker owes an answer to. */
interface Pending {
  readonly id: number
  /** `hook:<file>`'s `onMessageSent`, for errors and logs. */
  readonly what: string
  readonly message: ToWorker
  /** When it was posted. */
  readonly posted: number
  /**
   * When its time is up: counted from when the worker started its handler once it has (see
   * {@link HookWorker.expire}), until then from its posting.
   */
  deadline: number
  /** The worker generation it was posted to; undefined while it waits for a worker that is loading. */
  generation?: number
  /** Set when its time is up and the worker was asked to abort it. */
  grace?: NodeJS.Timeout
  readonly context?: HookContext
  readonly log: () => Logger
  readonly signal?: AbortSignal
  readonly onAbort?: () => void
  resolve(value: unknown): void
  reject(error: unknown): void
}

interface Running {
  readonly worker: Worker
  /** Which calls the worker runs, laid out as {@link CallState} says (see {@link HookWorkerData.current}). */
  readonly current: Float64Array
  readonly generation: number
  readonly out: Batcher<ToWorker>
  loaded: boolean
  /** Set when the main thread ended it: its exit is expected. */
  ending?: string
  /** The module it is importing now (named in a load failure). */
  loading?: string
  loadTimer?: NodeJS.Timeout
  settleLoad?: (error?: ParleyError) => void
}

/**
 * The hook modules of the hooks directory, run in one worker thread, so that
 * a handler that never returns, loops for ever or allocates without bound
 * stops the worker, not the relay. Each handler call (and each
 * `onPushNotification`) is a message to the worker; the context's operations
 * (`conversations.*`, `inboxes.summary`) and log lines come back as messages
 * and run here, with the relay's own implementations, on the main-thread
 * context of the call (so that the write-id derivation sees the writes in
 * the handler's order).
 *
 * At a call's time (the hook timeout) the worker is asked to abort it: a
 * worker whose event loop runs answers at once and the call fails with
 * TIMEOUT, as an in-process handler's would; one that does not answer
 * within the grace is blocked (a `while (true)`), and is terminated. Every
 * call it was running then fails with an error saying so (retried, and
 * finally dead-lettered, by the dispatcher as usual), and a fresh worker
 * loads the modules again. The same holds when the worker exceeds its heap
 * limit or crashes (an exception thrown from a module's timer).
 *
 * One worker holds every module: modules keep sharing one realm, as they did
 * on the main thread, each worker costs its own heap and module loading, and
 * the calls of one dispatcher turn cross to one thread in one message.
 */
export class HookWorker {
  private running: Running | undefined
  private generation = 0
  private nextId = 1
  private readonly pending = new Map<number, Pending>()
  /** Calls posted while no worker has loaded: posted when one has. */
  private backlog: Pending[] = []
  private deadlineTimer: NodeJS.Timeout | undefined
  private reloadTimer: NodeJS.Timeout | undefined
  private reloadDelay = RELOAD_DELAY_MS
  /** When {@link reloadTimer} fires. */
  private reloadAt = 0
  /** Watches the hooks directory while the modules fail to load: a fix is loaded at once. */
  private watcher: FSWatcher | undefined
  /** Changes the watcher saw: one during a load that fails is loaded again at once too. */
  private changes = 0
  /** Why no worker runs, when its last load failed (calls wait, and are deferred, until a load succeeds). */
  private broken: string | undefined
  private stopped = false
  private readonly graceMs: number
  private readonly loadTimeoutMs: number

  /** The modules, in file-name order, as the first load found them. */
  private loaded: readonly ModuleInfo[] = []
  /** Blocks and crashes of the worker by call (module, handler, event id): see {@link BLOCKS_BEFORE_DEAD_LETTER}. */
  private readonly blocks = new Map<string, number>()
  /** The call whose code the worker ran at the last check, the worker's count of callbacks then, and since when both are so. */
  private syncSeen:
    | { readonly generation: number; readonly id: number; readonly callbacks: number; readonly since: number }
    | undefined
  private readonly syncWatch: NodeJS.Timeout
  /** What recently settled calls were (`hook:<file>`'s handler), by id: see {@link settle}. */
  private readonly settledWhat = new Map<number, string>()
  /** The log budget of what reaches the worker's own output streams. */
  private readonly outputBudget = new LogBudget()

  private constructor(private readonly options: HookWorkerOptions) {
    this.graceMs = options.graceMs ?? HOOK_WORKER_GRACE_MS
    this.loadTimeoutMs = options.loadTimeoutMs ?? HOOK_LOAD_TIMEOUT_MS
    this.syncWatch = setInterval(
      () => this.checkSync(options.syncLimitMs ?? HOOK_SYNC_LIMIT_MS),
      SYNC_CHECK_MS,
    )
    this.syncWatch.unref()
  }

  /**
   * Restarts a worker running a call's code (its handler, a continuation after an `await`, a timer
   * it set) that has not yielded for longer than `limitMs`: the call is blamed when still pending,
   * nobody when it returned already (see {@link restart}).
   */
  private checkSync(limitMs: number): void {
    const running = this.running
    const id = running?.loaded && running.ending === undefined ? running.current[CallState.EXECUTING]! : 0
    if (!running || id === 0) {
      this.syncSeen = undefined
      return
    }
    const now = Date.now()
    const callbacks = running.current[CallState.CALLBACKS]!
    const seen = this.syncSeen
    if (seen?.generation !== running.generation || seen.id !== id || seen.callbacks !== callbacks) {
      this.syncSeen = { generation: running.generation, id, callbacks, since: now }
      return
    }
    if (now - seen.since < limitMs) return
    // Code a call left running after it returned blocks every call as well; it charges nobody.
    const pending = this.pending.get(id)
    if (!pending && this.pending.size === 0) return
    this.syncSeen = undefined
    this.options.log.error(
      { hook: pending?.what, syncLimitMs: limitMs },
      "a hook call ran without yielding past the limit, blocking the hook worker: restarting it",
    )
    this.restart(running, { blockedBy: pending?.what ?? "code a hook call left running", syncMs: limitMs })
  }

  /**
   * Starts the worker and loads every module of `options.dir`. A module that
   * fails to load (or takes longer than the load limit, blocked or not)
   * rejects with a ParleyError naming its file: the relay refuses to start.
   */
  static async start(options: HookWorkerOptions): Promise<HookWorker> {
    const host = new HookWorker(options)
    try {
      await host.spawn()
    } catch (error) {
      clearInterval(host.syncWatch)
      throw error
    }
    return host
  }

  /** The modules, in file-name order, with the handlers each defines. */
  get modules(): readonly ModuleInfo[] {
    return this.loaded
  }

  /** Runs `handler` of module `module` (its index in {@link modules}) on `event`; `context` serves its operations. */
  call(
    module: number,
    handler: string,
    event: HookEvent,
    attempt: DeliveryAttempt,
    context: HookContext,
  ): Promise<void> {
    const id = this.nextId++
    return this.post({
      id,
      what: `hook:${this.modules[module]?.name}'s ${handler}`,
      message: { t: "call", id, module, handler, event, attempt: attempt.attempt },
      context,
      log: () => context.log,
      // The dispatcher abandons an attempt whose lease lapsed: the handler's signal in the worker says so.
      ...(attempt.onAbort ? { watch: attempt.onAbort.bind(attempt) } : { signal: attempt.signal }),
    }) as Promise<void>
  }

  /** Runs `onPushNotification` of module `module`. */
  push(
    module: number,
    notification: PushNotification,
    context: PushNotificationContext,
  ): Promise<PushNotificationResult> {
    const id = this.nextId++
    return this.post({
      id,
      what: `hook:${this.modules[module]?.name}'s onPushNotification`,
      message: {
        t: "push",
        id,
        module,
        notification,
        recipient: context.recipient,
        event: context.event,
      },
      log: () => context.log,
      signal: context.signal,
    }) as Promise<PushNotificationResult>
  }

  /**
   * Ends the worker. Calls still running are abandoned, not failed: the
   * dispatcher has stopped (its outbox closes next), and the outbox keeps
   * their deliveries for the next start.
   */
  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.syncWatch)
    clearTimeout(this.reloadTimer)
    this.watcher?.close()
    clearTimeout(this.deadlineTimer)
    const running = this.running
    this.running = undefined
    for (const pending of [...this.pending.values()]) this.settle(pending)
    this.backlog = []
    if (running) {
      running.ending = "stopped"
      clearTimeout(running.loadTimer)
      await running.worker.terminate()
    }
  }

  private post(
    call: Omit<Pending, "posted" | "deadline" | "resolve" | "reject" | "onAbort"> & {
      readonly signal?: AbortSignal
      /** Registers a listener for the attempt's abort (the dispatcher's, cheaper than its signal). */
      readonly watch?: (listener: (reason: unknown) => void) => void
    },
  ): Promise<unknown> {
    if (this.stopped)
      return Promise.reject(new ParleyError(ErrorCode.UNAVAILABLE, "the relay is stopping: no hook call"))
    return new Promise((resolve, reject) => {
      const signal = call.signal
      const posted = Date.now()
      const pending: Pending = {
        ...call,
        posted,
        deadline: posted + this.options.timeoutMs,
        resolve,
        reject,
        ...(signal
          ? {
              // The dispatcher abandoned the attempt (its lease lapsed): the handler's signal says so.
              onAbort: () => this.abort(pending, String(signal.reason?.message ?? signal.reason), false),
            }
          : {}),
      }
      if (signal && pending.onAbort) signal.addEventListener("abort", pending.onAbort, { once: true })
      call.watch?.((reason) => {
        if (this.pending.get(pending.id) === pending)
          this.abort(pending, String((reason as Error | undefined)?.message ?? reason), false)
      })
      this.pending.set(pending.id, pending)
      if (!this.deadlineTimer) this.scheduleDeadline()
      const running = this.running
      if (running?.loaded) {
        pending.generation = running.generation
        running.out.send(pending.message)
      } else this.backlog.push(pending)
    })
  }

  private settle(pending: Pending): boolean {
    if (this.pending.get(pending.id) !== pending) return false
    this.pending.delete(pending.id)
    // Remembered a while: code a call left running after it returned (a timer) still names it.
    this.settledWhat.set(pending.id, pending.what)
    if (this.settledWhat.size > SETTLED_REMEMBERED)
      this.settledWhat.delete(this.settledWhat.keys().next().value as number)
    clearTimeout(pending.grace)
    if (pending.signal && pending.onAbort) pending.signal.removeEventListener("abort", pending.onAbort)
    return true
  }

  private abort(pending: Pending, reason: string, ack: boolean): void {
    const running = this.running
    if (pending.generation === undefined || running?.generation !== pending.generation) return
    running.out.send({ t: "abort", id: pending.id, reason, ack })
  }

  /** One timer for the call whose time is up first. */
  private scheduleDeadline(): void {
    clearTimeout(this.deadlineTimer)
    let first: number | undefined
    for (const pending of this.pending.values())
      if (!pending.grace && (first === undefined || pending.deadline < first)) first = pending.deadline
    if (first === undefined) {
      this.deadlineTimer = undefined
      return
    }
    this.deadlineTimer = setTimeout(() => this.expire(), Math.max(0, first - Date.now()))
    this.deadlineTimer.unref()
  }

  /**
   * Ends the calls whose time is up. A call's time counts from when the worker started its handler:
   * one queued behind a handler that blocks the worker has not used any of it. A call the worker has
   * not started long past its posting means its event loop stands still with no call to time (a
   * module's timer looping): the worker is restarted then.
   */
  private expire(): void {
    const now = Date.now()
    const running = this.running
    const starts = running ? this.starts(running) : new Map<number, number>()
    let stalled = false
    for (const pending of this.pending.values()) {
      if (pending.grace || pending.deadline > now) continue
      if (pending.generation === undefined) {
        // Still waiting for a restarted worker to load the modules (slow on a busy machine, or failing
        // until the file is fixed): never sent, so not the handler's failure, nor its conversation's.
        // Handed back before the dispatcher's own deadline counts it.
        this.backlog = this.backlog.filter((p) => p !== pending)
        if (this.settle(pending))
          pending.reject(
            new DeferDelivery(
              now + RELOAD_DELAY_MS,
              this.broken !== undefined
                ? `the hook worker cannot load the modules (${this.broken}); retried without counting an attempt once it can`
                : "the hook worker was restarting (loading the modules); retried without counting an attempt",
            ),
          )
        continue
      }
      if (!running || running.generation !== pending.generation) continue
      if (pending.id > running.current[CallState.LAST_STARTED]!) {
        const stallAt = pending.posted + this.options.timeoutMs + 2 * this.graceMs
        if (now >= stallAt) stalled = true
        else pending.deadline = stallAt
        continue
      }
      const start = starts.get(pending.id)
      if (start !== undefined && start + this.options.timeoutMs > now) {
        pending.deadline = start + this.options.timeoutMs
        continue
      }
      // Past its time since it started (or settled already, its answer on its way, or not timed: the
      // worker ran more calls at once than it has slots): if the worker is alive, it answers at once.
      const timedOut = new ParleyError(ErrorCode.TIMEOUT, `timed out after ${this.options.timeoutMs} ms`)
      this.abort(pending, timedOut.message, true)
      pending.grace = setTimeout(() => this.hung(pending), this.graceMs)
      pending.grace.unref()
    }
    if (stalled && running) {
      this.options.log.error(
        { waitedMs: this.options.timeoutMs + 2 * this.graceMs },
        "the hook worker did not start a hook call for longer than the hook timeout: restarting it",
      )
      this.restart(running, { blockedBy: "code of a module outside any hook call" })
      return
    }
    this.scheduleDeadline()
  }

  /** The calls `running` runs now (started, not settled) and when each started, by id. */
  private starts(running: Running): Map<number, number> {
    const state = running.current
    const starts = new Map<number, number>()
    const end = CallState.SLOTS + 2 * Math.min(state[CallState.SLOTS_USED]!, CallState.SLOT_COUNT)
    for (let at = CallState.SLOTS; at < end; at += 2) {
      const id = state[at]!
      if (id !== 0) starts.set(id, state[at + 1]!)
    }
    return starts
  }

  /** The worker did not answer a call past its time and grace: its event loop is blocked. */
  private hung(pending: Pending): void {
    const running = this.running
    if (!running || this.pending.get(pending.id) !== pending || running.generation !== pending.generation)
      return
    const culprit = this.pending.get(running.current[CallState.EXECUTING]!)
    this.options.log.error(
      { hook: (culprit ?? pending).what, timeoutMs: this.options.timeoutMs },
      "a hook call blocked the hook worker: restarting it",
    )
    this.restart(running, { blockedBy: pending.what })
  }

  /**
   * Ends `running` (if not ended already), fails every call it was running,
   * and starts a fresh worker. The call that blocked or crashed it fails
   * with an error saying so, an attempt counted (dead-lettered the second
   * time, {@link BLOCKS_BEFORE_DEAD_LETTER}): the one whose code the
   * worker was running then (its handler, or after an `await` a continuation
   * of it, or a timer it set) while that call was pending. Code no pending
   * call owns (a module's own timer or listener, or what a call left running
   * after it returned) is named in the log when known, and charges nobody:
   * blaming the calls that happened to be running dead-lettered a correct
   * module's events (an outside probe). Every other call is only
   * interrupted: retried without counting an attempt ({@link DeferDelivery}),
   * so that one module's endless loop does not dead-letter another's events,
   * nor the calls waiting behind it.
   */
  private restart(
    running: Running,
    cause: { readonly blockedBy: string; readonly syncMs?: number } | { readonly crashed: string },
  ): void {
    if (this.running !== running || running.ending !== undefined) return
    const now = Date.now()
    const executing = running.current[CallState.EXECUTING]!
    const culprit = this.pending.get(executing)
    const leftover = culprit ? undefined : this.settledWhat.get(executing)
    const blocked = "blockedBy" in cause
    const why = blocked
      ? leftover !== undefined
        ? `code ${leftover} left running after it returned blocked the worker`
        : !culprit
          ? "code of a module outside any pending hook call blocked the worker"
          : cause.syncMs !== undefined
            ? `${culprit.what} ran ${cause.syncMs} ms without yielding`
            : `${culprit.what} did not return within ${this.options.timeoutMs} ms`
      : cause.crashed
    if (blocked && !culprit)
      this.options.log.error({ hook: leftover }, `${why}: no hook call is charged for it`)
    running.ending = why
    this.running = undefined
    void running.worker.terminate()
    for (const pending of [...this.pending.values()]) {
      if (pending.generation !== running.generation) continue
      if (!this.settle(pending)) continue
      const guilty = pending === culprit
      pending.reject(
        !guilty
          ? new DeferDelivery(
              now,
              `interrupted: the hook worker was restarted (${why}); retried without counting an attempt`,
            )
          : blocked
            ? this.restartedBy(
                pending,
                "syncMs" in cause && cause.syncMs !== undefined
                  ? `hook ran ${cause.syncMs} ms without yielding, blocking every hook call; its worker was restarted`
                  : `hook did not return within ${this.options.timeoutMs} ms; its worker was restarted`,
                ErrorCode.TIMEOUT,
              )
            : this.restartedBy(pending, `${why}; its worker was restarted`, ErrorCode.UNAVAILABLE),
      )
    }
    this.scheduleDeadline()
    if (!this.stopped) void this.respawn()
  }

  /**
   * The error of a call that blocked or crashed the worker: retried (a `code` error), or
   * dead-lettered once it blocked or crashed it before. A crash is charged as a block is: a handler
   * that exits or throws from a timer on a crafted message does so at every retry, and each retry
   * restarts the worker every module's calls share.
   */
  private restartedBy(pending: Pending, message: string, code: ErrorCode): Error {
    const call = pending.message
    if (call.t !== "call") return new ParleyError(code, message)
    const key = `${call.module}\u0000${call.handler}\u0000${call.event.event.id}`
    const blocks = (this.blocks.get(key) ?? 0) + 1
    this.blocks.delete(key)
    if (blocks >= BLOCKS_BEFORE_DEAD_LETTER)
      return new PermanentDeliveryError(
        `${message} (${blocks} times for this event: dead-lettered instead of retried; replay it once the handler is fixed)`,
      )
    this.blocks.set(key, blocks)
    if (this.blocks.size > BLOCKS_REMEMBERED) this.blocks.delete(this.blocks.keys().next().value!)
    return new ParleyError(code, message)
  }

  private async respawn(): Promise<void> {
    const changes = this.changes
    try {
      await this.spawn()
      this.reloadDelay = RELOAD_DELAY_MS
      this.watcher?.close()
      this.watcher = undefined
      this.options.log.info({ modules: this.modules.length }, "hook worker restarted: modules loaded again")
    } catch (error) {
      if (this.stopped) return
      // The modules changed on disk since the start, say. Calls wait in the backlog for the next load
      // and are handed back at their time as deferred ({@link expire}), never failed: failing them
      // spent every conversation's attempts on a file nobody's event is to blame for, and
      // dead-lettered them (an outside probe). A load that succeeds sends what waits at once.
      this.broken = (error as Error).message
      this.watch()
      const delay = this.changes === changes ? this.reloadDelay : CHANGE_SETTLE_MS
      this.options.log.error(
        { err: error, retryInMs: delay },
        "the hook worker could not load the modules again: hook calls wait until it can",
      )
      this.reloadIn(delay)
      this.reloadDelay = Math.min(this.reloadDelay * 2, RELOAD_DELAY_MAX_MS)
    }
  }

  /** Loads the modules again in `delay` ms (sooner if already due sooner), unless a worker runs or loads. */
  private reloadIn(delay: number): void {
    const at = Date.now() + delay
    // Not postponed: changes in a row (something writing in the directory) would hold it off for ever.
    if (this.reloadTimer && this.reloadAt <= at) return
    clearTimeout(this.reloadTimer)
    this.reloadAt = at
    this.reloadTimer = setTimeout(() => {
      this.reloadTimer = undefined
      if (!this.stopped && !this.running) void this.respawn()
    }, delay)
    this.reloadTimer.unref()
  }

  /**
   * Watches the hooks directory (not its sub-directories: a `node_modules` there would cost a watch
   * per folder) while the modules fail to load: a change loads them again shortly, without waiting
   * out the backoff. A platform without `fs.watch` waits it out.
   */
  private watch(): void {
    if (this.watcher) return
    try {
      this.watcher = watch(this.options.dir, { persistent: false }, () => {
        this.changes++
        if (this.broken !== undefined && !this.running && !this.stopped) this.reloadIn(CHANGE_SETTLE_MS)
      })
      this.watcher.on("error", () => {
        this.watcher?.close()
        this.watcher = undefined
      })
    } catch (error) {
      this.options.log.warn(
        { err: error },
        "cannot watch the hooks directory: a fix is loaded at the next try",
      )
    }
  }

  /** Starts a worker and resolves once it has loaded every module (rejects naming the module that failed). */
  private spawn(): Promise<readonly ModuleInfo[]> {
    const generation = ++this.generation
    const current = new SharedArrayBuffer(CALL_STATE_BYTES)
    const data: HookWorkerData = {
      current,
      dir: this.options.dir,
      loadTimeoutMs: this.loadTimeoutMs,
      logLevel: this.options.log.level,
    }
    const memoryMb = this.options.memoryMb ?? DEFAULT_HOOK_MEMORY_MB
    const entry = workerEntry()
    const worker = new Worker(entry, {
      workerData: data,
      resourceLimits: { maxOldGenerationSizeMb: memoryMb },
      name: "parley-hooks",
      // Its own streams, not the relay's: the worker sends what its modules print as log lines, and
      // what still reaches these is logged here under the same budget, never copied raw.
      stdout: true,
      stderr: true,
    })
    this.drain(worker.stdout, 30, "stdout")
    this.drain(worker.stderr, 40, "stderr")
    const running: Running = {
      worker,
      current: new Float64Array(current),
      generation,
      loaded: false,
      out: new Batcher<ToWorker>(
        (batch) => worker.postMessage(batch),
        (message, error) => this.unclonable(message, error),
      ),
    }
    this.running = running
    return new Promise<readonly ModuleInfo[]>((resolve, reject) => {
      const loadLimit = () => {
        clearTimeout(running.loadTimer)
        // The worker's own limit names a module whose top-level await never settles; this one, one that blocks.
        // Before its first module, the worker boots (and, from the sources, compiles the relay's): the full limit.
        const limit = running.loading === undefined ? HOOK_LOAD_TIMEOUT_MS : this.loadTimeoutMs
        running.loadTimer = setTimeout(() => {
          const error = this.loadFailure(
            running,
            `it did not finish loading within ${limit} ms (a top-level await that never settles, or code that never returns?)`,
          )
          running.settleLoad?.(error)
        }, limit + this.graceMs)
      }
      loadLimit()
      running.settleLoad = (error) => {
        running.settleLoad = undefined
        clearTimeout(running.loadTimer)
        if (error) {
          running.ending ??= error.message
          void worker.terminate()
          if (this.running === running) this.running = undefined
          reject(error)
          return
        }
        if (this.stopped) {
          // Stopped while this worker loaded (a restart's): it serves nobody.
          running.ending = "stopped"
          void worker.terminate()
          reject(new ParleyError(ErrorCode.UNAVAILABLE, "the relay is stopping"))
          return
        }
        running.loaded = true
        this.broken = undefined
        worker.unref()
        for (const pending of this.backlog.splice(0)) {
          if (this.pending.get(pending.id) !== pending) continue
          pending.generation = generation
          running.out.send(pending.message)
        }
        resolve(this.modules)
      }
      worker.on("message", (batch: readonly FromWorker[]) => {
        for (const message of batch) {
          if (message.t === "loading") {
            running.loading = message.path
            loadLimit()
          } else if (message.t === "loaded") {
            if (generation === 1) this.loaded = message.modules
            running.settleLoad?.()
          } else if (message.t === "load-failed")
            running.settleLoad?.(new ParleyError(ErrorCode.INVALID_ARGUMENT, message.message))
          else this.received(running, message)
        }
      })
      this.listenForEnd(running)
    })
  }

  private listenForEnd(running: Running): void {
    let failure: Error | undefined
    running.worker.on("error", (error) => {
      failure = error
    })
    running.worker.on("exit", (code) => {
      if (running.ending !== undefined) return
      const why =
        (failure as { code?: string } | undefined)?.code === "ERR_WORKER_OUT_OF_MEMORY"
          ? `the hook worker ran out of memory (its heap limit is ${this.options.memoryMb ?? DEFAULT_HOOK_MEMORY_MB} MB, --hook-memory-mb)`
          : failure
            ? `the hook worker crashed: ${failure.message}`
            : `the hook worker exited (code ${code})`
      if (running.settleLoad) {
        running.settleLoad(this.loadFailure(running, why))
        return
      }
      this.options.log.error({ err: failure, exitCode: code }, `${why}: restarting it`)
      this.restart(running, { crashed: why })
    })
  }

  /** Logs what reaches the worker's own `stream` (not its wrapped writes) within {@link outputBudget}. */
  private drain(stream: NodeJS.ReadableStream, level: 30 | 40, name: string): void {
    stream.on("data", (chunk: Buffer | string) => {
      const text = String(chunk).slice(0, MAX_OUTPUT_CHARS).replace(/\n$/, "")
      if (!this.outputBudget.admits(text.length)) return
      const dropped = this.outputBudget.takeDropped()
      if (dropped > 0) this.options.log.warn(droppedMessage(dropped))
      this.options.log[level === 30 ? "info" : "warn"]({ output: text }, `hook module ${name}`)
    })
  }

  private loadFailure(running: Running, why: string): ParleyError {
    return new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      running.loading
        ? `hook script ${running.loading} failed to load: ${why}`
        : `the hook worker failed to start: ${why}`,
    )
  }

  private received(running: Running, message: FromWorker): void {
    if (this.running !== running) return
    switch (message.t) {
      case "done":
      case "threw":
      case "expired": {
        const pending = this.pending.get(message.id)
        if (!pending || pending.generation !== running.generation || !this.settle(pending)) return
        if (message.t === "done") pending.resolve(message.value)
        else if (message.t === "threw") pending.reject(fromWire(message.error))
        else
          pending.reject(new ParleyError(ErrorCode.TIMEOUT, `timed out after ${this.options.timeoutMs} ms`))
        return
      }
      case "op":
        this.operate(running, message)
        return
      case "log":
        this.logLine(message.id === undefined ? undefined : this.pending.get(message.id), message.line)
        return
      default:
        return
    }
  }

  /** Runs a context operation on the call's main-thread context, at once (write ids follow call order). */
  private operate(running: Running, message: Extract<FromWorker, { t: "op" }>): void {
    const { id, op } = message
    const fail = (error: unknown) => {
      if (this.running === running) running.out.send({ t: "failure", id, op, error: toWire(error) })
    }
    // Known while the call runs: an operation a handler started, awaited or not, arrives before its answer.
    const context = this.pending.get(id)?.context
    if (!context) {
      fail(new ParleyError(ErrorCode.INVALID_ARGUMENT, `${message.name}: the handler call has ended`))
      return
    }
    if (!(CONTEXT_OPERATIONS as readonly string[]).includes(message.name)) {
      fail(new ParleyError(ErrorCode.INVALID_ARGUMENT, `no context operation ${message.name}`))
      return
    }
    const [group, name] = message.name.split(".") as [string, string]
    const owner = (group === "inboxes" ? context.inboxes : context.conversations) as unknown as Record<
      string,
      (...args: unknown[]) => Promise<unknown>
    >
    let result: Promise<unknown>
    try {
      result = owner[name]!(...message.args)
    } catch (error) {
      fail(error)
      return
    }
    result.then((value) => {
      if (this.running === running) running.out.send({ t: "result", id, op, value })
    }, fail)
  }

  private logLine(pending: Pending | undefined, line: string): void {
    let parsed: Record<string, unknown>
    try {
      parsed = JSON.parse(line) as Record<string, unknown>
    } catch {
      return
    }
    const { level, msg, ...fields } = parsed
    const log = pending?.log() ?? this.options.log
    const label = pino.levels.labels[level as number] as pino.Level | undefined
    if (!label) return
    if (typeof msg === "string") log[label](fields, msg)
    else log[label](fields)
  }

  /** A message that cannot be cloned (an operation's result holding a function): that one fails, alone. */
  private unclonable(message: ToWorker, error: Error): void {
    if (message.t === "result")
      this.running?.out.send({ t: "failure", id: message.id, op: message.op, error: toWire(error) })
    else if (message.t === "call" || message.t === "push") {
      const pending = this.pending.get(message.id)
      if (pending && this.settle(pending)) pending.reject(error)
    }
  }
}

/** Rebuilds a handler's error: a `PermanentDeliveryError` dead-letters at once, a `ParleyError` keeps its code. */
function fromWire(error: WireError): Error {
  const rebuilt =
    error.name === "PermanentDeliveryError"
      ? new PermanentDeliveryError(error.message)
      : error.name === "ParleyError" && isErrorCode(error.code)
        ? new ParleyError(error.code, error.message)
        : Object.assign(new Error(error.message), { name: error.name })
  if (error.stack) rebuilt.stack = error.stack
  return rebuilt
}

/**
 * The worker's entry: `hook-worker.js` beside this file when the relay is
 * compiled (the package, the test relay); from the TypeScript sources (the
 * repository), `hook-worker-source.mjs`, which registers tsx in the worker first.
 */
function workerEntry(): URL {
  const here = import.meta.url
  return new URL(here.endsWith(".ts") ? "./hook-worker-source.mjs" : "./hook-worker.js", here)
}
