import { join } from "node:path"
import Database from "better-sqlite3"
import pg from "pg"
import { SQLITE_FILE } from "../../src/backend/sqlite.js"
import type { StorageTamper } from "../conformance/storage.js"

/** Damages the documents in `<dataDir>/parley.sqlite` with a connection of its own, as a bad disk or hand would. */
export function sqliteTamper(dataDir: string): StorageTamper {
  const run = async (sql: string, ...params: unknown[]) => {
    const db = new Database(join(dataDir, SQLITE_FILE))
    try {
      db.prepare(sql).run(...params)
    } finally {
      db.close()
    }
  }
  return {
    deleteUpdates: async (name, positions) => {
      for (const position of positions)
        await run("DELETE FROM updates WHERE doc = ? AND position = ?", name, position)
    },
    overwriteUpdate: (name, position, bytes) =>
      run("UPDATE updates SET data = ? WHERE doc = ? AND position = ?", Buffer.from(bytes), name, position),
    overwriteSnapshot: (name, bytes) =>
      run("UPDATE snapshots SET data = ? WHERE doc = ?", Buffer.from(bytes), name),
    deleteData: async (name) => {
      await run("DELETE FROM updates WHERE doc = ?", name)
      await run("DELETE FROM snapshots WHERE doc = ?", name)
    },
  }
}

/** Damages the documents in the PostgreSQL database at `url`; `end()` closes its pool. */
export function postgresTamper(url: string): StorageTamper & { end(): Promise<void> } {
  const pool = new pg.Pool({ connectionString: url, max: 1 })
  const run = async (sql: string, ...params: unknown[]) => {
    await pool.query(sql, params)
  }
  return {
    deleteUpdates: (name, positions) =>
      run("DELETE FROM parley_updates WHERE doc = $1 AND position = ANY($2::bigint[])", name, [...positions]),
    overwriteUpdate: (name, position, bytes) =>
      run(
        "UPDATE parley_updates SET data = $1 WHERE doc = $2 AND position = $3",
        Buffer.from(bytes),
        name,
        position,
      ),
    overwriteSnapshot: (name, bytes) =>
      run("UPDATE parley_snapshots SET data = $1 WHERE doc = $2", Buffer.from(bytes), name),
    deleteData: async (name) => {
      await run("DELETE FROM parley_updates WHERE doc = $1", name)
      await run("DELETE FROM parley_snapshots WHERE doc = $1", name)
    },
    end: () => pool.end(),
  }
}
