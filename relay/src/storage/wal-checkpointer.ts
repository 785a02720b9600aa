import { createRequire } from "node:module"
import { Worker } from "node:worker_threads"

/**
 * Pages of WAL the relay's own connection lets grow before it checkpoints by
 * itself (SQLite's default is 1,000): only reached when the checkpointing
 * thread is stopped or falls behind.
 */
export const BACKSTOP_AUTOCHECKPOINT_PAGES = 8_000

/** How often the thread checkpoints, by default. */
const DEFAULT_EVERY_MS = 200

// The thread's program: plain JavaScript (no TypeScript tooling in a worker), given the
// better-sqlite3 module's resolved path. A PASSIVE checkpoint takes no lock that the
// relay's writer waits for: appends go on while pages are copied into the database.
const PROGRAM = `
const { parentPort, workerData } = require("node:worker_threads")
const Database = require(workerData.module)
let db
try {
  db = new Database(workerData.file, { fileMustExist: true })
  db.pragma("synchronous = FULL")
} catch (error) {
  // Said here, as text (an error thrown out of the thread does not always arrive whole); the thread
  // then ends by itself: nothing keeps it.
  parentPort.postMessage({ error: String((error && error.message) || error) })
  parentPort.close()
}
if (db) {
  // A failure is reported when it starts or changes, not every period (a full disk fails each one).
  let failing = ""
  // Prepared once (db.pragma prepares a statement per call), and run only after the relay's
  // connection committed something since the last one that succeeded: an idle relay's thread spent
  // about 3 ms of CPU a second on checkpoints with nothing to copy.
  const version = db.prepare("PRAGMA data_version").pluck()
  const passive = db.prepare("PRAGMA wal_checkpoint(PASSIVE)")
  let checkpointed
  const checkpoint = () => {
    try {
      const now = version.get()
      if (now === checkpointed) return
      const [result] = passive.all()
      // Busy (a checkpoint could not finish): tried again next period whatever the version.
      checkpointed = result && result.busy === 0 && result.log === result.checkpointed ? now : undefined
      failing = ""
    } catch (error) {
      const message = String((error && error.message) || error)
      if (message !== failing) parentPort.postMessage({ error: message })
      failing = message
    }
  }
  const timer = setInterval(checkpoint, workerData.everyMs)
  parentPort.on("message", (message) => {
    if (message !== "stop") return
    clearInterval(timer)
    db.close()
    parentPort.close()
  })
}
`

/**
 * Checkpoints a WAL-mode SQLite database from a thread of its own, so that the
 * relay's event loop never copies WAL pages into the database file nor waits
 * for that file's fsync. SQLite's automatic checkpoint runs inside the COMMIT
 * that crosses its threshold (every 1,000 pages by default: about once a
 * second on a busy relay, each an fsync of megabytes of pages), and every
 * change arriving meanwhile waits behind it: the latency tail. The relay's own
 * connection keeps a higher threshold ({@link BACKSTOP_AUTOCHECKPOINT_PAGES})
 * in case this thread stops. Durability is unchanged: commits are as synced
 * as before (`synchronous` of the relay's connection); a checkpoint only moves
 * committed pages from the WAL into the database file, and syncs it.
 */
export class WalCheckpointer {
  private readonly worker: Worker
  private readonly exited: Promise<void>

  /**
   * Starts checkpointing `file` (a database in WAL mode, already open by the
   * caller) every `everyMs`. `onError` hears a checkpoint that failed, once per
   * run of the same failure (the next one is tried as usual; the backstop
   * still applies).
   */
  constructor(file: string, onError: (message: string) => void, everyMs = DEFAULT_EVERY_MS) {
    const module = createRequire(import.meta.url).resolve("better-sqlite3")
    this.worker = new Worker(PROGRAM, { eval: true, workerData: { module, file, everyMs } })
    this.worker.on("message", (message: { error?: string }) => {
      if (message.error) onError(message.error)
    })
    // A fallback (the thread reports its own failures as text): what it threw arrives cloned, not
    // always as an Error of this realm, nor with its message.
    this.worker.on("error", (error: unknown) =>
      onError(
        error instanceof Error ? error.message : String((error as { message?: unknown })?.message ?? error),
      ),
    )
    this.exited = new Promise((resolve) => this.worker.once("exit", () => resolve()))
    // Never what keeps the process up.
    this.worker.unref()
  }

  /** Stops the thread (a checkpoint under way finishes first) and closes its connection. */
  async stop(): Promise<void> {
    // Held while it stops: otherwise a process with nothing else left to do exits (code 13) mid-close.
    this.worker.ref()
    this.worker.postMessage("stop")
    await this.exited
  }
}
