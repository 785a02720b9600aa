import type { PushNotification } from "../push/notification.js"
import type { HookEvent } from "./events.js"

/**
 * The messages between the relay's main thread and its hook worker (see
 * `HookWorker` and `hook-worker.ts`). Every message is structured-cloned;
 * messages posted in one turn of the event loop travel as one array (one
 * `postMessage`, one wake-up of the other side), which is what keeps a hook
 * call on every event cheap.
 */

/** What the worker is started with (`workerData`). */
export interface HookWorkerData {
  readonly dir: string
  /** Longest one module may take to load (`HOOK_LOAD_TIMEOUT_MS`). */
  readonly loadTimeoutMs: number
  /** The relay logger's level: lines below it are not even sent. */
  readonly logLevel: string
  /**
   * Floats laid out as {@link CallState} says: which call's code the worker
   * runs now, the last call it started, and when each call it runs started.
   * Shared memory, so that they can be read when the worker is blocked or
   * dead (its messages then never come).
   */
  readonly current: SharedArrayBuffer
}

/**
 * Where the worker keeps what {@link HookWorkerData.current} holds (indexes
 * of its floats). Call ids start at 1 and increase; 0 is "none".
 */
export const CallState = {
  /**
   * How many callbacks the worker has entered (a handler's start, an `await`'s continuation, a
   * timer, a message): unchanged while {@link EXECUTING} names a call, that call's code has run
   * without yielding since (see `HOOK_SYNC_LIMIT_MS`).
   */
  CALLBACKS: 0,
  /** The last call the worker started: calls after it are still queued, so never ran. */
  LAST_STARTED: 1,
  /**
   * The call whose code runs now, its handler's or a continuation's (after an `await`, a timer it
   * set), or 0: the one to blame when the worker stops answering.
   */
  EXECUTING: 2,
  /** One past the highest slot in use (the main thread reads no further). */
  SLOTS_USED: 3,
  /** The first slot: each is two floats, a running call's id (0 when free) and when it started (ms). */
  SLOTS: 4,
  /** Slots: calls running at once beyond these are not timed from their start (from their posting). */
  SLOT_COUNT: 8_192,
} as const

/** The size of {@link HookWorkerData.current}, in bytes. */
export const CALL_STATE_BYTES = (CallState.SLOTS + 2 * CallState.SLOT_COUNT) * Float64Array.BYTES_PER_ELEMENT

/** A loaded module as the main thread sees it: its name, path and the handlers it defines. */
export interface ModuleInfo {
  readonly name: string
  readonly path: string
  readonly handlers: readonly string[]
}

/** An error as it crosses threads: enough to rebuild a `ParleyError` or a `PermanentDeliveryError`. */
export interface WireError {
  readonly name: string
  readonly message: string
  readonly stack?: string
  readonly code?: string
}

/** Main thread → worker. */
export type ToWorker =
  /** Run `handler` of `module` (index in the loaded list) on `event`, as delivery attempt `attempt`. */
  | {
      readonly t: "call"
      readonly id: number
      readonly module: number
      readonly handler: string
      readonly event: HookEvent
      readonly attempt: number
    }
  /** Run `onPushNotification` of `module`. */
  | {
      readonly t: "push"
      readonly id: number
      readonly module: number
      readonly notification: PushNotification
      readonly recipient: string
      readonly event: HookEvent
    }
  /** Abort call `id`'s signal; with `ack`, answer `expired` (the attempt's time is up: is the worker alive?). */
  | { readonly t: "abort"; readonly id: number; readonly reason: string; readonly ack: boolean }
  /** The answer to operation `op` of call `id`. */
  | { readonly t: "result"; readonly id: number; readonly op: number; readonly value: unknown }
  | { readonly t: "failure"; readonly id: number; readonly op: number; readonly error: WireError }

/** Worker → main thread. */
export type FromWorker =
  /** About to import `path` (the main thread times each module's load). */
  | { readonly t: "loading"; readonly path: string }
  | { readonly t: "loaded"; readonly modules: readonly ModuleInfo[] }
  | { readonly t: "load-failed"; readonly message: string }
  /** Call `id` returned (`value`: what `onPushNotification` returned, structured-cloned). */
  | { readonly t: "done"; readonly id: number; readonly value?: unknown }
  | { readonly t: "threw"; readonly id: number; readonly error: WireError }
  /** Call `id`'s signal was aborted at the main thread's request: the worker's event loop is alive. */
  | { readonly t: "expired"; readonly id: number }
  /** A context operation of call `id` (`conversations.send`, `inboxes.summary`...), numbered per call. */
  | {
      readonly t: "op"
      readonly id: number
      readonly op: number
      readonly name: string
      readonly args: readonly unknown[]
    }
  /** One log line of call `id` (pino's JSON, the hook's own child bindings included). */
  | { readonly t: "log"; readonly id: number; readonly line: string }
  /** A log line outside any call (a timer of a module). */
  | { readonly t: "log"; readonly id?: undefined; readonly line: string }

/** The context operations a handler may call, by name, as the worker sends them. */
export const CONTEXT_OPERATIONS = [
  "conversations.get",
  "conversations.create",
  "conversations.send",
  "conversations.edit",
  "conversations.deleteMessage",
  "conversations.unpin",
  "conversations.react",
  "conversations.unreact",
  "conversations.addParticipants",
  "conversations.removeParticipants",
  "conversations.leave",
  "conversations.changeRole",
  "conversations.rename",
  "conversations.setMetadata",
  "conversations.deleteConversation",
  "conversations.markRead",
  "conversations.markDelivered",
  "inboxes.summary",
] as const

/** Turns a thrown value into its {@link WireError}. */
export function toWire(error: unknown): WireError {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return {
      name: error.name,
      message: error.message,
      ...(error.stack ? { stack: error.stack } : {}),
      ...(typeof code === "string" ? { code } : {}),
    }
  }
  return { name: "Error", message: String(error) }
}

/**
 * Posts messages batched per turn of the event loop: the first `send` schedules
 * (`setImmediate`) one `postMessage` of everything sent until then, so that the
 * calls of every lane the dispatcher starts in one turn cross in one message.
 */
export class Batcher<T> {
  private queue: T[] = []

  constructor(
    private readonly post: (batch: T[]) => void,
    /** Told of a message that could not be cloned (the rest of its batch is posted). */
    private readonly rejected?: (message: T, error: Error) => void,
  ) {}

  send(message: T): void {
    if (this.queue.push(message) === 1) setImmediate(() => this.flush())
  }

  /** Posts what is queued now (also before the thread may block or end). */
  flush(): void {
    if (this.queue.length === 0) return
    const batch = this.queue
    this.queue = []
    try {
      this.post(batch)
    } catch (error) {
      // Nothing of a batch is posted when one message cannot be cloned: the others go one by one.
      if (!this.rejected || batch.length === 0) throw error
      for (const message of batch) {
        try {
          this.post([message])
        } catch (one) {
          this.rejected(message, one as Error)
        }
      }
    }
  }
}

/**
 * Log lines and bytes a worker's modules may send the main thread per second, after a burst of ten
 * seconds' worth: a module logging in a loop (never blocking its worker, so no other guard fires) had
 * the main thread parse 16 KiB lines without end — `/healthz` took 10 s, and the relay's memory grew
 * by 850 MB. Beyond, lines are dropped and counted; the count is logged once lines pass again, at
 * most once a second.
 */
export const LOG_LINES_PER_SECOND = 100
/** See {@link LOG_LINES_PER_SECOND}. */
export const LOG_BYTES_PER_SECOND = 256 * 1024

/** The warning that `dropped` lines of hook modules were dropped. */
export function droppedMessage(dropped: number): string {
  return `hook modules logged more than ${LOG_LINES_PER_SECOND} lines (or ${LOG_BYTES_PER_SECOND / 1024} KiB) a second: ${dropped} lines were dropped`
}

/** The hook modules' log budget ({@link LOG_LINES_PER_SECOND}): the worker's, and the host's for the worker's output streams. */
export class LogBudget {
  private lines = LOG_LINES_PER_SECOND * 10
  private bytes = LOG_BYTES_PER_SECOND * 10
  private at: number
  private dropped = 0
  /** When dropped lines were last reported. */
  private reported = Number.NEGATIVE_INFINITY

  constructor(private readonly now: () => number = Date.now) {
    this.at = now()
  }

  /** Whether a line of `bytes` may be logged now (spending the budget if so; counted as dropped if not). */
  admits(bytes: number): boolean {
    const now = this.now()
    const seconds = (now - this.at) / 1000
    this.at = now
    this.lines = Math.min(LOG_LINES_PER_SECOND * 10, this.lines + seconds * LOG_LINES_PER_SECOND)
    this.bytes = Math.min(LOG_BYTES_PER_SECOND * 10, this.bytes + seconds * LOG_BYTES_PER_SECOND)
    if (this.lines < 1 || this.bytes < bytes) {
      this.dropped++
      return false
    }
    this.lines--
    this.bytes -= bytes
    return true
  }

  /**
   * The lines dropped to report now, after a line was admitted (then counted from 0 again): at most
   * once a second, the counts in between summed. Past the budget one line passes every 10 ms, and
   * a warning with each flooded the log itself (an outside probe: 311 of them, 41 in one second).
   */
  takeDropped(): number {
    const now = this.now()
    if (this.dropped === 0 || now - this.reported < 1_000) return 0
    const dropped = this.dropped
    this.dropped = 0
    this.reported = now
    return dropped
  }
}
