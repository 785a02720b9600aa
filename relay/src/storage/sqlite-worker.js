// @ts-check
/**
 * The database side of `SqliteStorage`, on its own thread. better-sqlite3 is
 * synchronous and `synchronous=FULL` makes every commit wait for the disk;
 * here that wait blocks only this thread, while the relay's event loop keeps
 * reading, checking and broadcasting (and gathering the next group commit).
 *
 * Plain JavaScript (type-checked through JSDoc) because a worker thread starts
 * a fresh module loader, without the TypeScript hooks the relay's main thread
 * may run under.
 *
 * Requests: `{ id, op, args }`; replies: `{ id, result }` or `{ id, error }`.
 */
import { parentPort, workerData } from "node:worker_threads"
import Database from "better-sqlite3"

const SCHEMA = `
CREATE TABLE IF NOT EXISTS updates (
  doc TEXT NOT NULL,
  position INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (doc, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
  doc TEXT PRIMARY KEY,
  data BLOB NOT NULL,
  through INTEGER NOT NULL
) WITHOUT ROWID;
`

/** @type {import("node:worker_threads").MessagePort} */
const port = /** @type {never} */ (parentPort)
const db = new Database(/** @type {{ file: string }} */ (workerData).file)
db.pragma("journal_mode = WAL")
db.pragma("synchronous = FULL")
db.exec(SCHEMA)

const statements = {
  snapshot: db.prepare("SELECT data, through FROM snapshots WHERE doc = ?"),
  updates: db.prepare("SELECT position, data FROM updates WHERE doc = ? ORDER BY position"),
  lastPosition: db.prepare(
    "SELECT MAX(p) AS last FROM (SELECT MAX(position) AS p FROM updates WHERE doc = ? UNION ALL SELECT through AS p FROM snapshots WHERE doc = ?)",
  ),
  insert: db.prepare("INSERT INTO updates (doc, position, data) VALUES (?, ?, ?)"),
  upsertSnapshot: db.prepare(
    "INSERT INTO snapshots (doc, data, through) VALUES (?, ?, ?) ON CONFLICT(doc) DO UPDATE SET data = excluded.data, through = MAX(snapshots.through, excluded.through)",
  ),
  trim: db.prepare("DELETE FROM updates WHERE doc = ? AND position <= ?"),
  names: db.prepare("SELECT doc FROM updates UNION SELECT doc FROM snapshots ORDER BY doc"),
}

/** Next log position per document, once known. */
const next = new Map()

/** @param {string} name */
function nextPosition(name) {
  let position = next.get(name)
  if (position === undefined) {
    const row = /** @type {{ last: number | null } | undefined} */ (statements.lastPosition.get(name, name))
    position = (row?.last ?? 0) + 1
    next.set(name, position)
  }
  return position
}

const appendBatch = db.transaction(
  /** @param {{ name: string, updates: Uint8Array[] }[]} batch */
  (batch) =>
    batch.map(({ name, updates }) =>
      updates.map((update) => {
        const position = nextPosition(name)
        statements.insert.run(name, position, update)
        next.set(name, position + 1)
        return position
      }),
    ),
)

const handlers = {
  /** @param {{ name: string, updates: Uint8Array[] }[]} batch */
  append(batch) {
    try {
      return appendBatch(batch)
    } catch (error) {
      // Positions handed out inside the rolled-back transaction are free again.
      next.clear()
      throw error
    }
  },
  /** @param {string} name */
  load: db.transaction((name) => {
    const snapshot = /** @type {{ data: Buffer } | undefined} */ (statements.snapshot.get(name))
    const rows = /** @type {{ position: number, data: Buffer }[]} */ (statements.updates.all(name))
    return {
      snapshot: snapshot ? snapshot.data : null,
      updates: rows.map((row) => ({ position: row.position, update: row.data })),
    }
  }),
  /**
   * @param {string} name
   * @param {Uint8Array} snapshot
   * @param {number} through
   */
  compact(name, snapshot, through) {
    db.transaction(() => {
      statements.upsertSnapshot.run(name, snapshot, through)
      statements.trim.run(name, through)
    })()
    if ((next.get(name) ?? 0) <= through) next.set(name, through + 1)
  },
  list() {
    return /** @type {{ doc: string }[]} */ (statements.names.all()).map((row) => row.doc)
  },
  close() {
    db.close()
  },
}

port.on(
  "message",
  /** @param {{ id: number, op: keyof typeof handlers, args: unknown[] }} request */
  ({ id, op, args }) => {
    try {
      const result = /** @type {(...args: unknown[]) => unknown} */ (handlers[op])(...args)
      port.postMessage({ id, result })
    } catch (error) {
      const { message, code } = /** @type {Error & { code?: string }} */ (error)
      port.postMessage({ id, error: { message, code } })
    }
    if (op === "close") port.close()
  },
)
port.postMessage({ id: 0, result: "ready" })
