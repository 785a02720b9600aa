import {
  type ConversationId,
  ErrorCode,
  type InboxEntry,
  type InboxItem,
  InboxTopLevel,
  inboxDocumentName,
  inboxEntryFor,
  mutedConversations,
  ParleyError,
  type UserId,
} from "@parley/shared"
import type { RunningCore } from "../extension.js"
import type { InboxSummary } from "../hooks/define.js"

/**
 * `user`'s inbox derived from the conversations it lists (membership is what
 * the inbox document stores durably; every entry is computed from the
 * conversation: title, preview, the user's read marker and unread count),
 * newest activity first. Exact whether or not anyone keeps the user's inbox
 * current, at one read per conversation they are in, done only when asked.
 */
export async function derivedInbox(
  core: RunningCore,
  user: UserId,
  options?: ReadOptions,
): Promise<InboxItem[]> {
  return (await derive(core, user, options)).items
}

/** How the documents are read (see {@link RunningCore.read}). */
type ReadOptions = Parameters<RunningCore["read"]>[2]

async function derive(
  core: RunningCore,
  user: UserId,
  options: ReadOptions,
): Promise<{ items: InboxItem[]; muted: Set<ConversationId> }> {
  const { ids, muted } = await core.read(
    inboxDocumentName(user),
    (inbox) => ({
      ids: [...inbox.getMap(InboxTopLevel.entries).keys()] as ConversationId[],
      muted: new Set(mutedConversations(inbox)),
    }),
    options,
  )
  const items: InboxItem[] = []
  for (const id of ids) {
    let entry: InboxEntry | undefined
    try {
      entry = await core.read(id, (doc) => inboxEntryFor(doc, user), options)
    } catch (error) {
      // A damaged or unknown conversation is left out until it is restored.
      if (
        error instanceof ParleyError &&
        (error.code === ErrorCode.DAMAGED || error.code === ErrorCode.NOT_FOUND)
      )
        continue
      throw error
    }
    if (entry) items.push({ ...entry, muted: muted.has(id) })
  }
  items.sort(
    (a, b) => b.lastActivityAt - a.lastActivityAt || a.conversationId.localeCompare(b.conversationId),
  )
  return { items, muted }
}

/**
 * A user's unread counts and mute flags, derived from the conversations
 * their inbox lists (their read markers against each conversation's
 * messages): exact whether or not anyone keeps the user's inbox current,
 * at one read per conversation they are in, done only when asked (a push
 * hook asking for a badge), never per message for every member.
 */
export async function inboxSummary(
  core: RunningCore,
  user: UserId,
  options?: ReadOptions,
): Promise<InboxSummary> {
  const { items, muted } = await derive(core, user, options)
  const unread: Record<ConversationId, number> = {}
  let totalUnread = 0
  for (const item of items) {
    unread[item.conversationId] = item.unread
    totalUnread += item.unread
  }
  return {
    totalUnread,
    unread,
    // Muted before an entry exists (a mute set ahead of the membership) counts too.
    muted: [...muted],
  }
}
