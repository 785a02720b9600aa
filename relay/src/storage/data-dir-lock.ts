import { readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import Database from "better-sqlite3"

/** The file in a SQLite data directory that says who holds it (the relay or an offline command). */
export const LOCK_FILE = "relay.lock"

/**
 * The SQLite database whose exclusive lock is the data directory's lock: the
 * kernel drops it when its process dies, however it dies, so there is no
 * stale holder to judge and no race between two starts.
 */
export const LOCK_DATABASE = "relay.lock.db"

/** What the lock file holds. */
interface Holder {
  readonly pid: number
  readonly host: string
  /** What holds it: "relay", or an offline command's name. */
  readonly holder: string
  readonly since: string
}

/** The data directory is in use by a live process: who holds it, when its lock file says. */
export class DataDirInUse extends Error {
  constructor(
    readonly file: string,
    readonly by: Holder | undefined,
  ) {
    super(
      by === undefined
        ? `another process is using it (${file})`
        : `${by.holder === "relay" ? "a relay" : `parley-relay ${by.holder}`} (pid ${by.pid} on ${by.host}, since ${by.since}) is using it (${file})`,
    )
  }
}

function readHolder(file: string): Holder | undefined {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Holder
  } catch {
    // Being written, or a holder that just released it.
    return undefined
  }
}

/**
 * Takes the lock of SQLite data directory `dataDir` for `holder` ("relay", or
 * an offline command's name), or throws {@link DataDirInUse} while another
 * process (or another relay in this one) holds it. Two relays on one
 * directory clash on every write, and an offline command (erasure, inbox
 * rebuild, restore) run beside a relay has its work undone by what the relay
 * holds in memory and writes back.
 *
 * The lock is SQLite's exclusive lock on {@link LOCK_DATABASE}, held until the
 * release: a relay killed with SIGKILL, or a container that vanished, frees it
 * with its process. Like SQLite's WAL, it needs a local file system (not NFS).
 * {@link LOCK_FILE} names the holder for the refusal's message. Returns the
 * release.
 *
 * Only the relay and the commands that must run with it stopped take it:
 * `keys`, `dead-letters` and `damaged list` run beside a running relay.
 */
export function lockDataDir(dataDir: string, holder: string): () => void {
  const file = join(dataDir, LOCK_FILE)
  // SQLite would only say "unable to open database file".
  if (!statSync(dataDir).isDirectory()) throw new Error("not a directory")
  let lock: Database.Database | undefined
  try {
    lock = new Database(join(dataDir, LOCK_DATABASE), { timeout: 0 })
    lock.pragma("locking_mode = EXCLUSIVE")
    lock.exec("BEGIN EXCLUSIVE; COMMIT")
  } catch (error) {
    lock?.close()
    if ((error as { code?: string }).code === "SQLITE_BUSY") throw new DataDirInUse(file, readHolder(file))
    throw error
  }
  const me: Holder = { pid: process.pid, host: hostname(), holder, since: new Date().toISOString() }
  try {
    // In place: the old holder's blocks are reused, so that a relay restarted on a full disk still
    // starts (and reports the disk). A refused process may read half of it and name no one.
    writeFileSync(file, JSON.stringify(me))
  } catch {
    // Only the refusals' message needs it.
  }
  let released = false
  return () => {
    if (released) return
    released = true
    try {
      unlinkSync(file)
    } catch {
      // Gone already.
    }
    lock.close()
  }
}

/**
 * Takes `dataDir`'s lock for offline command `command` (see {@link lockDataDir}):
 * the release, or undefined after writing one line saying who uses the
 * directory (or why its lock file cannot be written: a read-only or foreign
 * directory), for the command to exit 1.
 */
export function lockForCommand(
  dataDir: string,
  command: string,
  out: (text: string) => void,
): (() => void) | undefined {
  try {
    return lockDataDir(dataDir, command)
  } catch (error) {
    out(
      error instanceof DataDirInUse
        ? `parley-relay ${command}: ${error.message}: stop it first (what it holds in memory would be written back over this command's work)`
        : `parley-relay ${command}: cannot take the lock of ${dataDir}: ${(error as Error).message}`,
    )
    return undefined
  }
}

/** `backend` whose `close` also runs `release` (once closed, or failed to). */
export function releasingOnClose<T extends { close(): Promise<void> }>(backend: T, release: () => void): T {
  const close = backend.close.bind(backend)
  backend.close = () => close().finally(release)
  return backend
}
