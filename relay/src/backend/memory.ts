import { MemoryIdempotencyStore } from "../api/idempotency.js"
import { MemoryApiKeyStore } from "../api/keys.js"
import { MemoryBlobStore } from "../attachments/memory-blob-store.js"
import { MemoryHistoryStore } from "../history/store.js"
import { MemoryEventLog } from "../hooks/memory-event-log.js"
import { MemoryOutbox } from "../hooks/outbox.js"
import { MemoryClientBindingStore } from "../policy/client-bindings.js"
import { MemoryContentPurge } from "../purge/content-purge.js"
import { MemoryPushSubscriptionStore } from "../push/store.js"
import { type MemoryData, MemoryStorage } from "../storage/memory.js"
import type { Backend } from "./types.js"

/** Keeps everything in process memory: for tests and throwaway relays. Nothing survives a restart. */
export class MemoryBackend implements Backend {
  readonly kind = "memory"
  readonly documents: MemoryStorage
  readonly events = new MemoryEventLog()
  readonly outbox: MemoryOutbox
  readonly bindings = new MemoryClientBindingStore()
  readonly history = new MemoryHistoryStore()
  readonly keys = new MemoryApiKeyStore()
  readonly idempotency = new MemoryIdempotencyStore()
  readonly pushSubscriptions = new MemoryPushSubscriptionStore()
  readonly blobs = new MemoryBlobStore()
  readonly purge: MemoryContentPurge

  /** `data`: the documents' data and catalog, for tests that damage them behind the backend's back. */
  constructor(data: MemoryData = { documents: new Map(), catalog: new Map() }) {
    this.documents = new MemoryStorage(data)
    this.outbox = new MemoryOutbox(this.events, (name) => data.documents.get(name)?.updates.at(-1)?.position)
    this.purge = new MemoryContentPurge(this.outbox, this.events, this.history)
  }

  async close(): Promise<void> {
    await this.documents.close()
    await this.outbox.close()
    await this.events.close()
  }
}
