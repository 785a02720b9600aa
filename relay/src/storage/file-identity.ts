import { statSync } from "node:fs"
import { storageUnavailable } from "./guard.js"

/**
 * The file a database was opened from, checked to still be the one at its
 * path. SQLite writes through the descriptor it opened: a database file an
 * operator deleted (or replaced: a restore copied over it, a volume remounted)
 * under the running relay keeps taking commits into an inode nobody will ever
 * open again, and every write would be acknowledged and lost at the next
 * start. Checked before each commit and by the storage probe, so that writes
 * fail (retryably) from the moment the file is gone and the relay reports not
 * ready until it is restarted on the file the operator means.
 */
export class FileIdentity {
  private readonly dev: number
  private readonly ino: number

  constructor(private readonly path: string) {
    const stat = statSync(path)
    this.dev = stat.dev
    this.ino = stat.ino
  }

  /** Throws the typed, retryable storage failure when `path` no longer names the file opened. */
  check(): void {
    const now = statSync(this.path, { throwIfNoEntry: false })
    if (now && now.dev === this.dev && now.ino === this.ino) return
    throw storageUnavailable(
      `the database file ${this.path} was ${now ? "replaced" : "removed"} while the relay ran: writes are refused until the relay is restarted on the file it should use`,
    )
  }
}
