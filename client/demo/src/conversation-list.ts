import type { ChatClient, InboxItem } from "@parley/client"

/**
 * One row of the conversation list: an inbox item (conversation id, kind,
 * title, participants summary, last message, unread, muted, last activity).
 */
export type ListEntry = InboxItem

/**
 * Calls `listener` with the user's conversations, newest activity first, now
 * and after every change; returns the unsubscribe function. The source is the
 * SDK's inbox: relay-maintained, so a conversation the user was added to on
 * another device appears, with unread counts and previews; a local replica, so
 * the list is there offline too.
 */
export function watchConversationList(
  client: ChatClient,
  listener: (entries: readonly ListEntry[]) => void,
): () => void {
  listener(client.inbox.items)
  return client.inbox.on("change", ({ items }) => listener(items))
}
