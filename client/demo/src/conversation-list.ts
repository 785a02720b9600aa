import type { ChatClient, ConversationKind } from "@parley/client"

/** One row of the conversation list. */
export interface ListEntry {
  readonly conversationId: string
  readonly kind?: ConversationKind
  readonly title: string
  readonly participants?: { readonly count: number; readonly first: readonly string[] }
  readonly lastMessage?: { readonly author: string; readonly text: string; readonly deleted: boolean }
  readonly unread: number
  readonly muted: boolean
  readonly lastActivityAt: number
}

/** The part of the SDK's inbox (`client.inbox`) the list needs. */
interface InboxLike {
  readonly items: readonly ListEntry[]
  readonly totalUnread: number
  on(
    event: "change",
    listener: (change: { items: readonly ListEntry[]; totalUnread: number }) => void,
  ): () => void
}

/**
 * Calls `listener` with the user's conversations, newest activity first, now
 * and after every change; returns the unsubscribe function.
 *
 * Source: the SDK's inbox (relay-maintained, so conversations the user was
 * added to elsewhere appear, with unread counts and previews). SDKs without an
 * inbox fall back to the conversations this device has opened.
 */
export function watchConversationList(
  client: ChatClient,
  listener: (entries: readonly ListEntry[]) => void,
): () => void {
  const inbox = (client as unknown as { inbox?: InboxLike }).inbox
  if (inbox) {
    listener(inbox.items)
    return inbox.on("change", ({ items }) => listener(items))
  }
  let stopped = false
  const fromKnown = (known: Awaited<ReturnType<ChatClient["knownConversations"]>>) =>
    known.map(
      (c): ListEntry => ({
        conversationId: c.id,
        ...(c.kind ? { kind: c.kind } : {}),
        title: c.title ?? "",
        unread: 0,
        muted: false,
        lastActivityAt: c.firstSeenAt,
      }),
    )
  void client.knownConversations().then((known) => {
    if (!stopped) listener(fromKnown(known))
  })
  const off = client.on("conversations", ({ conversations }) => listener(fromKnown([...conversations])))
  return () => {
    stopped = true
    off()
  }
}
