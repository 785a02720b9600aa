import type { storageLocation } from "../config.js"
import { reasonOf, redactedUrl } from "../startup-error.js"
import { openBackend } from "./index.js"
import type { Backend } from "./types.js"

/**
 * Opens the backend an offline command (`parley-relay rebuild-inboxes`,
 * `erase-user`) works on, with the relay stopped; when it cannot, writes one
 * line naming the command and where it looked (a PostgreSQL URL without its
 * password) and returns undefined, for the command to exit 1.
 */
export async function openForCommand(
  command: string,
  location: ReturnType<typeof storageLocation>,
  dataDir: string,
  out: (text: string) => void,
): Promise<Backend | undefined> {
  try {
    return await openBackend({
      kind: location.kind,
      dataDir,
      ...(location.kind === "postgres" ? { databaseUrl: location.databaseUrl } : {}),
    })
  } catch (error) {
    const where = location.kind === "postgres" ? redactedUrl(location.databaseUrl) : dataDir
    out(`parley-relay ${command}: cannot open the documents in ${where}: ${reasonOf(error)}`)
    return undefined
  }
}
