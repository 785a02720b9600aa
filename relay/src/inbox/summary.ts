import {
  type ConversationId,
  ErrorCode,
  InboxTopLevel,
  inboxDocumentName,
  mutedConversations,
  ParleyError,
  roleOf,
  type UserId,
  unreadCount,
} from "@parley/shared"
import type { RunningCore } from "../extension.js"
import type { InboxSummary } from "../hooks/define.js"

/**
 * A user's unread counts and mute flags, derived from the conversations
 * their inbox lists (their read markers against each conversation's
 * messages): exact whether or not anyone keeps the user's inbox current,
 * at one read per conversation they are in, done only when asked (a push
 * hook asking for a badge), never per message for every member.
 */
export async function inboxSummary(core: RunningCore, user: UserId): Promise<InboxSummary> {
  const { ids, muted } = await core.read(inboxDocumentName(user), (inbox) => ({
    ids: [...inbox.getMap(InboxTopLevel.entries).keys()] as ConversationId[],
    muted: mutedConversations(inbox),
  }))
  const unread: Record<ConversationId, number> = {}
  let totalUnread = 0
  for (const id of ids) {
    let count: number | undefined
    try {
      count = await core.read(id, (doc) =>
        roleOf(doc, user) === undefined ? undefined : unreadCount(doc, user),
      )
    } catch (error) {
      // A damaged or unknown conversation counts nothing until it is restored.
      if (
        error instanceof ParleyError &&
        (error.code === ErrorCode.DAMAGED || error.code === ErrorCode.NOT_FOUND)
      )
        continue
      throw error
    }
    if (count === undefined) continue
    unread[id] = count
    totalUnread += count
  }
  return { totalUnread, unread, muted }
}
