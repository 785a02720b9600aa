import { resolve } from "node:path"
import { ErrorCode, ParleyError } from "@parley/shared"
import { type DiskSpace, diskSpaceOf, formatBytes, writeReserve } from "./storage/disk-space.js"

/**
 * Exit codes of `parley-relay` (the table in relay/README.md, "Exit codes"),
 * so that a supervisor can tell a configuration to fix from a resource to wait for.
 */
export const ExitCode = {
  /** Stopped cleanly (after SIGTERM / SIGINT), or `--help`. */
  OK: 0,
  /** An unexpected failure (printed with its stack trace), a failed shutdown, or a second signal. */
  FAILURE: 1,
  /** The configuration is wrong: a flag, variable, key file, URL or hook script. Fix it; retrying will not help. */
  CONFIG: 2,
  /** The relay cannot listen on `--host`/`--port` (in use, not an address of this machine, no permission). */
  LISTEN: 3,
  /** Storage cannot be opened or read at start: the data directory is not writable or damaged, or PostgreSQL cannot be reached. */
  STORAGE: 4,
} as const
/** One of {@link ExitCode}. */
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode]

/**
 * Why the relay cannot start, in one line that names the flag, file or
 * address and what to do. The command line prints its message (no stack
 * trace) and exits with {@link StartupError.exitCode}.
 */
export class StartupError extends ParleyError {
  /** `options.rule` names what refused the start when a check did (`cluster-settings`). */
  constructor(
    readonly exitCode: ExitCode,
    message: string,
    options?: { cause?: unknown; rule?: string },
  ) {
    super(codeFor(exitCode), message, options)
  }
}

function codeFor(exitCode: ExitCode): ErrorCode {
  if (exitCode === ExitCode.STORAGE) return ErrorCode.STORAGE_UNAVAILABLE
  if (exitCode === ExitCode.LISTEN) return ErrorCode.UNAVAILABLE
  return ErrorCode.INVALID_ARGUMENT
}

/**
 * The exit code of a failed start: its own, configuration for refused
 * arguments (a hook script), storage for storage that failed or is damaged
 * after it opened (a damaged page of the hook outbox read at start), else
 * failure.
 */
export function exitCodeOf(error: unknown): ExitCode {
  if (error instanceof StartupError) return error.exitCode
  if (error instanceof ParleyError && error.code === ErrorCode.INVALID_ARGUMENT) return ExitCode.CONFIG
  if (
    error instanceof ParleyError &&
    (error.code === ErrorCode.STORAGE_UNAVAILABLE || error.code === ErrorCode.DAMAGED)
  )
    return ExitCode.STORAGE
  return ExitCode.FAILURE
}

/** The short reason of a system or driver error: its code and first line, without a stack. */
export function reasonOf(error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const code = (error as { code?: unknown }).code
  const message = error.message.split("\n")[0] || error.name
  return typeof code === "string" && !message.includes(code) ? `${code} ${message}` : message
}

/** Why the server could not listen on `host:port`. */
export function listenFailure(error: unknown, host: string, port: number): StartupError {
  const code = (error as { code?: unknown })?.code
  const where = `${host.includes(":") ? `[${host}]` : host}:${port}`
  const hint =
    code === "EADDRINUSE"
      ? "another process listens there: stop it, or give another --port (0 = any free port)"
      : code === "EACCES"
        ? "no permission: ports below 1024 need privileges, give a --port above 1023"
        : code === "EADDRNOTAVAIL" || code === "ENOTFOUND" || code === "EAI_AGAIN"
          ? "not an address of this machine: fix --host (127.0.0.1, 0.0.0.0 or one of its interfaces)"
          : "check --host and --port"
  return new StartupError(ExitCode.LISTEN, `cannot listen on ${where} (${reasonOf(error)}): ${hint}`, {
    cause: error,
  })
}

/** Where storage was to be opened, to name it in a failure. */
export type StorageLocation =
  | { readonly kind: "sqlite"; readonly dataDir: string }
  | { readonly kind: "postgres"; readonly databaseUrl: string }

/** Why Redis (`--redis-url`) could not be opened at the start of a clustered relay. */
export function redisFailure(error: unknown, redisUrl: string): StartupError {
  return new StartupError(
    ExitCode.STORAGE,
    `cannot open Redis at ${redactedUrl(redisUrl)} (--redis-url, PARLEY_REDIS_URL): ${reasonOf(error)}: ` +
      "check that the server runs and answers, and the URL",
    { cause: error },
  )
}

/** Why storage (documents, client-id bindings or hook outbox) could not be opened at start. */
export function storageFailure(error: unknown, where: StorageLocation): StartupError {
  if (where.kind === "sqlite") {
    // An install that skipped better-sqlite3's build script (npm 11 without approval, --ignore-scripts),
    // or a module built for another Node: no fault of the directory's.
    if (missingNativeModule(error))
      return new StartupError(
        ExitCode.STORAGE,
        `cannot open SQLite: better-sqlite3's native module is missing or was built for another Node.js (${reasonOf(error).split("\n")[0]}): ` +
          "run `npm rebuild better-sqlite3` (with npm 11, approve its install script first: relay README, first section)",
        { cause: error },
      )
    const full = fullDisk(where.dataDir)
    return new StartupError(
      ExitCode.STORAGE,
      `cannot open the data directory ${resolve(where.dataDir)} (--data-dir): ${reasonOf(error)}: ` +
        (full
          ? `the disk holding it is full (${formatBytes(full.free)} free): free space and start again`
          : damagedFile(error)
            ? 'a database file in it is damaged: restore it from a backup (relay README, "Backup"), or give another --data-dir'
            : "make it a directory this user can write, or give another --data-dir"),
      { cause: error },
    )
  }
  return new StartupError(
    ExitCode.STORAGE,
    `cannot open PostgreSQL at ${redactedUrl(where.databaseUrl)} (--database-url, DATABASE_URL): ${reasonOf(error)}: ` +
      "check that the server runs and the URL, user, password and database are right",
    { cause: error },
  )
}

/** SQLite's own word that a file is not a sound database (damaged, truncated, or not a database at all). */
function damagedFile(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code
  return code === "SQLITE_CORRUPT" || code === "SQLITE_NOTADB"
}

/**
 * The room left on the disk holding `dir` when it is too little for SQLite to
 * open a database there (it creates the `-wal` and `-shm` files), else
 * undefined: told apart from a directory this user may not write, whose fix is
 * another.
 */
function fullDisk(dir: string): DiskSpace | undefined {
  try {
    const space = diskSpaceOf(dir)
    return space.free < writeReserve(space.size) ? space : undefined
  } catch {
    // The directory is missing or unreadable: not a full disk.
    return undefined
  }
}

/** A connection string fit for a log line: its password replaced by `***`. */
export function redactedUrl(url: string): string {
  if (!URL.canParse(url)) return "the configured connection string"
  const parsed = new URL(url)
  if (parsed.password) parsed.password = "***"
  return parsed.toString()
}

/** Whether `error` says a native module could not be loaded (not built, or built for another Node.js). */
function missingNativeModule(error: unknown): boolean {
  const text = `${(error as { code?: unknown })?.code ?? ""} ${(error as Error)?.message ?? ""}`
  return /Could not locate the bindings file|ERR_DLOPEN_FAILED|NODE_MODULE_VERSION|compiled against a different Node\.js/.test(
    text,
  )
}
