import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import type { storageLocation } from "../config.js"
import { reasonOf, redactedUrl } from "../startup-error.js"
import { lockForCommand, releasingOnClose } from "../storage/data-dir-lock.js"
import { DEFAULT_STORAGE_TIMEOUT_MS } from "../storage/guard.js"
import { lockPostgresForCommand } from "../storage/postgres-relays-lock.js"
import { LEGACY_FILES, openBackend, SQLITE_FILE } from "./index.js"
import type { Backend } from "./types.js"

/**
 * Opens the backend an offline command (`parley-relay rebuild-inboxes`,
 * `erase-user`) works on, with the relay stopped; when it cannot (a SQLite
 * directory a relay is using, see `lockDataDir`, or storage that does not
 * open), writes one line naming the command and where it looked (a PostgreSQL
 * URL without its password) and returns undefined, for the command to exit 1.
 */
export async function openForCommand(
  command: string,
  location: ReturnType<typeof storageLocation>,
  dataDir: string,
  out: (text: string) => void,
): Promise<Backend | undefined> {
  // A relay running on the same storage would write back what it holds in memory.
  let release: (() => void) | undefined
  if (location.kind === "sqlite") {
    // A typo, or another working directory than the relay's: the backend would create an empty store
    // there, and an erasure would report success for a user it never saw.
    if (![SQLITE_FILE, ...LEGACY_FILES.map((l) => l.file)].some((file) => existsSync(join(dataDir, file)))) {
      out(
        `parley-relay ${command}: no documents at ${join(resolve(dataDir), SQLITE_FILE)} (give the relay's --data-dir)`,
      )
      return undefined
    }
    release = lockForCommand(dataDir, command, out)
    if (!release) return undefined
  } else if (location.kind === "postgres") {
    release = await lockPostgresForCommand(location.databaseUrl, command, out, DEFAULT_STORAGE_TIMEOUT_MS)
    if (!release) return undefined
  }
  try {
    const backend = await openBackend({
      kind: location.kind,
      dataDir,
      ...(location.kind === "postgres" ? { databaseUrl: location.databaseUrl } : {}),
    })
    return release ? releasingOnClose(backend, release) : backend
  } catch (error) {
    release?.()
    const where = location.kind === "postgres" ? redactedUrl(location.databaseUrl) : dataDir
    out(`parley-relay ${command}: cannot open the documents in ${where}: ${reasonOf(error)}`)
    return undefined
  }
}
