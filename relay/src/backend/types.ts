import type { IdempotencyStore } from "../api/idempotency.js"
import type { ApiKeyStore } from "../api/keys.js"
import type { BlobStore } from "../attachments/blob-store.js"
import type { HistoryStore } from "../history/store.js"
import type { EventLog } from "../hooks/event-log.js"
import type { Outbox } from "../hooks/outbox.js"
import type { ClientBindingStore } from "../policy/client-bindings.js"
import type { ContentPurge } from "../purge/content-purge.js"
import type { PushSubscriptionStore } from "../push/store.js"
import type { RelayStorage } from "../storage/types.js"

/**
 * Everything a relay keeps: one adapter per relay over one database (memory,
 * SQLite, PostgreSQL). It owns the bytes and the transactions; the subsystems
 * above it own their meaning (compaction and damage detection over
 * {@link documents}, delivery over {@link outbox}, client-id ownership over
 * {@link bindings}). A capability that needs to keep something adds its part
 * here, so that it lives and is backed up with the rest. Every backend passes
 * `relay/test/conformance/backend.ts`.
 *
 * One order is the backend's to keep: what the outbox committed is durable no
 * later than the documents' next commit. A compaction (which drops log
 * entries) must never survive a crash that the events of those entries did not.
 * One database gives it for free: a write-ahead log is replayed in order.
 */
export interface Backend {
  /** What the backend is, for logs and `/healthz` (`memory`, `sqlite`, `postgres`, or a custom name). */
  readonly kind: string
  /** The documents' logs, snapshots and catalog. */
  readonly documents: RelayStorage
  /** The hook outbox: events owed to hooks, webhooks and the inbox upkeep. */
  readonly outbox: Outbox
  /** The durable event log, which `outbox.enqueue` writes in the same transaction as the deliveries. */
  readonly events: EventLog
  /** Which principal owns each Yjs client id of each document. */
  readonly bindings: ClientBindingStore
  /** Conversations' sealed history segments (see shared `history.ts`). */
  readonly history: HistoryStore
  /** The HTTP API's service keys (hashed). */
  readonly keys: ApiKeyStore
  /** The HTTP API's idempotent sends: where each message sent with a key or id is (no content). */
  readonly idempotency: IdempotencyStore
  /** Devices' Web Push subscriptions, per user and device. */
  readonly pushSubscriptions: PushSubscriptionStore
  /**
   * Attachment bytes and upload sessions: files under `<data>/blobs` (sqlite),
   * a table (postgres, shared by every relay of a cluster), memory (memory).
   */
  readonly blobs: BlobStore
  /**
   * Purges what deletions and erasures leave outside the documents (hook
   * events, segments, the files' free pages); absent, a purge covers the
   * documents only.
   */
  readonly purge?: ContentPurge
  /**
   * Finishes pending writes of every part and releases the database. The
   * parts' own `close` only finish their pending writes: the relay closes them
   * in its shutdown order, then the backend.
   */
  close(): Promise<void>
}
