import { existsSync } from "node:fs"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { type DeadLetterFilter, describeDeadLetter } from "./outbox.js"
import { OUTBOX_FILE, SqliteOutbox } from "./sqlite-outbox.js"

const USAGE = `Usage: parley-relay dead-letters list|replay [--data-dir DIR] [--event-id ID] [--target NAME] [--document NAME]

  list    print the dead letters of the hook outbox in DIR, one JSON object a line
  replay  move the matching dead letters back to pending (all without a filter);
          a stopped relay delivers them when it starts. For a running relay use
          POST /admin/dead-letters/replay instead: it delivers them at once.
  --data-dir defaults to PARLEY_DATA_DIR or ./data.`

/**
 * `parley-relay dead-letters ...`: the operator's view of the SQLite outbox in
 * a data directory, usable while the relay is down. Returns the exit code.
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
  const dataDir = values["data-dir"] ?? env.PARLEY_DATA_DIR ?? "./data"
  if (!existsSync(join(dataDir, OUTBOX_FILE))) {
    out(`parley-relay dead-letters: no hook outbox at ${join(dataDir, OUTBOX_FILE)}`)
    return 1
  }
  const outbox = new SqliteOutbox(dataDir)
  try {
    if (command === "list") {
      for (const d of await outbox.deadLetters()) {
        out(JSON.stringify(describeDeadLetter(d)))
      }
      return 0
    }
    const filter: DeadLetterFilter = {
      ...(values["event-id"] ? { eventId: values["event-id"] } : {}),
      ...(values.target ? { target: values.target } : {}),
      ...(values.document ? { document: values.document } : {}),
    }
    const replayed = await outbox.replay(filter)
    out(`replayed ${replayed.length} dead letter(s); the relay delivers them when it next starts`)
    return 0
  } finally {
    await outbox.close()
  }
}

function parse(argv: readonly string[]) {
  return parseArgs({
    args: [...argv],
    allowPositionals: true,
    strict: true,
    options: {
      "data-dir": { type: "string" },
      "event-id": { type: "string" },
      target: { type: "string" },
      document: { type: "string" },
      help: { type: "boolean" },
    },
  })
}
