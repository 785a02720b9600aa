import { ErrorCode, ParleyError } from "@parley/shared"
import type { IdempotencyStore } from "../api/idempotency.js"
import type { ApiKeyStore } from "../api/keys.js"
import { GuardedBlobStore } from "../attachments/guarded-blob-store.js"
import type { HistoryStore } from "../history/store.js"
import type { EventLog } from "../hooks/event-log.js"
import type { Outbox } from "../hooks/outbox.js"
import type { ClientBindingStore } from "../policy/client-bindings.js"
import { isUnansweredPostgresError } from "../postgres-errors.js"
import type { ContentPurge } from "../purge/content-purge.js"
import type { PushSubscriptionStore } from "../push/store.js"
import { StorageGuard, type StorageGuardOptions, withDeadlines } from "../storage/guard.js"
import type { StorageKind } from "../storage/index.js"
import type { DatabaseFence } from "../storage/postgres.js"
import { MemoryBackend } from "./memory.js"
import { SqliteBackend } from "./sqlite.js"
import type { Backend } from "./types.js"

export { MemoryBackend } from "./memory.js"
export { BLOBS_DIR, CATALOG_FILE, LEGACY_FILES, SQLITE_FILE, SqliteBackend } from "./sqlite.js"
export type { Backend } from "./types.js"

/** Which backend to open, and where it keeps its data. */
export interface BackendOptions {
  readonly kind: StorageKind
  /** Data directory (sqlite). */
  readonly dataDir: string
  /** Connection string (postgres, required: there is no default database). */
  readonly databaseUrl?: string
  /** Bound of every PostgreSQL connect, query and statement, in ms (postgres). */
  readonly timeoutMs?: number
  /** Hears of PostgreSQL connections the server dropped, idle or in use (postgres). */
  readonly onIdleError?: (error: Error) => void
  /** A relay without a cluster on PostgreSQL: what its document writes check (see `DatabaseFence`). */
  readonly fence?: DatabaseFence
  /** Hears of a failed WAL checkpoint, once per run of the same failure (sqlite; default: a process warning). */
  readonly onCheckpointError?: (message: string) => void
}

/** Opens the configured backend: the one store of a relay (or of an operator's command). */
export async function openBackend(options: BackendOptions): Promise<Backend> {
  switch (options.kind) {
    case "memory":
      return new MemoryBackend()
    case "sqlite":
      return new SqliteBackend(
        options.dataDir,
        options.onCheckpointError ? { onCheckpointError: options.onCheckpointError } : {},
      )
    case "postgres": {
      if (!options.databaseUrl)
        throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "a postgres backend needs a database URL")
      // Loaded only here: SQLite deployments never touch `pg`.
      const { PostgresBackend } = await import("./postgres.js")
      return PostgresBackend.open(options.databaseUrl, {
        ...(options.onIdleError ? { onIdleError: options.onIdleError } : {}),
        ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.fence ? { fence: options.fence } : {}),
      })
    }
  }
}

/** A backend whose every call has a deadline (see {@link guardBackend}). */
export interface GuardedBackend extends Backend {
  readonly documents: StorageGuard
}

/**
 * `backend` with every call bounded by `options.timeoutMs` and its failures
 * typed as the retryable STORAGE_UNAVAILABLE: the documents behind a
 * {@link StorageGuard} (a breaker: while they fail, writes are refused at
 * once and a probe watches for recovery), the outbox and the bindings behind
 * a deadline each, so that none of them can hang a caller. The stores of the
 * same database as the documents (not the outbox's, whose callers retry on
 * their own schedule; the blobs where PostgreSQL keeps them) are refused at once too while the
 * breaker finds the database answering nothing.
 */
export function guardBackend(
  backend: Backend,
  options: StorageGuardOptions & {
    /** Told of each failure of the blob store itself (see {@link GuardedBlobStore}), for logs and metrics. */
    readonly onBlobFailure?: (error: ParleyError) => void
  },
): GuardedBackend {
  // The stores beside the documents are in the same database: while it answers nothing, they are
  // refused at once too (API keys and idempotency records waited 5 s per request in an outage).
  const documents = new StorageGuard(backend.documents, {
    ...options,
    ...(backend.kind === "postgres" ? { noAnswer: isUnansweredPostgresError } : {}),
  })
  return {
    kind: backend.kind,
    documents,
    outbox: withDeadlines<Outbox>(backend.outbox, options.timeoutMs, "hook outbox"),
    events: withDeadlines<EventLog>(backend.events, options.timeoutMs, "event log"),
    bindings: withDeadlines<ClientBindingStore>(
      backend.bindings,
      options.timeoutMs,
      "client-id bindings",
      documents,
    ),
    history: withDeadlines<HistoryStore>(backend.history, options.timeoutMs, "history segments", documents),
    keys: withDeadlines<ApiKeyStore>(backend.keys, options.timeoutMs, "API keys", documents),
    idempotency: withDeadlines<IdempotencyStore>(
      backend.idempotency,
      options.timeoutMs,
      "API idempotency records",
      documents,
    ),
    ...(backend.purge
      ? { purge: withDeadlines<ContentPurge>(backend.purge, options.timeoutMs, "content purge", documents) }
      : {}),
    pushSubscriptions: withDeadlines<PushSubscriptionStore>(
      backend.pushSubscriptions,
      options.timeoutMs,
      "push subscriptions",
      documents,
    ),
    // Each call and each chunk of a read within the deadline, not a whole download: it streams for as
    // long as its reader reads.
    blobs: new GuardedBlobStore(backend.blobs, {
      timeoutMs: options.timeoutMs,
      ...(options.onBlobFailure ? { onFailure: options.onBlobFailure } : {}),
      // PostgreSQL keeps the blobs in the documents' database (a file system or other store is apart).
      ...(backend.blobs.kind === "postgres" && backend.kind === "postgres" ? { shared: documents } : {}),
    }),
    close: () => backend.close(),
  }
}
