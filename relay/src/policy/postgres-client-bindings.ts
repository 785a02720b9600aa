import type pg from "pg"
import type { ClientBinding, ClientBindingStore } from "./client-bindings.js"

// BIGINT: Yjs client ids are unsigned 32-bit numbers, above PostgreSQL's signed INTEGER.
/** The bindings' table (see {@link PostgresClientBindingStore}), created by the backend. */
export const BINDINGS_SCHEMA = `CREATE TABLE IF NOT EXISTS parley_client_bindings (
  document TEXT NOT NULL,
  client_id BIGINT NOT NULL,
  principal TEXT NOT NULL,
  PRIMARY KEY (document, client_id)
);`

/**
 * Bindings in PostgreSQL, table `parley_client_bindings` of the storage's
 * database (the connection string's schema, by default `public`). Each `bind`
 * is one statement that commits once PostgreSQL flushed its WAL (default
 * `synchronous_commit`), so a binding is durable when `bind` resolves, and the
 * first owner of an id wins also across relays sharing the database.
 */
export class PostgresClientBindingStore implements ClientBindingStore {
  /** `pool` is the backend's, with {@link BINDINGS_SCHEMA} created. */
  constructor(private readonly pool: pg.Pool) {}

  async load(name: string): Promise<Map<number, string>> {
    const { rows } = await this.pool.query<{ client_id: string; principal: string }>(
      "SELECT client_id, principal FROM parley_client_bindings WHERE document = $1",
      [name],
    )
    return new Map(rows.map((row) => [Number(row.client_id), row.principal]))
  }

  async bind(name: string, entries: readonly ClientBinding[]): Promise<Map<number, string>> {
    if (entries.length === 0) return new Map()
    const ids = entries.map(([clientId]) => clientId)
    // One statement: all or nothing. DO NOTHING keeps an id's first owner, against rows already stored
    // (by this relay or another) and against an earlier entry of the same call (rows go in array order).
    // The rows it inserted answer for themselves; the others are read after it.
    const { rows } = await this.pool.query<{ client_id: string; principal: string }>(
      `INSERT INTO parley_client_bindings (document, client_id, principal)
       SELECT $1, b.client_id, b.principal FROM unnest($2::bigint[], $3::text[]) AS b(client_id, principal)
       ON CONFLICT (document, client_id) DO NOTHING
       RETURNING client_id, principal`,
      [name, ids, entries.map(([, key]) => key)],
    )
    const owners = new Map(rows.map((row) => [Number(row.client_id), row.principal]))
    const others = [...new Set(ids.filter((id) => !owners.has(id)))]
    if (others.length > 0) {
      // A statement of its own: it sees a row another relay committed while the insert waited on it.
      const stored = await this.pool.query<{ client_id: string; principal: string }>(
        "SELECT client_id, principal FROM parley_client_bindings WHERE document = $1 AND client_id = ANY($2::bigint[])",
        [name, others],
      )
      for (const row of stored.rows) owners.set(Number(row.client_id), row.principal)
    }
    return owners
  }

  async drop(name: string): Promise<void> {
    await this.pool.query("DELETE FROM parley_client_bindings WHERE document = $1", [name])
  }
}
