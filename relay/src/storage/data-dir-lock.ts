import { closeSync, openSync, readFileSync, statSync, unlinkSync, utimesSync, writeSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"

/** The lock file in a SQLite data directory, held by the relay or an offline command using it. */
export const LOCK_FILE = "relay.lock"

/** How often the holder touches the lock file, so that another host can tell a live holder from a dead one. */
const HEARTBEAT_MS = 10_000

/** A lock file untouched this long is taken to be a dead holder's, when its host cannot be asked. */
export const STALE_LOCK_MS = 60_000

/** What the lock file holds. */
interface Holder {
  readonly pid: number
  readonly host: string
  /** What holds it: "relay", or an offline command's name. */
  readonly holder: string
  readonly since: string
}

/** The data directory is in use by a live process: who holds it. */
export class DataDirInUse extends Error {
  constructor(
    readonly file: string,
    readonly by: Holder,
  ) {
    super(
      `${by.holder === "relay" ? "a relay" : `parley-relay ${by.holder}`} (pid ${by.pid} on ${by.host}, since ${by.since}) is using it (${file})`,
    )
  }
}

/** True unless no process `pid` exists on this host. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: it exists, as another user.
    return (error as NodeJS.ErrnoException).code !== "ESRCH"
  }
}

function readHolder(file: string): { holder: Holder | undefined; touchedMs: number } | undefined {
  try {
    const touchedMs = statSync(file).mtimeMs
    let holder: Holder | undefined
    try {
      holder = JSON.parse(readFileSync(file, "utf8")) as Holder
    } catch {
      holder = undefined
    }
    return { holder, touchedMs }
  } catch {
    return undefined
  }
}

/**
 * Takes the lock of SQLite data directory `dataDir` for `holder` ("relay", or
 * an offline command's name), or throws {@link DataDirInUse} while a live
 * process holds it. Two relays on one directory clash on every write, and an
 * offline command (erasure, inbox rebuild, restore) run beside a relay has
 * its work undone by what the relay holds in memory and writes back.
 *
 * A holder is known dead when it was on this host and its process is gone
 * (a relay killed with SIGKILL leaves the file: the next start takes it over
 * at once), or when the file went untouched for {@link STALE_LOCK_MS} (another
 * host or container, which cannot be asked). A live holder touches it every
 * {@link HEARTBEAT_MS}. Returns the release, which removes the file if it is
 * still this holder's.
 *
 * Only the relay and the commands that must run with it stopped take it:
 * `keys`, `dead-letters` and `damaged list` run beside a running relay.
 */
export function lockDataDir(dataDir: string, holder: string): () => void {
  const file = join(dataDir, LOCK_FILE)
  const me: Holder = { pid: process.pid, host: hostname(), holder, since: new Date().toISOString() }
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(file, "wx", 0o644)
      try {
        writeSync(fd, JSON.stringify(me))
      } finally {
        closeSync(fd)
      }
      break
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST" || attempt >= 3) throw error
    }
    const found = readHolder(file)
    if (!found) continue
    const { holder: other, touchedMs } = found
    const dead =
      other === undefined ||
      (other.host === me.host && (other.pid === me.pid || !alive(other.pid))) ||
      Date.now() - touchedMs > STALE_LOCK_MS
    if (!dead) throw new DataDirInUse(file, other)
    try {
      unlinkSync(file)
    } catch {
      // Taken over by another process meanwhile: the next attempt finds out.
    }
  }
  const heartbeat = setInterval(() => {
    try {
      const now = new Date()
      utimesSync(file, now, now)
    } catch {
      // A full or failing disk: the storage's own checks report it; the lock stays ours meanwhile.
    }
  }, HEARTBEAT_MS)
  heartbeat.unref()
  let released = false
  return () => {
    if (released) return
    released = true
    clearInterval(heartbeat)
    const found = readHolder(file)?.holder
    if (found && found.pid === me.pid && found.since === me.since && found.host === me.host) {
      try {
        unlinkSync(file)
      } catch {
        // Gone already.
      }
    }
  }
}

/**
 * Takes `dataDir`'s lock for offline command `command` (see {@link lockDataDir}):
 * the release, or undefined after writing one line saying who uses the
 * directory, for the command to exit 1.
 */
export function lockForCommand(
  dataDir: string,
  command: string,
  out: (text: string) => void,
): (() => void) | undefined {
  try {
    return lockDataDir(dataDir, command)
  } catch (error) {
    if (!(error instanceof DataDirInUse)) throw error
    out(
      `parley-relay ${command}: ${error.message}: stop it first (what it holds in memory would be written back over this command's work)`,
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
