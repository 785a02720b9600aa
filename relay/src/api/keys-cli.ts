import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { ParleyError } from "@parley/shared"
import { type Backend, openBackend, SQLITE_FILE } from "../backend/index.js"
import { flag, parseStorageCommand, STORAGE_FLAGS, subcommand } from "../config.js"
import { redactedUrl } from "../startup-error.js"
import { API_SCOPES, describeKey, newApiKey, parseScopes } from "./keys.js"

const CLI = subcommand("keys", {
  synopsis: "create NAME --scopes S1,S2 | list | revoke ID|NAME [options]",
  positionals: ["command", "name"],
  flags: {
    ...STORAGE_FLAGS,
    scopes: flag({ kind: "string", help: `create: comma-separated scopes (${API_SCOPES.join(", ")})` }),
    help: flag({ kind: "boolean", help: "print this help" }),
  },
  about: `  create  make an API key for the service NAME and print it ONCE (only its
          SHA-256 is stored: a lost key cannot be shown again, only revoked)
  list    print every key (id, name, scopes, times; never a secret), one JSON a line
  revoke  revoke the active key with this id or name; a running relay refuses it
          within 5 seconds (it reads a key again every 5 s)
  Keys live where the relay keeps its documents: in the data directory (sqlite)
  or in the database of --database-url (postgres). See relay/API.md.`,
})

/**
 * `parley-relay keys ...`: the HTTP API's service keys, in the relay's
 * backend. Returns the exit code. `out` gets the results (stdout); `note`
 * (stderr) says which store was used, and when `create` had to make a new,
 * empty one, that only a relay started on it accepts the key.
 */
export async function runKeysCli(
  argv: readonly string[],
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  env: NodeJS.ProcessEnv = process.env,
  note: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
): Promise<number> {
  const parsed = parseStorageCommand(CLI, "keys", argv, env, out)
  if (typeof parsed === "number") return parsed
  const { values, location, args } = parsed
  const [command, name] = args
  if (values.help || !["create", "list", "revoke"].includes(command ?? "") || (command !== "list" && !name)) {
    out(CLI.usage)
    return values.help ? 0 : 2
  }
  let backend: Backend
  try {
    if (location.kind === "postgres") {
      backend = await openBackend({ kind: "postgres", dataDir: "", databaseUrl: location.databaseUrl })
      note(`parley-relay keys: store: PostgreSQL ${redactedUrl(location.databaseUrl)} (--database-url)`)
    } else {
      const dataDir = location.kind === "sqlite" ? location.dataDir : ""
      const file = resolve(dataDir, SQLITE_FILE)
      const existed = existsSync(file)
      // Keys may be made before the relay first starts; listing or revoking needs its database.
      if (command !== "create" && !existed) {
        out(`parley-relay keys: no relay database at ${join(dataDir, SQLITE_FILE)}`)
        return 1
      }
      backend = await openBackend({ kind: "sqlite", dataDir })
      // A key made in another directory than the relay's is refused by it with a plain 401: say where it went.
      note(`parley-relay keys: store: SQLite ${file} (--data-dir ${resolve(dataDir)})`)
      if (!existed)
        note(
          `parley-relay keys: no relay database was there: created a new, empty one. Only a relay whose data directory is ${resolve(dataDir)} accepts this key; if your relay keeps its data elsewhere, run this again with its --data-dir (or --database-url)`,
        )
    }
  } catch (error) {
    const where = location.kind === "postgres" ? redactedUrl(location.databaseUrl) : "the data directory"
    out(`parley-relay keys: cannot open ${where}: ${(error as Error).message}`)
    return 1
  }
  try {
    if (command === "list") {
      for (const key of await backend.keys.list()) out(JSON.stringify(describeKey(key)))
      return 0
    }
    if (command === "revoke") {
      if (!(await backend.keys.revoke(name!, Date.now()))) {
        out(`parley-relay keys: no active key ${JSON.stringify(name)}`)
        return 1
      }
      out(`revoked ${name}`)
      return 0
    }
    const { key, record } = newApiKey(name!, parseScopes(values.scopes ? [values.scopes] : []))
    await backend.keys.create(record)
    out(JSON.stringify({ ...describeKey(record), key }))
    return 0
  } catch (error) {
    if (!(error instanceof ParleyError)) throw error
    out(`parley-relay keys: ${error.message}`)
    return 2
  } finally {
    await backend.close()
  }
}
