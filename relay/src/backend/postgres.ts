import type pg from "pg"
import { IDEMPOTENCY_SCHEMA, PostgresIdempotencyStore } from "../api/idempotency.js"
import { API_KEYS_SCHEMA, PostgresApiKeyStore } from "../api/key-stores.js"
import { BLOBS_SCHEMA, PostgresBlobStore } from "../attachments/postgres-blob-store.js"
import { POSTGRES_HISTORY_SCHEMA, PostgresHistoryStore } from "../history/store.js"
import { adoptMessageColumn, EVENT_LOG_SCHEMA, PostgresEventLog } from "../hooks/postgres-event-log.js"
import { OUTBOX_SCHEMA, PostgresOutbox } from "../hooks/postgres-outbox.js"
import { BINDINGS_SCHEMA, PostgresClientBindingStore } from "../policy/postgres-client-bindings.js"
import { openPool } from "../postgres.js"
import { PostgresContentPurge, PURGES_OWED_SCHEMA } from "../purge/content-purge.js"
import { PostgresPushSubscriptionStore, PUSH_SUBSCRIPTIONS_SCHEMA } from "../push/store.js"
import { type DatabaseFence, DOCUMENTS_SCHEMA, PostgresStorage } from "../storage/postgres.js"
import type { Backend } from "./types.js"

/**
 * Every table of the PostgreSQL backend, for {@link PostgresBackend.open} and for a clustered relay's
 * backend (which adds its fencing tokens): one list, so a store added later gets its table in both.
 */
export const POSTGRES_BACKEND_SCHEMA = [
  DOCUMENTS_SCHEMA,
  OUTBOX_SCHEMA,
  EVENT_LOG_SCHEMA,
  BINDINGS_SCHEMA,
  POSTGRES_HISTORY_SCHEMA,
  API_KEYS_SCHEMA,
  IDEMPOTENCY_SCHEMA,
  PUSH_SUBSCRIPTIONS_SCHEMA,
  BLOBS_SCHEMA,
  PURGES_OWED_SCHEMA,
].join("\n")

/** How {@link PostgresBackend.open} connects. */
export interface PostgresBackendOptions {
  /** Hears of connections the server dropped, idle or in use (the pool replaces them). */
  readonly onIdleError?: (error: Error) => void
  /** Bound of every connect, query and statement, in ms. */
  readonly timeoutMs?: number
  /** A relay without a cluster: the token its document writes check (see `DatabaseFence`). */
  readonly fence?: DatabaseFence
}

/**
 * The backend on PostgreSQL: one connection pool over the tables of the
 * documents (`parley_updates`, `parley_snapshots`, `parley_documents`), of the
 * hook outbox (`parley_hook_*`) and of the client-id bindings
 * (`parley_client_bindings`), in the connection string's schema (by default
 * `public`). Every commit returns once PostgreSQL has flushed its WAL (its
 * default `synchronous_commit`). Several relays may share a database.
 */
export class PostgresBackend implements Backend {
  readonly kind = "postgres"
  readonly documents: PostgresStorage
  readonly outbox: PostgresOutbox
  readonly events: PostgresEventLog
  readonly bindings: PostgresClientBindingStore
  readonly history: PostgresHistoryStore
  readonly keys: PostgresApiKeyStore
  readonly idempotency: PostgresIdempotencyStore
  readonly purge: PostgresContentPurge
  readonly pushSubscriptions: PostgresPushSubscriptionStore
  readonly blobs: PostgresBlobStore
  private closed = false

  private constructor(
    private readonly pool: pg.Pool,
    fence?: DatabaseFence,
  ) {
    this.documents = new PostgresStorage(pool, fence)
    this.events = new PostgresEventLog(pool)
    this.outbox = new PostgresOutbox(pool, this.events)
    this.bindings = new PostgresClientBindingStore(pool)
    const documents = this.documents
    this.history = new PostgresHistoryStore(
      pool,
      fence ? (client) => documents.checkFence(client) : undefined,
    )
    this.keys = new PostgresApiKeyStore(pool)
    this.idempotency = new PostgresIdempotencyStore(pool)
    this.purge = new PostgresContentPurge(pool)
    this.pushSubscriptions = new PostgresPushSubscriptionStore(pool)
    this.blobs = new PostgresBlobStore(pool)
  }

  /** Connects to `url` and creates the tables if needed. */
  static async open(url: string, options: PostgresBackendOptions = {}): Promise<PostgresBackend> {
    const pool = await openPool({
      url,
      // Appends of one tick share a connection; delivery lanes, loads and binds take the rest.
      max: 8,
      schema: POSTGRES_BACKEND_SCHEMA,
      onIdleError: options.onIdleError ?? (() => {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    })
    try {
      await adoptMessageColumn(pool)
    } catch (error) {
      await pool.end()
      throw error
    }
    return new PostgresBackend(pool, options.fence)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.documents.close()
    await this.outbox.close()
    await this.events.close()
    await this.pool.end()
  }
}
