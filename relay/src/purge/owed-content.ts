import { ErrorCode, ParleyError } from "@parley/shared"
import type { EventLogReader } from "../hooks/event-log.js"
import type { HookEvent } from "../hooks/events.js"
import type { Logger } from "../log.js"
import { loadVerified } from "../storage/integrity.js"
import type { StoredDocument } from "../storage/types.js"
import { deletedInSnapshot } from "./owed-purges.js"
import { type RedactionScope, redactEvent } from "./redact.js"

/** What {@link OwedContent} reads: which documents may owe a purge, and a document's stored state. */
export interface OwedContentSources {
  /**
   * The documents that may owe a purge now: a superset is fine (a document that owes none costs a
   * load of it, and its deleted messages' events come without their content, as after any purge),
   * one missing is not. Rejects when that cannot be told (a read of the log then fails as well).
   */
  owing(): Promise<ReadonlySet<string>>
  /** A document's stored snapshot and log. */
  load(name: string): Promise<StoredDocument>
  readonly log: Logger
}

/**
 * What readers of stored hook events (the event log behind `GET /v1/events`, the dead letters)
 * withhold while a purge is owed (relay README, "Deletion and erasure"). A deletion is acknowledged
 * once it is stored; its purge, which rewrites the stored events, runs `--purge-delay-ms` later, or
 * after the restart or takeover that finds it owed. Meanwhile the stored events still hold the
 * deleted text: a read of them gets, for each conversation whose purge is owed, its events as the
 * purge will leave them — a deleted message's without its content (`purged: true`), a deleted
 * conversation's without its messages, title and metadata — worked out from the conversation's
 * stored state. The read is not held back: redacting a message that is deleted changes nothing
 * that anyone may still see.
 */
export class OwedContent {
  constructor(private readonly sources: OwedContentSources) {}

  /**
   * `read()`'s items, each event without what an owed purge of its conversation removes; the same
   * objects when none is owed. The documents owing a purge are asked for before the read: a purge
   * that finishes (and is no longer owed) while the read runs may have redacted the stored events
   * after the read took them.
   */
  async read<T extends { readonly event: HookEvent }>(read: () => Promise<T[]>): Promise<T[]> {
    const owing = await this.sources.owing()
    const items = await read()
    if (owing.size === 0) return items
    const scopes = new Map<string, Promise<RedactionScope | undefined>>()
    for (const { event } of items) {
      const conversation = event.event.conversationId
      if (owing.has(conversation) && !scopes.has(conversation))
        scopes.set(conversation, this.withheld(conversation))
    }
    if (scopes.size === 0) return items
    const resolved = new Map<string, RedactionScope | undefined>()
    for (const [conversation, scope] of scopes) resolved.set(conversation, await scope)
    return items.map((item) => {
      const scope = resolved.get(item.event.event.conversationId)
      if (!scope) return item
      const event = redactEvent(item.event, scope)
      return event === item.event ? item : { ...item, event }
    })
  }

  /** `log` as its readers may see it: every {@link EventLogReader.read} through {@link read}. */
  reader(log: EventLogReader): EventLogReader {
    return {
      read: (query) => this.read(() => log.read(query)),
      latest: () => log.latest(),
      // What a listener hears is what was recorded: a reader serves what `read` returns.
      subscribe: (listener) => log.subscribe(listener),
    }
  }

  /**
   * What of conversation `name` is deleted as stored (a deletion is stored before it is
   * acknowledged): the whole conversation, or its deleted messages (those already purged included:
   * their stored events hold nothing more to remove). A document that cannot be loaded whole is
   * refused to everyone: its events go without any content until it is restored.
   */
  private async withheld(name: string): Promise<RedactionScope | undefined> {
    const stored = await this.sources.load(name)
    let deleted: ReturnType<typeof deletedInSnapshot>
    try {
      const doc = loadVerified(stored)
      try {
        deleted = deletedInSnapshot(doc)
      } finally {
        doc.destroy()
      }
    } catch (error) {
      if (!(error instanceof ParleyError && error.code === ErrorCode.DAMAGED)) throw error
      this.sources.log.warn(
        { err: error, doc: name },
        "a document owing a purge is damaged: its stored events are read without their content",
      )
      return { kind: "conversation" }
    }
    if (deleted.deletion !== undefined) return { kind: "conversation" }
    return deleted.messages.size > 0 ? { kind: "messages", ids: deleted.messages } : undefined
  }
}
