import { join } from "node:path"
import Database from "better-sqlite3"
import { AuthorizationPolicy } from "./authorization-policy.js"
import {
  type ClientBindingStore,
  MemoryClientBindingStore,
  SqliteClientBindingStore,
} from "./client-bindings.js"

/** The relay's default update policy and what to close on shutdown. */
export interface Authorization {
  readonly policy: AuthorizationPolicy
  close(): void
}

/** File of the client-id bindings next to the documents. */
export const BINDINGS_FILE = "client-bindings.sqlite"

/**
 * The full authorization with its bindings: durable in SQLite under `dataDir`
 * when given (the default, embedded deployment), in memory otherwise.
 */
export function openAuthorization(options: { readonly dataDir?: string } = {}): Authorization {
  if (options.dataDir === undefined) {
    return { policy: new AuthorizationPolicy(new MemoryClientBindingStore()), close: () => {} }
  }
  const db = new Database(join(options.dataDir, BINDINGS_FILE))
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  const store: ClientBindingStore = new SqliteClientBindingStore(db)
  return { policy: new AuthorizationPolicy(store), close: () => db.close() }
}
