import { INBOX_PREFIX } from "@parley/shared"
import * as Y from "yjs"
import { openForCommand } from "../backend/open-for-command.js"
import { ConfigError, flag, STORAGE_FLAGS, storageLocation, subcommand } from "../config.js"
import { createLogger } from "../log.js"
import { RelayMetrics } from "../metrics.js"
import { RelayCore } from "../relay-core.js"
import { rebuildInboxes } from "./rebuild.js"

const CLI = subcommand("rebuild-inboxes", {
  synopsis: "[options]",
  positionals: [],
  flags: {
    ...STORAGE_FLAGS,
    "reset-damaged": flag({
      kind: "boolean",
      help: "start every inbox found damaged afresh, then derive it (its user's mutes are lost: restore it from a backup first to keep them)",
    }),
    help: flag({ kind: "boolean", help: "print this help" }),
  },
  about: `  Recomputes every user's inbox from the stored conversations and writes what
  differs. Run it while the relay is stopped (it opens the same storage).
  An inbox found damaged is skipped (and counted) unless --reset-damaged.
  Prints one JSON line: { conversations, written, removed, damaged, reset }.`,
})

/** `parley-relay rebuild-inboxes`: the operator's repair for derived inbox data. Returns the exit code. */
export async function runRebuildInboxesCli(
  argv: readonly string[],
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  let parsed: ReturnType<typeof CLI.parse>
  let location: ReturnType<typeof storageLocation>
  try {
    parsed = CLI.parse(argv, env)
    if (parsed.values.help) {
      out(CLI.usage)
      return 0
    }
    location = storageLocation(parsed.values, ["sqlite", "postgres"], env)
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    out(`parley-relay rebuild-inboxes: ${error.message}\n\n${CLI.usage}`)
    return 2
  }
  const backend = await openForCommand("rebuild-inboxes", location, parsed.values["data-dir"], out)
  if (!backend) return 1
  const core = new RelayCore({
    storage: backend.documents,
    log: createLogger("warn"),
    metrics: new RelayMetrics(),
  })
  try {
    // An inbox is derived data, but for the mutes its user wrote: started afresh only when asked.
    let reset = 0
    if (parsed.values["reset-damaged"])
      for (const { name } of await backend.documents.damaged()) {
        if (!name.startsWith(INBOX_PREFIX)) continue
        await backend.documents.restore(name, Y.encodeStateAsUpdate(new Y.Doc()))
        reset++
      }
    out(JSON.stringify({ ...(await rebuildInboxes(core, backend.documents)), reset }))
    return 0
  } finally {
    // Closing the core flushes the documents; then the backend closes its database.
    await core.close()
    await backend.close()
  }
}
