import { join } from "node:path"
import Database from "better-sqlite3"
import { SQLITE_FILE } from "../../src/backend/sqlite.js"
import type { HookEvent } from "../../src/hooks/events.js"

/** One event as the SQLite event log holds it. */
export interface StoredEvent {
  readonly id: number
  readonly event: HookEvent
}

/** The event log as stored in a relay's data directory, read from beside the relay (WAL lets a second process read). */
export function storedEventLog(dataDir: string): StoredEvent[] {
  const db = new Database(join(dataDir, SQLITE_FILE), { readonly: true, fileMustExist: true })
  try {
    return db
      .prepare<[], { id: number; payload: string }>("SELECT id, payload FROM event_log ORDER BY id")
      .all()
      .map((row) => ({ id: row.id, event: JSON.parse(row.payload) as HookEvent }))
  } finally {
    db.close()
  }
}
