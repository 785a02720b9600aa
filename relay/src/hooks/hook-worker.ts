/**
 * The hook worker's entry: runs in a worker thread that `HookWorker` starts.
 * Loads every module of the hooks directory, then runs handler calls the main
 * thread sends, giving each a context whose operations (conversations,
 * inboxes, logging) are messages back to the main thread, which runs them
 * with the relay's own implementations. Not imported by anything else.
 */
import { AsyncLocalStorage, createHook } from "node:async_hooks"
import fs from "node:fs"
import { syncBuiltinESMExports } from "node:module"
import { format } from "node:util"
import { parentPort, workerData } from "node:worker_threads"
import { ErrorCode, isErrorCode, ParleyError, type UserId } from "@parley/shared"
import pino from "pino"
import type { Logger } from "../log.js"
import type { PushNotification } from "../push/notification.js"
import {
  type HookContext,
  type HookConversations,
  isOwnWriteOf,
  type PushNotificationContext,
} from "./define.js"
import type { HookEvent } from "./events.js"
import { type LoadedHooks, loadHooks } from "./loader.js"
import {
  Batcher,
  CallState,
  CONTEXT_OPERATIONS,
  droppedMessage,
  type FromWorker,
  type HookWorkerData,
  LogBudget,
  type ToWorker,
  toWire,
  type WireError,
} from "./worker-protocol.js"

const port = parentPort
if (!port) throw new Error("hook-worker.ts runs only as a worker thread (see HookWorker)")

// Node refuses `process.abort()` in a worker, but not a signal to the relay's own process (or its
// group): a handler calling `process.kill(process.pid)` took the whole relay down, and again after
// each restart as its event was delivered again. Refused like `abort`: the handler throws.
const kill = process.kill.bind(process)
process.kill = (pid: number, signal?: string | number) => {
  if (pid === process.pid || pid <= 0)
    throw new TypeError("process.kill() of the relay's own process is not available to hook modules")
  return kill(pid, signal)
}
const data = workerData as HookWorkerData
const current = new Float64Array(data.current)

/**
 * Which call's code runs now, kept in {@link CallState.EXECUTING} around every callback (an `await`'s
 * continuation, a timer) of code a handler started: when a handler loops after an `await`, the main
 * thread blames that call alone. Before, it blamed every started call past its time, and with a
 * backlog that was mostly calls waiting behind the loop (a correct module's events dead-lettered)
 * while the looping call, posted later, was re-run without counting (an outside probe). Costs about
 * 0.2 µs per `await` in the worker.
 */
const callOf = new AsyncLocalStorage<number>()
const entered: number[] = []
createHook({
  before() {
    current[CallState.CALLBACKS]! += 1
    entered.push(current[CallState.EXECUTING]!)
    current[CallState.EXECUTING] = callOf.getStore() ?? 0
  },
  after() {
    current[CallState.EXECUTING] = entered.pop() ?? 0
  },
}).enable()

/** Free slots of {@link CallState.SLOTS}, and the slot of each running call. */
const freeSlots: number[] = []
let slotsUsed = 0
const slotOf = new Map<number, number>()

/** Records that call `id` starts now (the main thread times it from here). */
function started(id: number): void {
  current[CallState.LAST_STARTED] = id
  const slot = freeSlots.pop() ?? (slotsUsed < CallState.SLOT_COUNT ? slotsUsed++ : undefined)
  if (slot === undefined) return
  const at = CallState.SLOTS + 2 * slot
  // The time first: the main thread takes a slot whose id is set as started then.
  current[at + 1] = Date.now()
  current[at] = id
  current[CallState.SLOTS_USED] = slotsUsed
  slotOf.set(id, slot)
}

/** Records that call `id`'s handler settled. */
function settled(id: number): void {
  const slot = slotOf.get(id)
  if (slot === undefined) return
  slotOf.delete(id)
  current[CallState.SLOTS + 2 * slot] = 0
  freeSlots.push(slot)
}

/** What is sent and cannot be cloned (a function among an operation's arguments) fails alone, not its batch. */
const out = new Batcher<FromWorker>(
  (batch) => port.postMessage(batch),
  (message, error) => {
    if (message.t === "op") calls.get(message.id)?.ops.get(message.op)?.reject(unclonable(message, error))
    else if (message.t === "done")
      port.postMessage([
        {
          t: "threw",
          id: message.id,
          error: toWire(new TypeError(`the handler returned what cannot reach the relay: ${error.message}`)),
        },
      ])
  },
)

/**
 * The error of an operation whose arguments cannot reach the main thread (a function inside, a
 * `toJSON` or `toString` method): INVALID_ARGUMENT naming the argument, not the DOMException
 * DataCloneError (code 25) it was (an outside probe).
 */
function unclonable(message: Extract<FromWorker, { t: "op" }>, error: Error): ParleyError {
  const index = message.args.findIndex((arg) => {
    try {
      structuredClone(arg)
      return false
    } catch {
      return true
    }
  })
  return new ParleyError(
    ErrorCode.INVALID_ARGUMENT,
    `${message.name}: ${index < 0 ? "its arguments" : `argument ${index + 1}`} cannot reach the relay (${error.message}): pass plain data`,
  )
}

interface Call {
  controller?: AbortController
  /** Why the main thread aborted the call, once it did. */
  aborted?: string
  readonly ops: Map<number, { resolve(value: unknown): void; reject(error: unknown): void }>
  nextOp: number
  /** The handler returned: kept only until the operations it started (unawaited) are answered. */
  ended?: boolean
}

const calls = new Map<number, Call>()
let modules: readonly LoadedHooks[] = []

/**
 * Longest log line a module may send the main thread, which copies and parses it on the thread that
 * serves every client: one `ctx.log` of a 50 MB field held it for 1.3 s (an outside probe).
 */
const MAX_HOOK_LOG_LINE = 16 * 1024

/** `line`, or when longer than {@link MAX_HOOK_LOG_LINE} a line of the same level saying so, with its start. */
function boundedLine(line: string): string {
  if (line.length <= MAX_HOOK_LOG_LINE) return line
  const level = Number(/^\{"level":(\d+)/.exec(line)?.[1] ?? 40)
  return `${JSON.stringify({
    level,
    msg: `a hook's log line of ${line.length} characters was cut to its first ${MAX_HOOK_LOG_LINE / 1024} KiB`,
    start: line.slice(0, MAX_HOOK_LOG_LINE),
  })}\n`
}

const logBudget = new LogBudget()

/** Sends a log line (pino's JSON) to the main thread within the log budget; `id` names the call. */
function sendLogLine(line: string, id: number | undefined): void {
  // Posted at once (with what was sent before it): a line logged just before a handler blocks the
  // worker is the one that tells what it was doing.
  const bounded = boundedLine(line)
  if (!logBudget.admits(bounded.length)) return
  const dropped = logBudget.takeDropped()
  if (dropped > 0)
    out.send({ t: "log", line: `${JSON.stringify({ level: 40, msg: droppedMessage(dropped) })}\n` })
  out.send({ t: "log", ...(id === undefined ? {} : { id }), line: bounded })
  out.flush()
}

/** A pino logger whose lines go to the main thread, which logs them with the call's bindings. */
function logger(id: number | undefined): Logger {
  return pino(
    { level: data.logLevel, base: null, timestamp: false },
    { write: (line: string) => sendLogLine(line, id) },
  )
}

/** Sends what a module printed to `name` (stdout or stderr) as a log line of `level`, within the budget. */
function printed(text: string, level: number, name: string): void {
  sendLogLine(
    `${JSON.stringify({ level, msg: `hook module ${name}`, output: text.replace(/\n$/, "") })}\n`,
    undefined,
  )
}

/**
 * The worker's own stdout and stderr (`console.log`, `process.stdout.write`: a module's habit) become
 * log lines (info and warn) under the same budget: Node copies a worker's output to the relay's own
 * stdout unbounded, and one handler call of an outside probe's module wrote 100 MB of it in seconds.
 */
function captureOutput(stream: NodeJS.WriteStream, level: number, name: string): void {
  stream.write = ((chunk: unknown, encoding?: unknown, callback?: unknown) => {
    printed(
      typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString("utf8"),
      level,
      name,
    )
    const done = typeof encoding === "function" ? encoding : callback
    if (typeof done === "function") queueMicrotask(() => (done as () => void)())
    return true
  }) as typeof stream.write
}
captureOutput(process.stdout, 30, "stdout")
captureOutput(process.stderr, 40, "stderr")

/**
 * Writes to the file descriptors 1 and 2 (`fs.writeSync(1, ...)`, `fs.write`, what writes through
 * them) and `process._rawDebug` go the same way: they wrote straight to the relay's own stdout and
 * stderr, unbounded and not as JSON lines (an outside probe: 22 MB in a minute, mixed into the
 * relay's log). The worker's streams are its own (see `HookWorker`), but these bypass streams.
 */
function captureDescriptors(): void {
  const levels: Record<number, readonly [number, string]> = { 1: [30, "stdout"], 2: [40, "stderr"] }
  /** The text and byte count of a write's `data` (a string, or bytes from `offset`, `length` of them). */
  const written = (data: unknown, offset: unknown, length: unknown, encoding: unknown) => {
    if (typeof data === "string") {
      const bytes = Buffer.from(data, (typeof encoding === "string" ? encoding : "utf8") as BufferEncoding)
      return { text: bytes.toString("utf8"), bytes: bytes.length }
    }
    const view = data as ArrayBufferView
    const all = Buffer.from(view.buffer, view.byteOffset, view.byteLength)
    // `(fd, buffer, { offset, length })` or `(fd, buffer, offset, length)`.
    const options =
      typeof offset === "object" && offset !== null
        ? (offset as { offset?: unknown; length?: unknown })
        : { offset, length }
    const start = typeof options.offset === "number" ? options.offset : 0
    const end = typeof options.length === "number" ? start + options.length : all.length
    return { text: all.subarray(start, end).toString("utf8"), bytes: end - start }
  }
  const writeSync = fs.writeSync
  fs.writeSync = ((fd: number, data: unknown, ...rest: unknown[]) => {
    const level = levels[fd]
    if (!level) return (writeSync as (...args: unknown[]) => number)(fd, data, ...rest)
    const { text, bytes } = written(data, rest[0], rest[1], rest[1])
    printed(text, ...level)
    return bytes
  }) as typeof fs.writeSync
  const write = fs.write
  fs.write = ((fd: number, data: unknown, ...rest: unknown[]) => {
    const level = levels[fd]
    if (!level) return (write as (...args: unknown[]) => void)(fd, data, ...rest)
    const callback = rest.pop()
    const { text, bytes } = written(data, rest[0], rest[1], rest[1])
    printed(text, ...level)
    if (typeof callback === "function") process.nextTick(callback, null, bytes, data)
  }) as typeof fs.write
  const rawDebug = (...args: unknown[]) => printed(format(...args), 40, "stderr")
  ;(process as unknown as { _rawDebug: typeof rawDebug })._rawDebug = rawDebug
  // `import { writeSync } from "node:fs"` in a module sees the wrapped functions too.
  syncBuiltinESMExports()
}
captureDescriptors()

function signalOf(call: Call): AbortSignal {
  if (!call.controller) {
    call.controller = new AbortController()
    if (call.aborted !== undefined) call.controller.abort(new ParleyError(ErrorCode.TIMEOUT, call.aborted))
  }
  return call.controller.signal
}

function operation(id: number, name: string, args: readonly unknown[]): Promise<unknown> {
  const call = calls.get(id)
  if (!call || call.ended)
    return Promise.reject(
      new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `${name}: the handler call this context belongs to has ended`,
      ),
    )
  const op = call.nextOp++
  return new Promise((resolve, reject) => {
    call.ops.set(op, { resolve, reject })
    out.send({ t: "op", id, op, name, args })
  })
}

function conversationsOf(id: number): HookConversations {
  const conversations: Record<string, (...args: unknown[]) => Promise<unknown>> = {}
  for (const name of CONTEXT_OPERATIONS) {
    if (!name.startsWith("conversations.")) continue
    conversations[name.slice("conversations.".length)] = (...args) => operation(id, name, args)
  }
  return conversations as unknown as HookConversations
}

function contextOf(id: number, call: Call, hook: string, attempt: number): HookContext {
  let log: Logger | undefined
  let conversations: HookConversations | undefined
  return {
    hook,
    get log() {
      log ??= logger(id)
      return log
    },
    get signal() {
      return signalOf(call)
    },
    attempt,
    get conversations() {
      conversations ??= conversationsOf(id)
      return conversations
    },
    inboxes: {
      summary: (user: UserId) => operation(id, "inboxes.summary", [user]) as never,
    },
    isOwnWrite: isOwnWriteOf(hook),
  }
}

/** Rebuilds an error the main thread sent: a `ParleyError` keeps its code (a hook may test it). */
function fromWire(error: WireError): Error {
  const rebuilt =
    error.name === "ParleyError" && isErrorCode(error.code)
      ? new ParleyError(error.code, error.message)
      : Object.assign(new Error(error.message), { name: error.name })
  if (error.stack) rebuilt.stack = error.stack
  return rebuilt
}

/**
 * Longest notification `onPushNotification` may return, as JSON in UTF-8: a push payload holds about
 * 4 KB (shared with the encryption's overhead), so a longer one could not be sent anyway.
 */
const MAX_HOOK_RESULT_BYTES = 4 * 1024

/**
 * What `onPushNotification` returned, checked here before it is posted: undefined, `false` or a
 * notification object of at most {@link MAX_HOOK_RESULT_BYTES}. A handler returning a 200 MB string
 * had it copied to the main thread before it was refused there, holding the thread that serves
 * every client for 1–2 s (an outside probe).
 */
function pushResult(value: unknown): { readonly value?: unknown } | { readonly refused: string } {
  if (value === undefined || value === false) return value === undefined ? {} : { value }
  const refused = (what: string) => ({
    refused: `onPushNotification returned ${what}: it may return only undefined, false or a notification of at most ${MAX_HOOK_RESULT_BYTES / 1024} KiB as JSON`,
  })
  if (typeof value !== "object" || value === null || Array.isArray(value))
    return refused(
      typeof value === "string"
        ? `a string of ${value.length} characters`
        : value === null
          ? "null"
          : Array.isArray(value)
            ? "an array"
            : `a ${typeof value}`,
    )
  let json: string
  try {
    json = JSON.stringify(value)
  } catch (error) {
    return refused(`an object that is not JSON (${(error as Error).message})`)
  }
  const bytes = Buffer.byteLength(json)
  // What was checked is what is posted: the object itself, cloned, could hold more than its JSON (a
  // getter answering anew, a Map: an outside probe posted 200 MB and hung the relay's main thread).
  return bytes > MAX_HOOK_RESULT_BYTES
    ? refused(`a notification of ${bytes} bytes as JSON`)
    : { value: JSON.parse(json) as unknown }
}

/**
 * Runs a handler as call `id`. What it returns goes to the main thread only through `check`
 * (`onPushNotification`'s); an event handler's return value means nothing and is not posted.
 */
function run(
  id: number,
  invoke: (call: Call) => unknown,
  check?: (value: unknown) => { readonly value?: unknown } | { readonly refused: string },
): void {
  const call: Call = { ops: new Map(), nextOp: 0 }
  calls.set(id, call)
  const finish = (message: FromWorker) => {
    settled(id)
    // An operation the handler started without awaiting it still runs on the main thread (it was sent
    // before this answer): its promise settles when its answer comes.
    call.ended = true
    if (call.ops.size === 0) calls.delete(id)
    out.send(message)
  }
  started(id)
  const outer = current[CallState.EXECUTING]!
  try {
    current[CallState.CALLBACKS]! += 1
    current[CallState.EXECUTING] = id
    const result = callOf.run(id, () => invoke(call))
    current[CallState.EXECUTING] = outer
    Promise.resolve(result).then(
      (value) => {
        const checked = check?.(value) ?? {}
        finish(
          "refused" in checked
            ? { t: "threw", id, error: toWire(new TypeError(checked.refused)) }
            : "value" in checked
              ? { t: "done", id, value: checked.value }
              : { t: "done", id },
        )
      },
      (error: unknown) => finish({ t: "threw", id, error: toWire(error) }),
    )
  } catch (error) {
    current[CallState.EXECUTING] = outer
    finish({ t: "threw", id, error: toWire(error) })
  }
}

function handle(message: ToWorker): void {
  switch (message.t) {
    case "call": {
      const loaded = modules[message.module]
      const handler = (loaded?.hooks as Record<string, unknown> | undefined)?.[message.handler]
      if (!loaded || typeof handler !== "function") {
        out.send({ t: "done", id: message.id })
        return
      }
      run(message.id, (call) =>
        handler.call(loaded.hooks, message.event, contextOf(message.id, call, loaded.name, message.attempt)),
      )
      return
    }
    case "push": {
      const loaded = modules[message.module]
      const handler = loaded?.hooks.onPushNotification
      if (!loaded || !handler) {
        out.send({ t: "done", id: message.id })
        return
      }
      run(
        message.id,
        (call) => {
          let log: Logger | undefined
          const context: PushNotificationContext = {
            hook: loaded.name,
            recipient: message.recipient as UserId,
            event: message.event as HookEvent<"message.sent">,
            get log() {
              log ??= logger(message.id)
              return log
            },
            get signal() {
              return signalOf(call)
            },
          }
          return handler.call(loaded.hooks, message.notification as PushNotification, context)
        },
        pushResult,
      )
      return
    }
    case "abort": {
      const call = calls.get(message.id)
      if (call && call.aborted === undefined) {
        call.aborted = message.reason
        call.controller?.abort(new ParleyError(ErrorCode.TIMEOUT, message.reason))
      }
      if (message.ack) out.send({ t: "expired", id: message.id })
      return
    }
    case "result":
    case "failure": {
      const call = calls.get(message.id)
      const pending = call?.ops.get(message.op)
      if (!call || !pending) return
      call.ops.delete(message.op)
      if (call.ended && call.ops.size === 0) calls.delete(message.id)
      if (message.t === "result") pending.resolve(message.value)
      else pending.reject(fromWire(message.error))
      return
    }
  }
}

// A promise of a module's rejected with nobody handling it is logged, as the relay's own process does:
// Node would otherwise end the worker (and fail every call running in it) for one fire-and-forget task.
const unattached = logger(undefined)
process.on("unhandledRejection", (reason: unknown) => {
  unattached.error(
    { err: reason },
    "a promise of a hook module was rejected and nothing handled it (the hook worker keeps running)",
  )
})

port.on("message", (batch: readonly ToWorker[]) => {
  for (const message of batch) handle(message)
})

try {
  modules = await loadHooks(data.dir, {
    timeoutMs: data.loadTimeoutMs,
    onLoading: (path) => {
      // Sent now: a module whose top-level code never returns blocks this thread before the batch would go.
      out.send({ t: "loading", path })
      out.flush()
    },
  })
  out.send({
    t: "loaded",
    modules: modules.map(({ name, path, hooks }) => ({
      name,
      path,
      handlers: Object.keys(hooks).filter(
        (key) => typeof (hooks as Record<string, unknown>)[key] === "function",
      ),
    })),
  })
} catch (error) {
  out.send({ t: "load-failed", message: (error as Error)?.message ?? String(error) })
}
