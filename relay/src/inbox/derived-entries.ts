import {
  type ConversationId,
  ErrorCode,
  type InboxEntry,
  inboxDocumentName,
  inboxEntryFor,
  ParleyError,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"

/**
 * Whether `user`'s entry derived from `doc` now would still be `entry` (the
 * one a read derived). Read from the conversation in memory, without its
 * queue: a change applied and not yet stored counts as a change too (the
 * caller reads again, which waits for it). A document dropped from memory
 * since counts as changed (a new load is another document).
 */
function stillDerives(doc: Y.Doc, user: UserId, entry: InboxEntry | undefined, exact: boolean): boolean {
  if (doc.isDestroyed) return false
  const now = inboxEntryFor(doc, user)
  return exact ? JSON.stringify(now) === JSON.stringify(entry) : (now === undefined) === (entry === undefined)
}

/** Reads before a writer gives up (its delivery is retried later). */
const MAX_READS = 5

/**
 * Derives `users`' entries from `conversation` and writes them into their
 * inboxes with `write` (returns whether it changed the inbox), as the relay.
 * Each write is applied only if the conversation still derives the entry the
 * read gave, checked as the write is applied in the inbox's queue;
 * otherwise nothing is written and that user's entry is derived again. A
 * writer that reads a conversation and writes an inbox later (a hook
 * delivery, a purge: the writes wait for one another and for storage) would
 * otherwise put back the entry of a member removed in between, after
 * `inboxTarget` removed it, where nothing removes it again; or write an
 * entry older than the one `LiveInbox` wrote meanwhile, which it then takes
 * as shown. The check costs nothing while the conversation had no
 * transaction since the read (the usual case); after one, an entry is
 * derived again from memory and compared (on the last read, only whether
 * there is an entry: membership). `after(user, changed)` runs after
 * each user's write (sequential mode only). Throws UNAVAILABLE when the
 * conversation kept changing across {@link MAX_READS} reads (a delivery is
 * retried later). Returns how many entries changed.
 */
export async function writeDerivedEntries(
  relay: RunningCore,
  conversation: ConversationId,
  users: readonly UserId[],
  write: (inbox: Y.Doc, user: UserId, entry: InboxEntry | undefined) => boolean,
  options: {
    /** Write the inboxes at once, so that the storage commits them as one group. */
    readonly concurrent?: boolean
    readonly after?: (user: UserId, changed: boolean) => Promise<void>
    /**
     * Told of each user whose inbox is damaged (refused to everyone until an
     * operator restores or resets it): skipped, so that one such inbox does not
     * fail the others' writes, nor a delivery retried for ever.
     */
    readonly damaged?: (user: UserId) => void
  } = {},
): Promise<number> {
  let changedCount = 0
  let pending = users
  for (let reads = 0; pending.length > 0; reads++) {
    if (reads === MAX_READS)
      throw new ParleyError(
        ErrorCode.UNAVAILABLE,
        `the membership of ${conversation} kept changing while its inbox entries were written`,
      )
    // Any transaction on the conversation after the read (counted from inside the read, so none is missed).
    let transactions = 0
    const count = () => {
      transactions++
    }
    const { doc, derived } = await relay.read(conversation, (doc) => {
      doc.on("afterTransaction", count)
      return { doc, derived: pending.map((user) => ({ user, entry: inboxEntryFor(doc, user) })) }
    })
    // The last read settles for membership (the entry there or not, as now), so that a busy room's
    // messages, each changing what an entry shows, do not hold a membership write back for good.
    const exact = reads < MAX_READS - 1
    const again: UserId[] = []
    const writeOne = async ({ user, entry }: (typeof derived)[number]) => {
      let stale = false
      let changed = false
      try {
        await relay.write(inboxDocumentName(user), { kind: "relay" }, (inbox) => {
          if (doc.isDestroyed || (transactions > 0 && !stillDerives(doc, user, entry, exact))) {
            stale = true
            return
          }
          changed = write(inbox, user, entry)
        })
      } catch (error) {
        if (!(error instanceof ParleyError) || error.code !== ErrorCode.DAMAGED) throw error
        options.damaged?.(user)
        return
      }
      if (stale) {
        again.push(user)
        return
      }
      if (changed) changedCount++
      await options.after?.(user, changed)
    }
    try {
      if (options.concurrent) await Promise.all(derived.map(writeOne))
      else for (const one of derived) await writeOne(one)
    } finally {
      doc.off("afterTransaction", count)
    }
    pending = again
  }
  return changedCount
}
