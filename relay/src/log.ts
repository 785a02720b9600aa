import pino from "pino"

/** The relay's structured logger (pino, JSON lines on stdout). */
export type Logger = pino.Logger

/** Log levels accepted by `--log-level`. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const
/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number]

/**
 * Log bytes held for a stdout that does not keep up (a log reader that
 * stalled): beyond, lines are dropped rather than held without bound.
 */
export const LOG_BUFFER_BYTES = 8 * 1024 * 1024

/** Each logger's stdout stream, to flush before the process exits ({@link flushLog}). */
const streams = new WeakMap<Logger, ReturnType<typeof pino.destination>>()

/**
 * A logger writing JSON lines to stdout, asynchronously. pino's stream
 * flushes synchronously when the process exits, and that loops for ever when
 * nothing reads stdout any more (a log shipper that died: every write fails
 * with EPIPE) or nothing drains it (one that stalled): a relay told to stop
 * never exited. Here a write error stops the logging (the relay keeps
 * serving), a stalled reader costs at most {@link LOG_BUFFER_BYTES}, and
 * {@link flushLog} waits a bounded time; nothing is flushed synchronously at exit.
 */
export function createLogger(level: LogLevel = "info"): Logger {
  const stream = pino.destination({ dest: 1, sync: false, maxLength: LOG_BUFFER_BYTES })
  // pino flushes this stream synchronously at exit, and sonic-boom 4 retries a failing synchronous write
  // for ever (EPIPE too; its 5 throws, but pino uses 4): a relay that crashed once its stdout reader was
  // gone never exited, and no supervisor restarted it (an outside probe). Lines are written as they
  // come, and {@link flushLog} waits for the rest on every orderly exit; a crash may lose the last ones.
  stream.flushSync = () => {}
  let broken = false
  stream.on("error", () => {
    if (broken) return
    broken = true
    // Nothing more is written: the reader is gone (EPIPE) or stdout is failing.
    stream.write = () => true
    stream.flush = (cb?: (err?: Error) => void) => cb?.()
  })
  const log = pino({ level, base: { service: "parley-relay" } }, stream)
  streams.set(log, stream)
  return log
}

/**
 * Before the process exits: waits until what `log` wrote has reached stdout,
 * for at most `ms` (a reader that does not read loses the rest). Resolves at once for a
 * logger {@link createLogger} did not make.
 */
export async function flushLog(log: Logger, ms = 2_000): Promise<void> {
  const stream = streams.get(log)
  if (!stream) return
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms)
    timer.unref()
    try {
      stream.flush(() => {
        clearTimeout(timer)
        resolve()
      })
    } catch {
      // Not ready yet, or already closed: nothing to wait for.
      clearTimeout(timer)
      resolve()
    }
  })
}
