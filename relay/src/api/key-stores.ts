import type Database from "better-sqlite3"
import type pg from "pg"
import { type ApiKeyRecord, type ApiKeyRow, type ApiKeyStore, keyNameConflict, recordOfRow } from "./keys.js"

const COLUMNS = "id, name, scopes, secret_hash, created_at, revoked_at"

/** The keys' table; one active key per name (a partial unique index, in SQLite and PostgreSQL alike). */
export const API_KEYS_SCHEMA = `CREATE TABLE IF NOT EXISTS parley_api_keys (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  scopes TEXT NOT NULL,
  secret_hash TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS parley_api_keys_active_name ON parley_api_keys (name) WHERE revoked_at IS NULL;`

/** Keys in the relay's SQLite database (synchronous transactions: durable when a call resolves). */
export class SqliteApiKeyStore implements ApiKeyStore {
  constructor(private readonly db: Database.Database) {
    db.exec(API_KEYS_SCHEMA)
  }

  async create(record: ApiKeyRecord): Promise<void> {
    try {
      this.db
        .prepare(`INSERT INTO parley_api_keys (${COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)`)
        .run(record.id, record.name, JSON.stringify(record.scopes), record.secretHash, record.createdAt)
    } catch (error) {
      if ((error as { code?: string }).code?.startsWith("SQLITE_CONSTRAINT"))
        throw keyNameConflict(record.name)
      throw error
    }
  }

  async get(id: string): Promise<ApiKeyRecord | undefined> {
    const row = this.db.prepare(`SELECT ${COLUMNS} FROM parley_api_keys WHERE id = ?`).get(id) as
      | ApiKeyRow
      | undefined
    return row && recordOfRow(row)
  }

  async list(): Promise<ApiKeyRecord[]> {
    const rows = this.db
      .prepare(`SELECT ${COLUMNS} FROM parley_api_keys ORDER BY created_at, id`)
      .all() as ApiKeyRow[]
    return rows.map(recordOfRow)
  }

  async revoke(idOrName: string, now: number): Promise<boolean> {
    const result = this.db
      .prepare("UPDATE parley_api_keys SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL")
      .run(now, idOrName, idOrName)
    return result.changes > 0
  }
}

/** Keys in PostgreSQL, table `parley_api_keys` of the backend's schema. */
export class PostgresApiKeyStore implements ApiKeyStore {
  /** `pool` is the backend's, with {@link API_KEYS_SCHEMA} created. */
  constructor(private readonly pool: pg.Pool) {}

  async create(record: ApiKeyRecord): Promise<void> {
    try {
      await this.pool.query(`INSERT INTO parley_api_keys (${COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL)`, [
        record.id,
        record.name,
        JSON.stringify(record.scopes),
        record.secretHash,
        record.createdAt,
      ])
    } catch (error) {
      if ((error as { code?: string }).code === "23505") throw keyNameConflict(record.name)
      throw error
    }
  }

  async get(id: string): Promise<ApiKeyRecord | undefined> {
    const { rows } = await this.pool.query<ApiKeyRow>(
      `SELECT ${COLUMNS} FROM parley_api_keys WHERE id = $1`,
      [id],
    )
    return rows[0] && recordOfRow(rows[0])
  }

  async list(): Promise<ApiKeyRecord[]> {
    const { rows } = await this.pool.query<ApiKeyRow>(
      `SELECT ${COLUMNS} FROM parley_api_keys ORDER BY created_at, id`,
    )
    return rows.map(recordOfRow)
  }

  async revoke(idOrName: string, now: number): Promise<boolean> {
    const result = await this.pool.query(
      "UPDATE parley_api_keys SET revoked_at = $1 WHERE (id = $2 OR name = $2) AND revoked_at IS NULL",
      [now, idOrName],
    )
    return (result.rowCount ?? 0) > 0
  }
}
