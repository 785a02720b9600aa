import { closeSync, fdatasync, openSync } from "node:fs"
import type Database from "better-sqlite3"

/** Each connection's own `synchronous` level, read at its first {@link withoutSync}. */
const levels = new WeakMap<Database.Database, number>()

/**
 * Runs `write` (a transaction, or the statements of one) committed without an
 * fsync of its own (`synchronous=NORMAL`) on `db`, whose level (FULL for the
 * relay's database) is set back right after: the pragma is the connection's,
 * and nothing else runs in between (SQLite calls are synchronous). Each switch
 * is compiled anew: SQLite applies `PRAGMA synchronous = …` when the statement
 * is prepared, not when it runs. The outbox once prepared them once, which set
 * NORMAL for good while it was constructed: from 2026-11-30 to 2026-12-03 no
 * append was fsync'd before its acknowledgement. The switches go through
 * `exec` (no statement object; about 1 µs for both against 11 µs through
 * `db.pragma`, which made them a fiftieth of a busy relay's main thread), and
 * the level to go back to is read once per connection: nothing else changes
 * it, and were something to, this would set it back to what it was at the start.
 */
export function withoutSync<T>(db: Database.Database, write: () => T): T {
  let before = levels.get(db)
  if (before === undefined) {
    before = Number(db.pragma("synchronous", { simple: true }))
    levels.set(db, before)
  }
  db.exec("PRAGMA synchronous = NORMAL")
  try {
    return write()
  } finally {
    db.exec(`PRAGMA synchronous = ${before}`)
  }
}

/**
 * Makes a WAL-mode SQLite database's write-ahead log durable with an
 * `fdatasync` of its file on libuv's thread pool, so that the event loop does
 * not wait for the disk. The documents' appends commit without a sync of
 * their own (`synchronous=NORMAL` for that commit) and resolve only once this
 * sync of the log is done: what is acknowledged is on disk, as with
 * `synchronous=FULL`, but changes of other documents are received, checked and
 * applied while the disk works, and join the next commit.
 *
 * Why this is as safe as SQLite's own sync: a commit's frames are written
 * (`pwrite`) to the log before the commit returns, so a sync started after it
 * covers them. With `synchronous=NORMAL` in WAL mode SQLite never leaves the
 * database corrupt after a power loss, only without the newest commits, and
 * the log is replayed in order up to the first frame that fails its checksum:
 * a commit on disk brings every commit before it (compactions, client-id
 * bindings, the outbox's rows) to disk too. SQLite takes its locks on the
 * database and `-shm` files, never on `-wal`, so this descriptor of the log
 * (kept open until {@link close}) cannot release a lock of SQLite's.
 */
export class WalSync {
  private closed = false

  private constructor(private readonly fd: number) {}

  /**
   * Opens the log of `databaseFile` (`<file>-wal`), or returns nothing when
   * there is none (an in-memory database, or one not in WAL mode): its
   * commits then sync themselves.
   */
  static open(databaseFile: string): WalSync | undefined {
    try {
      // Read-write, though nothing is written through it: Windows flushes only a handle open for writing.
      return new WalSync(openSync(`${databaseFile}-wal`, "r+"))
    } catch {
      return undefined
    }
  }

  /** Resolves once everything written to the log so far is on disk. */
  sync(): Promise<void> {
    if (this.closed) return Promise.reject(new Error("the write-ahead log is closed"))
    return new Promise((resolve, reject) =>
      fdatasync(this.fd, (error) => (error ? reject(error) : resolve())),
    )
  }

  /** Closes the descriptor (after the database's last commit). */
  close(): void {
    if (this.closed) return
    this.closed = true
    closeSync(this.fd)
  }
}
