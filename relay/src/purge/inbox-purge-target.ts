import {
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  inboxEntryFor,
  type MessageId,
  messageIndex,
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
 * least once across restarts. A conversation's deletion costs one inbox load
 * per participant; a message's deletion a byte search of each participant's
 * stored inbox for its id, and a load, a write and a compaction only of the
 * inboxes that stored it or are open (messages cost nothing here).
 *
 * Deletions arrive in batches (a device's offline sync deletes several
 * messages in one frame: one `message.deleted` each), and one pass purges
 * every deletion the conversation already held when it read it: a pass
 * remembers which messages were deleted in the document it read, and a later
 * `message.deleted` of one of them, in the same loaded document, is done
 * already (its entries were derived from a document without the text, then
 * written and compacted). Anything else (another load of the document, a
 * deletion the pass did not see, a failed pass) purges again.
 */
export function inboxPurgeTarget(relay: RunningCore): DeliveryTarget {
  // The loaded document a pass read → the messages deleted in it then (dropped with the document).
  const purged = new WeakMap<Y.Doc, ReadonlySet<MessageId>>()
  return {
    name: "inbox-purge",
    accepts: (type) => PURGING.has(type),
    async deliver(event) {
      const conversation = event.event.conversationId
      const deleted =
        event.event.type === "message.deleted"
          ? (event.subject as { readonly messageId: MessageId }).messageId
          : undefined
      const read = await relay.read(conversation, (doc) => {
        if (deleted !== undefined && purged.get(doc)?.has(deleted)) return undefined
        const entries = [...typesOf(doc).participants.keys()].map(
          (user) => [user as UserId, inboxEntryFor(doc, user as UserId)] as const,
        )
        return { doc, entries, deletions: new Set(messageIndex(doc).deleted.keys()) }
      })
      if (!read) return
      const { entries } = read
      // A message's text is in a stored inbox only where an entry showing it (its preview, which names
      // its id) was stored: the others are passed over unread, a byte search of their stored form each,
      // so that deleting a message in a big room costs what the affected inboxes cost, not a load, a
      // write and a compaction of every member's inbox. A connected member's inbox is written in any
      // case (its entry in memory may show the message) and compacted where the entry changed.
      const needle = deleted === undefined ? undefined : new TextEncoder().encode(deleted)
      const mayHold = async (inbox: string) =>
        needle === undefined || !relay.storedIncludes || (await relay.storedIncludes(inbox, needle))
      for (const [user, entry] of entries) {
        const inbox = inboxDocumentName(user)
        const connected = relay.isConnected(inbox)
        const stored = await mayHold(inbox)
        if (!connected && !stored) continue
        let changed = false
        await relay.write(inbox, { kind: "relay" }, (doc) => {
          // A later message may have reached the inbox since the read (LiveInbox): it shows no deleted text.
          const current = inboxEntries(doc).get(conversation)
          if (!entry?.deleted && (current?.lastMessage?.at ?? -1) > (entry?.lastMessage?.at ?? -1)) return
          changed = writeInboxEntry(doc, conversation, entry)
        })
        // An unchanged entry never showed the text; a stored inbox is compacted whenever it unloads, so
        // its log holds only what it gained while loaded.
        if (changed || stored) await relay.compact?.(inbox)
      }
      purged.set(read.doc, read.deletions)
    },
    retryDelay: exponentialBackoff({ baseMs: 500, maxMs: 30_000, attempts: 20 }),
  }
}
