import { parseArgs } from "node:util"
import { openBackend } from "../backend/index.js"
import { createLogger } from "../log.js"
import { RelayMetrics } from "../metrics.js"
import { RelayCore } from "../relay-core.js"
import type { StorageKind } from "../storage/index.js"
import { rebuildInboxes } from "./rebuild.js"

const USAGE = `Usage: parley-relay rebuild-inboxes [--data-dir DIR] [--storage sqlite|postgres] [--database-url URL]

  Recomputes every user's inbox from the stored conversations and writes what
  differs. Run it while the relay is stopped (it opens the same storage).
  Prints one JSON line: { conversations, written, removed }.`

/** `parley-relay rebuild-inboxes`: the operator's repair for derived inbox data. Returns the exit code. */
export async function runRebuildInboxesCli(
  argv: readonly string[],
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  let values: { "data-dir"?: string; storage?: string; "database-url"?: string; help?: boolean }
  try {
    values = parseArgs({
      args: [...argv],
      options: {
        "data-dir": { type: "string" },
        storage: { type: "string" },
        "database-url": { type: "string" },
        help: { type: "boolean" },
      },
    }).values
  } catch (error) {
    out(`parley-relay rebuild-inboxes: ${(error as Error).message}\n\n${USAGE}`)
    return 2
  }
  if (values.help) {
    out(USAGE)
    return 0
  }
  const kind = (values.storage ?? env.PARLEY_STORAGE ?? "sqlite") as StorageKind
  if (kind !== "sqlite" && kind !== "postgres") {
    out(`parley-relay rebuild-inboxes: --storage must be sqlite or postgres\n\n${USAGE}`)
    return 2
  }
  const databaseUrl = values["database-url"] ?? env.PARLEY_DATABASE_URL
  const backend = await openBackend({
    kind,
    dataDir: values["data-dir"] ?? env.PARLEY_DATA_DIR ?? "./data",
    ...(databaseUrl ? { databaseUrl } : {}),
  })
  const core = new RelayCore({
    storage: backend.documents,
    log: createLogger("warn"),
    metrics: new RelayMetrics(),
  })
  try {
    out(JSON.stringify(await rebuildInboxes(core, backend.documents)))
    return 0
  } finally {
    // Closing the core flushes the documents; then the backend closes its database.
    await core.close()
    await backend.close()
  }
}
