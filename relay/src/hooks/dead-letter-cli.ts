import { existsSync } from "node:fs"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { type Backend, LEGACY_FILES, openBackend, SQLITE_FILE } from "../backend/index.js"
import { DEFAULT_DATABASE_URL } from "../storage/index.js"
import { type DeadLetterFilter, describeDeadLetter } from "./outbox.js"

const USAGE = `Usage: parley-relay dead-letters list|replay [--storage sqlite|postgres] [--data-dir DIR]
         [--database-url URL] [--event-id ID] [--target NAME] [--document NAME]

  list    print the dead letters of the hook outbox, one JSON object a line
  replay  move the matching dead letters back to pending (all without a filter);
          a stopped relay delivers them when it starts. For a running relay use
          POST /admin/dead-letters/replay instead: it delivers them at once.
  --storage defaults to PARLEY_STORAGE or sqlite: the outbox lives where the relay keeps
  its documents, in DIR (--data-dir, PARLEY_DATA_DIR or ./data) or in the database of
  --database-url (DATABASE_URL, or postgres://postgres@127.0.0.1:5432/test).`

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
  let parsed: ReturnType<typeof parse>
  try {
    parsed = parse(argv)
  } catch (error) {
    out(`parley-relay dead-letters: ${(error as Error).message}\n\n${USAGE}`)
    return 2
  }
  const { positionals, values } = parsed
  const command = positionals[0]
  if (values.help || (command !== "list" && command !== "replay") || positionals.length > 1) {
    out(USAGE)
    return values.help ? 0 : 2
  }
  const storage = values.storage ?? env.PARLEY_STORAGE ?? "sqlite"
  const dataDir = values["data-dir"] ?? env.PARLEY_DATA_DIR ?? "./data"
  let backend: Backend
  if (storage === "postgres") {
    const url = values["database-url"] ?? env.DATABASE_URL ?? DEFAULT_DATABASE_URL
    try {
      backend = await openBackend({ kind: "postgres", dataDir, databaseUrl: url })
    } catch (error) {
      out(`parley-relay dead-letters: cannot open the hook outbox in ${url}: ${(error as Error).message}`)
      return 1
    }
  } else if (storage === "sqlite") {
    // A data directory of an earlier version keeps its outbox in a file of its own, merged on open.
    const files = [SQLITE_FILE, ...LEGACY_FILES.map((l) => l.file)]
    if (!files.some((file) => existsSync(join(dataDir, file)))) {
      out(`parley-relay dead-letters: no hook outbox at ${join(dataDir, SQLITE_FILE)}`)
      return 1
    }
    backend = await openBackend({ kind: "sqlite", dataDir })
  } else {
    out(
      `parley-relay dead-letters: the hook outbox lives in sqlite or postgres storage, not ${storage}\n\n${USAGE}`,
    )
    return 2
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

function parse(argv: readonly string[]) {
  return parseArgs({
    args: [...argv],
    allowPositionals: true,
    strict: true,
    options: {
      storage: { type: "string" },
      "data-dir": { type: "string" },
      "database-url": { type: "string" },
      "event-id": { type: "string" },
      target: { type: "string" },
      document: { type: "string" },
      help: { type: "boolean" },
    },
  })
}
