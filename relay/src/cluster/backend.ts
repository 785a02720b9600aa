import type pg from "pg"
import { PostgresIdempotencyStore } from "../api/idempotency.js"
import { PostgresApiKeyStore } from "../api/key-stores.js"
import { PostgresBlobStore } from "../attachments/postgres-blob-store.js"
import { POSTGRES_BACKEND_SCHEMA } from "../backend/postgres.js"
import type { Backend } from "../backend/types.js"
import { PostgresHistoryStore } from "../history/store.js"
import { adoptMessageColumn, PostgresEventLog } from "../hooks/postgres-event-log.js"
import { PostgresOutbox } from "../hooks/postgres-outbox.js"
import { PostgresClientBindingStore } from "../policy/postgres-client-bindings.js"
import { openPool } from "../postgres.js"
import { PostgresContentPurge } from "../purge/content-purge.js"
import { PostgresPushSubscriptionStore } from "../push/store.js"
import { PostgresStorage } from "../storage/postgres.js"
import { Cluster, type ClusterOptions } from "./cluster.js"
import { ClusterDeliveryFence, recordingFence } from "./delivery-fence.js"
import { FencedStorage } from "./fenced-storage.js"
import { FENCES_SCHEMA } from "./leases.js"
import { CLUSTER_IDENTITY_SCHEMA } from "./settings.js"

/** How {@link openClusterBackend} connects. */
export interface ClusterBackendOptions extends Omit<ClusterOptions, "pool"> {
  readonly databaseUrl: string
  readonly timeoutMs?: number
  readonly onIdleError?: (error: Error) => void
}

/** A clustered relay's backend and its membership of the cluster. */
export interface ClusterBackend {
  readonly backend: Backend
  readonly cluster: Cluster
  /** Who may deliver a document's hook events: its owner, under its token. */
  readonly deliveries: ClusterDeliveryFence
}

/** Redis could not be reached (or refused the relay's first commands) when a clustered relay started. */
export class RedisStartFailure extends Error {
  constructor(
    readonly redisUrl: string,
    cause: unknown,
  ) {
    super("cannot open Redis", { cause })
    this.name = "RedisStartFailure"
  }
}

/**
 * The PostgreSQL backend of a relay in a cluster: the tables of the
 * single-relay backend plus the fencing tokens, the documents behind a
 * {@link FencedStorage}, and the {@link Cluster} (Redis) that owns the leases.
 */
export async function openClusterBackend(options: ClusterBackendOptions): Promise<ClusterBackend> {
  const pool: pg.Pool = await openPool({
    url: options.databaseUrl,
    max: 12,
    // The PostgreSQL backend's tables, then the fencing tokens and the cluster's salt.
    schema: `${POSTGRES_BACKEND_SCHEMA}\n${FENCES_SCHEMA}\n${CLUSTER_IDENTITY_SCHEMA}`,
    onIdleError: options.onIdleError ?? (() => {}),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
  })
  let cluster: Cluster
  try {
    await adoptMessageColumn(pool)
  } catch (error) {
    await pool.end()
    throw error
  }
  try {
    cluster = await Cluster.open({ ...options, pool })
  } catch (error) {
    await pool.end()
    // PostgreSQL answered: the start failed on Redis, and says so (not "cannot open PostgreSQL").
    throw new RedisStartFailure(options.redisUrl, error)
  }
  const documents = new FencedStorage(pool, new PostgresStorage(pool), cluster)
  const events = new PostgresEventLog(pool)
  // Only the document's last claimant records its events (see `recordingFence`).
  const outbox = new PostgresOutbox(pool, events, { fence: recordingFence(cluster.relayId) })
  const bindings = new PostgresClientBindingStore(pool)
  let closed = false
  const backend: Backend = {
    kind: "postgres",
    documents,
    outbox,
    events,
    bindings,
    history: new PostgresHistoryStore(pool),
    keys: new PostgresApiKeyStore(pool),
    idempotency: new PostgresIdempotencyStore(pool),
    // Purges of hook events and segments are the owner's, in its update path like the rest.
    purge: new PostgresContentPurge(pool),
    pushSubscriptions: new PostgresPushSubscriptionStore(pool),
    blobs: new PostgresBlobStore(pool),
    close: async () => {
      if (closed) return
      closed = true
      // Appends in flight finish under the leases; then the leases go, then the pool.
      await documents.close()
      await outbox.close()
      await events.close()
      await cluster.close()
      await pool.end()
    },
  }
  return { backend, cluster, deliveries: new ClusterDeliveryFence(pool, outbox, cluster.leases) }
}
