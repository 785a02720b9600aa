import {
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  inboxEntryFor,
  typesOf,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"
import { type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import type { HookEventType } from "../hooks/events.js"

const inboxEntries = (inbox: Y.Doc) => inbox.getMap<InboxEntry>(InboxTopLevel.entries)

/** Deletions whose text an inbox entry may show (as the title or the last message's preview). */
const PURGING: ReadonlySet<HookEventType> = new Set<HookEventType>([
  "conversation.deleted",
  "message.deleted",
])

/**
 * Purges deleted text from the participants' inbox documents, which hold it
 * in their entries (title, preview) and in their stored logs: each
 * participant's entry is derived again from the purged conversation and
 * written, and the inbox's log is folded into a snapshot of its
 * garbage-collected document, so that no stored inbox keeps the old entry.
 * A delivery target of the hook pipeline: after the deletion is saved, at
 * least once across restarts. It costs one inbox load per participant per
 * deletion, and a write and a compaction where the entry changed (deletions
 * are rare; messages cost nothing here).
 */
export function inboxPurgeTarget(relay: RunningCore): DeliveryTarget {
  return {
    name: "inbox-purge",
    accepts: (type) => PURGING.has(type),
    async deliver(event) {
      const conversation = event.event.conversationId
      const entries = await relay.read(conversation, (doc) =>
        [...typesOf(doc).participants.keys()].map(
          (user) => [user as UserId, inboxEntryFor(doc, user as UserId)] as const,
        ),
      )
      for (const [user, entry] of entries) {
        const inbox = inboxDocumentName(user)
        let changed = false
        await relay.write(inbox, { kind: "relay" }, (doc) => {
          // A later message may have reached the inbox since the read (LiveInbox): it shows no deleted text.
          const current = inboxEntries(doc).get(conversation)
          if (!entry?.deleted && (current?.lastMessage?.at ?? -1) > (entry?.lastMessage?.at ?? -1)) return
          changed = writeInboxEntry(doc, conversation, entry)
        })
        // An unchanged entry never showed the text; a stored inbox is compacted whenever it unloads, so
        // its log holds only what it gained while loaded (compacted here when connected).
        if (changed || relay.isConnected(inbox)) await relay.compact?.(inbox)
      }
    },
    retryDelay: exponentialBackoff({ baseMs: 500, maxMs: 30_000, attempts: 20 }),
  }
}
