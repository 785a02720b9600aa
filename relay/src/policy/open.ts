import { join } from "node:path"
import Database from "better-sqlite3"
import { DEFAULT_STORAGE_TIMEOUT_MS, withDeadlines } from "../storage/guard.js"
import { AuthorizationPolicy } from "./authorization-policy.js"
import {
  type ClientBindingStore,
  MemoryClientBindingStore,
  SqliteClientBindingStore,
} from "./client-bindings.js"

/** The relay's default update policy and what to close on shutdown. */
export interface Authorization {
  /** The policy extension; its `stop` releases the bindings' database too. */
  readonly policy: AuthorizationPolicy
  /** Releases the bindings' database (file or connection pool), for use without a core. */
  close(): Promise<void>
}

/** File of the client-id bindings next to the documents. */
export const BINDINGS_FILE = "client-bindings.sqlite"

/** Where {@link openAuthorization} keeps the client-id bindings. */
export interface AuthorizationOptions {
  /** SQLite: `<dataDir>/client-bindings.sqlite`. */
  readonly dataDir?: string
  /** PostgreSQL: table `parley_client_bindings` in this database (wins over `dataDir`). */
  readonly databaseUrl?: string
  /** Hears of idle PostgreSQL connections the server dropped (the pool replaces them). */
  readonly onIdleError?: (error: Error) => void
  /**
   * Bound of every bindings call, in ms: a failure or a timeout refuses the
   * update with the retryable STORAGE_UNAVAILABLE. Default: the PostgreSQL
   * pool's own timeouts only.
   */
  readonly timeoutMs?: number
}

/**
 * The full authorization with its bindings, kept where the documents are so
 * that they survive a restart together: in PostgreSQL when `databaseUrl` is
 * given, in SQLite under `dataDir` when that is given (the default, embedded
 * deployment), in memory otherwise.
 */
export async function openAuthorization(options: AuthorizationOptions = {}): Promise<Authorization> {
  if (options.databaseUrl !== undefined) {
    // Loaded only here, as the storage loads its PostgreSQL backend: SQLite deployments never touch `pg`.
    const { PostgresClientBindingStore } = await import("./postgres-client-bindings.js")
    const store = await PostgresClientBindingStore.open(
      options.databaseUrl,
      options.onIdleError,
      options.timeoutMs,
    )
    const close = () => store.close()
    return { policy: new AuthorizationPolicy(bounded(store, options), close), close }
  }
  if (options.dataDir === undefined) {
    return { policy: new AuthorizationPolicy(new MemoryClientBindingStore()), close: async () => {} }
  }
  const db = new Database(join(options.dataDir, BINDINGS_FILE))
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = FULL")
  const store: ClientBindingStore = bounded(new SqliteClientBindingStore(db), options)
  const close = async () => {
    if (db.open) db.close()
  }
  return { policy: new AuthorizationPolicy(store, close), close }
}

/** A full disk or a lost database refuses the update retryably (STORAGE_UNAVAILABLE), never with INTERNAL. */
function bounded(store: ClientBindingStore, options: AuthorizationOptions): ClientBindingStore {
  return withDeadlines(store, options.timeoutMs ?? DEFAULT_STORAGE_TIMEOUT_MS, "client-id bindings")
}
