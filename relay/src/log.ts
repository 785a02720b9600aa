import pino from "pino"

/** The relay's structured logger (pino, JSON lines on stdout). */
export type Logger = pino.Logger

/** Log levels accepted by `--log-level`. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const
/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number]

/** A logger writing JSON lines to stdout. */
export function createLogger(level: LogLevel = "info"): Logger {
  return pino({ level, base: { service: "parley-relay" } })
}
