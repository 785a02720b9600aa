import { existsSync } from "node:fs"
import { join } from "node:path"
import { ErrorCode, ParleyError } from "@parley/shared"
import Database from "better-sqlite3"
import * as Y from "yjs"
import { type Backend, openBackend, SQLITE_FILE } from "../backend/index.js"
import { flag, parseStorageCommand, STORAGE_FLAGS, subcommand } from "../config.js"
import { redactedUrl } from "../startup-error.js"
import { lockForCommand, releasingOnClose } from "./data-dir-lock.js"
import { DEFAULT_STORAGE_TIMEOUT_MS } from "./guard.js"
import { loadVerified } from "./integrity.js"
import { lockPostgresForCommand } from "./postgres-relays-lock.js"
import type { RelayStorage, StoredDocument } from "./types.js"

const CLI = subcommand("damaged", {
  synopsis:
    "list [options]\n       parley-relay damaged restore <document> --from <backup> [--force] [options]",
  positionals: ["command", "document"],
  flags: {
    ...STORAGE_FLAGS,
    from: flag({ kind: "string", help: "restore: the backup (a parley.sqlite copy, or a database URL)" }),
    force: flag({ kind: "boolean", help: "restore: replace a document that is not damaged too" }),
    help: flag({ kind: "boolean", help: "print this help" }),
  },
  about: `  list     print every document the relay found damaged (refused with 4510), one JSON
           object a line: {"document","reason","detectedAt","lastPosition"}. Safe while
           the relay runs.
  restore  replace everything stored of <document> by its state in a backup, and clear
           its damage. STOP THE RELAY FIRST: a running relay keeps refusing a document it
           found damaged until it restarts. --from is a backup copy of parley.sqlite (made
           with sqlite3 ".backup" or VACUUM INTO) for --storage sqlite, or the connection
           string of a database restored from a dump for --storage postgres. The backup's
           copy must load whole. Only a damaged document is replaced, unless --force.
           Prints {"document","restoredThrough"}.
  The documents live in the data directory (sqlite) or in the database of
  --database-url (postgres, required there).`,
})

/**
 * `parley-relay damaged ...`: the operator's view of damaged documents and their
 * repair from a backup copy. Returns the exit code.
 */
export async function runDamagedCli(
  argv: readonly string[],
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const parsed = parseStorageCommand(CLI, "damaged", argv, env, out)
  if (typeof parsed === "number") return parsed
  const { values, location } = parsed
  const [command, document] = parsed.args
  const valid =
    (command === "list" && document === undefined) ||
    (command === "restore" && document !== undefined && values.from !== undefined)
  if (values.help || !valid) {
    out(CLI.usage)
    return values.help ? 0 : 2
  }
  let backend: Backend
  if (location.kind === "postgres") {
    const release =
      command === "restore"
        ? await lockPostgresForCommand(
            location.databaseUrl,
            "damaged restore",
            out,
            DEFAULT_STORAGE_TIMEOUT_MS,
          )
        : undefined
    if (command === "restore" && !release) return 1
    try {
      backend = await openBackend({ kind: "postgres", dataDir: "", databaseUrl: location.databaseUrl })
    } catch (error) {
      await release?.()
      out(
        `parley-relay damaged: cannot open the documents in ${redactedUrl(location.databaseUrl)}: ${(error as Error).message}`,
      )
      return 1
    }
    if (release) backend = releasingOnClose(backend, release)
  } else {
    const dataDir = location.kind === "sqlite" ? location.dataDir : ""
    if (!existsSync(join(dataDir, SQLITE_FILE))) {
      out(`parley-relay damaged: no documents at ${join(dataDir, SQLITE_FILE)}`)
      return 1
    }
    // Listing runs beside a relay; a restore needs it stopped (it would keep the damaged copy in memory).
    const release = command === "restore" ? lockForCommand(dataDir, "damaged restore", out) : undefined
    if (command === "restore" && !release) return 1
    backend = await openBackend({ kind: "sqlite", dataDir }).catch((error: unknown) => {
      release?.()
      throw error
    })
    if (release) backend = releasingOnClose(backend, release)
  }
  const storage = backend.documents
  const kind = location.kind === "postgres" ? "postgres" : "sqlite"
  try {
    if (command === "list") {
      for (const d of await storage.damaged()) {
        out(
          JSON.stringify({
            document: d.name,
            reason: d.reason,
            detectedAt: new Date(d.detectedAt).toISOString(),
            lastPosition: d.lastPosition,
          }),
        )
      }
      return 0
    }
    return await restore(storage, kind, document!, values.from!, values.force === true, out)
  } finally {
    await backend.close()
  }
}

async function restore(
  storage: RelayStorage,
  kind: "sqlite" | "postgres",
  name: string,
  from: string,
  force: boolean,
  out: (line: string) => void,
): Promise<number> {
  const fail = (message: string) => {
    out(`parley-relay damaged restore: ${message}`)
    return 1
  }
  if (!force && !(await isDamaged(storage, name)))
    return fail(`${name} is not damaged; give --force to replace it by the backup's copy anyway`)
  let backup: StoredDocument
  try {
    backup = kind === "sqlite" ? readSqliteBackup(from, name) : await readPostgresBackup(from, name)
  } catch (error) {
    return fail(`cannot read the backup ${from}: ${(error as Error).message}`)
  }
  if (backup.snapshot === null && backup.updates.length === 0)
    return fail(`the backup holds nothing of ${name}`)
  let doc: Y.Doc
  try {
    doc = loadVerified(backup)
  } catch (error) {
    return fail(`the backup's copy of ${name} is damaged too: ${(error as Error).message}`)
  }
  const restoredThrough = await storage.restore(name, Y.encodeStateAsUpdate(doc))
  out(JSON.stringify({ document: name, restoredThrough }))
  return 0
}

/** Recorded as damaged, or found so now (the relay may not have loaded it since the damage). */
async function isDamaged(storage: RelayStorage, name: string): Promise<boolean> {
  try {
    const stored = await storage.load(name)
    if (stored.record === null && stored.snapshot === null && stored.updates.length === 0) return false
    loadVerified(stored)
    return false
  } catch (error) {
    if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED) return true
    throw error
  }
}

/** One document as a SQLite backup copy holds it (opened read-only: the backup is left as it is). */
function readSqliteBackup(file: string, name: string): StoredDocument {
  const db = new Database(file, { readonly: true, fileMustExist: true })
  try {
    // A backup made before checksums has no such column: its rows are checked by loading them only.
    const crc = db
      .prepare<[], { name: string }>("PRAGMA table_info(updates)")
      .all()
      .some((c) => c.name === "crc")
      ? "crc"
      : "NULL AS crc"
    const snapshot = db
      .prepare<[string], { data: Buffer; through: number; crc: number | null }>(
        `SELECT data, through, ${crc} FROM snapshots WHERE doc = ?`,
      )
      .get(name)
    const updates = db
      .prepare<[string], { position: number; data: Buffer; crc: number | null }>(
        `SELECT position, data, ${crc} FROM updates WHERE doc = ? ORDER BY position`,
      )
      .all(name)
    return {
      snapshot: snapshot ? new Uint8Array(snapshot.data) : null,
      through: snapshot?.through ?? 0,
      snapshotChecksum: snapshot?.crc ?? null,
      updates: updates.map((row) => ({
        position: row.position,
        update: new Uint8Array(row.data),
        checksum: row.crc,
      })),
      // A backup's own catalog is not consulted: what it holds is checked by loading it.
      record: null,
    }
  } finally {
    db.close()
  }
}

/** One document as a restored PostgreSQL database holds it. */
async function readPostgresBackup(url: string, name: string): Promise<StoredDocument> {
  const { default: pg } = await import("pg")
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const columns = await client.query(
      "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('parley_updates') AND attname = 'crc'",
    )
    // A backup made before checksums has no such column: its rows are checked by loading them only.
    const crc = columns.rows.length > 0 ? "crc" : "NULL::integer AS crc"
    const snapshot = await client.query<{ data: Buffer; through: string; crc: number | null }>(
      `SELECT data, through, ${crc} FROM parley_snapshots WHERE doc = $1`,
      [name],
    )
    const updates = await client.query<{ position: string; data: Buffer; crc: number | null }>(
      `SELECT position, data, ${crc} FROM parley_updates WHERE doc = $1 ORDER BY position`,
      [name],
    )
    const row = snapshot.rows[0]
    return {
      snapshot: row ? new Uint8Array(row.data) : null,
      through: Number(row?.through ?? 0),
      snapshotChecksum: row?.crc ?? null,
      updates: updates.rows.map((r) => ({
        position: Number(r.position),
        update: new Uint8Array(r.data),
        checksum: r.crc,
      })),
      record: null,
    }
  } finally {
    await client.end()
  }
}
