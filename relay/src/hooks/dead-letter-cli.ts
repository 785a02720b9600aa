import { existsSync } from "node:fs"
import { join } from "node:path"
import { type Backend, LEGACY_FILES, openBackend, SQLITE_FILE } from "../backend/index.js"
import { flag, parseStorageCommand, STORAGE_FLAGS, subcommand } from "../config.js"
import { redactedUrl } from "../startup-error.js"
import { type DeadLetterFilter, describeDeadLetter } from "./outbox.js"

const CLI = subcommand("dead-letters", {
  synopsis: "list|replay [options]",
  positionals: ["command"],
  flags: {
    ...STORAGE_FLAGS,
    "event-id": flag({ kind: "string", help: "replay: only this event" }),
    target: flag({ kind: "string", help: "replay: only this hook or webhook (e.g. hook:push.ts)" }),
    document: flag({ kind: "string", help: "replay: only this document" }),
    help: flag({ kind: "boolean", help: "print this help" }),
  },
  about: `  list    print the dead letters of the hook outbox, one JSON object a line
  replay  move the matching dead letters back to pending (all without a filter);
          a stopped relay delivers them when it starts. For a running relay use
          POST /admin/dead-letters/replay instead: it delivers them at once.
  The outbox lives where the relay keeps its documents: in the data directory
  (sqlite) or in the database of --database-url (postgres, required there).`,
})

/**
 * `parley-relay dead-letters ...`: the operator's view of the hook outbox (in
 * the SQLite data directory or the PostgreSQL database), usable while the
 * relay is down. Returns the exit code.
 */
export async function runDeadLetterCli(
  argv: readonly string[],
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const parsed = parseStorageCommand(CLI, "dead-letters", argv, env, out)
  if (typeof parsed === "number") return parsed
  const { values, location } = parsed
  const command = parsed.args[0]
  if (values.help || (command !== "list" && command !== "replay")) {
    out(CLI.usage)
    return values.help ? 0 : 2
  }
  let backend: Backend
  if (location.kind === "postgres") {
    try {
      backend = await openBackend({ kind: "postgres", dataDir: "", databaseUrl: location.databaseUrl })
    } catch (error) {
      out(
        `parley-relay dead-letters: cannot open the hook outbox in ${redactedUrl(location.databaseUrl)}: ${(error as Error).message}`,
      )
      return 1
    }
  } else {
    const dataDir = location.kind === "sqlite" ? location.dataDir : ""
    // A data directory of an earlier version keeps its outbox in a file of its own, merged on open.
    const files = [SQLITE_FILE, ...LEGACY_FILES.map((l) => l.file)]
    if (!files.some((file) => existsSync(join(dataDir, file)))) {
      out(`parley-relay dead-letters: no hook outbox at ${join(dataDir, SQLITE_FILE)}`)
      return 1
    }
    backend = await openBackend({ kind: "sqlite", dataDir })
  }
  try {
    if (command === "list") {
      for (const d of await backend.outbox.deadLetters()) {
        out(JSON.stringify(describeDeadLetter(d)))
      }
      return 0
    }
    const filter: DeadLetterFilter = {
      ...(values["event-id"] ? { eventId: values["event-id"] } : {}),
      ...(values.target ? { target: values.target } : {}),
      ...(values.document ? { document: values.document } : {}),
    }
    const replayed = await backend.outbox.replay(filter)
    out(`replayed ${replayed.length} dead letter(s); the relay delivers them when it next starts`)
    return 0
  } finally {
    await backend.close()
  }
}
