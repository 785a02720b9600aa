import {
  type ConversationId,
  type DeletedMessageRecord,
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  isDeletedRecord,
  type MessageId,
  messageIndex,
  type Segment,
  sealedHistory,
  typesOf,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"
import { type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import type { HookEventType } from "../hooks/events.js"
import { writeDerivedEntries } from "../inbox/derived-entries.js"

const inboxEntries = (inbox: Y.Doc) => inbox.getMap<InboxEntry>(InboxTopLevel.entries)

/** How long a message deletion's pass waits, so that the deletions of the next moment share it. */
const SHARED_PASS_WAIT_MS = 100
/** A first pass on a loaded document also covers the deletions made this close in time to its own... */
const FIRST_PASS_WINDOW_MS = 60_000
/** ...up to this many ids. */
const FIRST_PASS_MOST = 2_000

/** Deletions whose text an inbox entry may show (as the title or the last message's preview). */
const PURGING: ReadonlySet<HookEventType> = new Set<HookEventType>([
  "conversation.deleted",
  "message.deleted",
])

/** The deleted messages of a held segment (their placeholders), found once per segment object. */
const sealedDeletions = new WeakMap<Segment, readonly DeletedMessageRecord[]>()

/**
 * When each deleted message a loaded conversation holds was deleted, by id:
 * those of the live document's index, and those sealed as placeholders in the
 * segments it holds (a change that deletes messages may seal them in the same
 * turn, as a stock client's offline sync does, before their events arrive).
 */
function deletionsOf(doc: Y.Doc): Map<MessageId, number> {
  const deletions = new Map<MessageId, number>()
  const history = sealedHistory(doc)
  for (const index of history.held()) {
    const segment = history.segment(index)!
    let deleted = sealedDeletions.get(segment)
    if (!deleted) {
      deleted = segment.entries.flatMap((entry) => (isDeletedRecord(entry.record) ? [entry.record] : []))
      sealedDeletions.set(segment, deleted)
    }
    for (const record of deleted) deletions.set(record.id, record.deletedAt)
  }
  // The live index last: where both name a message, its record is the later.
  for (const [id, record] of messageIndex(doc).deleted) deletions.set(id, record.deletedAt)
  return deletions
}

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
 * messages in one frame: one `message.deleted` each; a user deleting one
 * message after another), and one pass purges its event's message and every
 * deletion the loaded document gained since the last pass: a later
 * `message.deleted` of one of those is done already (the inboxes that stored
 * it were found, their entries derived from a document without the text,
 * written and compacted). Anything else (another load of the document, a
 * deletion the pass did not cover, a failed pass) purges again.
 */
export function inboxPurgeTarget(relay: RunningCore): DeliveryTarget {
  // Per loaded document (dropped with it): the messages deleted in it at the last pass, and those whose
  // deletion a pass purged (searched for in the inboxes, and purged where stored).
  const passes = new WeakMap<Y.Doc, { seen: ReadonlySet<MessageId>; purged: Set<MessageId> }>()
  const purgedAlready = (conversation: string, deleted: MessageId) =>
    relay.read(conversation, (doc) => passes.get(doc)?.purged.has(deleted) === true)
  return {
    name: "inbox-purge",
    accepts: (type) => PURGING.has(type),
    async deliver(event) {
      const conversation = event.event.conversationId
      const deleted =
        event.event.type === "message.deleted"
          ? (event.subject as { readonly messageId: MessageId }).messageId
          : undefined
      if (deleted !== undefined) {
        if (await purgedAlready(conversation, deleted)) return
        // A user deleting one message after another: the deletions of the next moment share this pass.
        await new Promise((resolve) => setTimeout(resolve, SHARED_PASS_WAIT_MS))
      }
      const read = await relay.read(conversation, (doc) => {
        const pass = passes.get(doc)
        if (deleted !== undefined && pass?.purged.has(deleted)) return undefined
        const users = [...typesOf(doc).participants.keys()] as UserId[]
        // Live and sealed alike: a batch's deletions sealed before their events arrive are covered by its
        // first pass too, not one pass (a search, a 100 ms wait) each.
        const index = deletionsOf(doc)
        const deletions = new Set(index.keys())
        // This event's message, and those deleted since the last pass on this document (their events
        // follow: they find their work done). A first pass on a document (just loaded) covers those
        // deleted about when this one was (a batch, a stream), not every deletion it ever had.
        const covered = new Set<MessageId>(deleted === undefined ? [] : [deleted])
        if (pass) {
          for (const id of deletions) if (!pass.seen.has(id)) covered.add(id)
        } else if (deleted !== undefined) {
          const at = index.get(deleted)
          if (at !== undefined)
            for (const [id, deletedAt] of index) {
              if (covered.size >= FIRST_PASS_MOST) break
              if (Math.abs(deletedAt - at) <= FIRST_PASS_WINDOW_MS) covered.add(id)
            }
        }
        return { doc, users, deletions, covered }
      })
      if (!read) return
      const { users, covered } = read
      // A message's text is in a stored inbox only where an entry showing it (its preview, which names
      // its id) was stored: the others are passed over unread, a byte search of their stored form each,
      // so that deleting a message in a big room costs what the affected inboxes cost, not a load, a
      // write and a compaction of every member's inbox. A loaded inbox is written in any case (its entry
      // in memory may show the message) and compacted where the entry changed.
      // One pass over the members' stored inboxes, however many messages the batch deleted: a frame of a
      // thousand deletions in a big room costs what one does, not a purge of every member's inbox.
      const inboxes = users.map((user) => inboxDocumentName(user))
      const holding =
        deleted === undefined || !relay.storedShowing
          ? undefined
          : await relay.storedShowing(inboxes, covered)
      // The entries of the inboxes to purge only (deriving one costs the member's unread count): those
      // that stored the text, and the loaded ones whose entry in memory (derived for a member who is or
      // was connected, stored when it unloads) shows one of the messages. Every loaded one was purged
      // before, and a big room's inboxes are all loaded for a while after its creation wrote them:
      // deleting a message there derived, wrote and compacted a thousand inboxes (about 1 s of CPU).
      const shows = async (inbox: string): Promise<boolean> => {
        if (relay.isConnected(inbox)) return true
        if (relay.isLoaded?.(inbox) !== true) return false
        const shown = await relay.read(inbox, (doc) => inboxEntries(doc).get(conversation)?.lastMessage?.id)
        return shown !== undefined && covered.has(shown as MessageId)
      }
      const purging: UserId[] = []
      for (const [i, user] of users.entries())
        if (holding === undefined || holding.has(inboxes[i]!) || (await shows(inboxes[i]!)))
          purging.push(user)
      await rewriteInboxEntries(relay, conversation, purging, holding)
      const pass = passes.get(read.doc)
      const purged = pass?.purged ?? new Set<MessageId>()
      for (const id of covered) purged.add(id)
      passes.set(read.doc, { seen: read.deletions, purged })
    },
    retryDelay: exponentialBackoff({ baseMs: 500, maxMs: 30_000, attempts: 20 }),
  }
}

/**
 * Derives `users`' inbox entries of `conversation` again from it as it is
 * now, writes them, and folds each inbox's log into a snapshot of its
 * garbage-collected document where the entry changed or the inbox is in
 * `holding` (all, when it is undefined): no stored inbox keeps what its old
 * entry showed. Then storage is scrubbed, once.
 */
export async function rewriteInboxEntries(
  relay: RunningCore,
  conversation: ConversationId,
  users: readonly UserId[],
  holding: ReadonlySet<string> | undefined,
): Promise<void> {
  let compacted = false
  // Derived and written one inbox after another, each only while the member's membership is what the
  // read saw: a removal landing between the read and the write (the writes wait for one another and
  // for compactions) would otherwise get the removed member's entry back after the inbox target
  // removed it, for good.
  await writeDerivedEntries(
    relay,
    conversation,
    [...users],
    (doc, _user, entry) => {
      // A later message may have reached the inbox since the read (LiveInbox): it shows no deleted text.
      const current = inboxEntries(doc).get(conversation)
      if (!entry?.deleted && (current?.lastMessage?.at ?? -1) > (entry?.lastMessage?.at ?? -1)) return false
      return writeInboxEntry(doc, conversation, entry)
    },
    {
      after: async (user, changed) => {
        const inbox = inboxDocumentName(user)
        // An unchanged entry never showed the text; a stored inbox is compacted whenever it unloads, so
        // its log holds only what it gained while loaded.
        if (changed || holding === undefined || holding.has(inbox)) {
          await relay.compact?.(inbox, { scrub: false })
          compacted = true
        }
      },
    },
  )
  // Once for the pass, not once per inbox (each a checkpoint of the whole write-ahead log).
  if (compacted) await relay.scrub?.()
}
