import {
  type Attachment,
  type AttachmentUrlSnapshot,
  type AttachmentVariant,
  attachmentUrlStore,
  type ChatMessage,
  type ClientStatus,
  type Conversation,
  type ConversationSnapshot,
  connectionStatusStore,
  contactsPresenceStore,
  conversationStore,
  ErrorCode,
  type InboxSnapshot,
  inboxStore,
  type MessageId,
  type MessageStatus,
  type MessageWindowSnapshot,
  messageStatusStore,
  messageWindowStore,
  ParleyError,
  type Profile,
  pinnedStore,
  presenceStore,
  profileStore,
  type SnapshotStore,
  typingStore,
  type UserId,
  type UserPresence,
} from "@parley/client"
import { useEffect, useMemo, useReducer, useSyncExternalStore } from "react"
import { useChatClient } from "./provider.js"

/** Reads a store; re-renders when (and only when) its snapshot is a new object. */
export function useStore<T>(store: SnapshotStore<T>): T {
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot)
}

/** The client's connection status: "connecting", "connected", "offline"... */
export function useConnectionStatus(): ClientStatus {
  const client = useChatClient()
  return useStore(useMemo(() => connectionStatusStore(client), [client]))
}

/** The user's conversation list, newest activity first, with unread totals. */
export function useInbox(): InboxSnapshot {
  const client = useChatClient()
  return useStore(useMemo(() => inboxStore(client), [client]))
}

/** What {@link useConversation} returns. */
export interface UseConversation extends ConversationSnapshot {
  /** The handle, for operations (send, rename, markRead...); undefined without an id. */
  readonly conversation: Conversation | undefined
}

const EMPTY_CONVERSATION: ConversationSnapshot = {
  state: { state: "loading" },
  info: undefined,
  participants: [],
  role: undefined,
  unreadCount: 0,
  unreadEmergency: [],
}
const emptyStore = <T>(value: T): SnapshotStore<T> => ({
  subscribe: () => () => {},
  getSnapshot: () => value,
})
const NO_CONVERSATION = emptyStore(EMPTY_CONVERSATION)

/**
 * Opens conversation `id` (the client keeps one handle per id) and returns its
 * state, fields, participants, the user's role and unread count. The handle is
 * not closed on unmount: other components may show it; `conversation.close()`
 * when the app is done with it.
 *
 * Never throws during render: an id that is not a conversation id (a bad
 * link) gives `state: { state: "unavailable", reason: "INVALID_ARGUMENT" }`
 * with `conversation` undefined, and so does a client that cannot open it
 * (destroyed: `UNAVAILABLE`).
 */
export function useConversation(id: string | undefined): UseConversation {
  const client = useChatClient()
  const opened = useMemo((): Conversation | ParleyError | undefined => {
    if (id === undefined) return undefined
    try {
      return client.conversation(id)
    } catch (error) {
      // Thrown during render, it unmounted the whole app (a blank page for a mistyped id: an outside tester).
      return error instanceof ParleyError
        ? error
        : new ParleyError(ErrorCode.INTERNAL, error instanceof Error ? error.message : String(error), {
            cause: error,
          })
    }
  }, [client, id])
  const conversation = opened instanceof ParleyError ? undefined : opened
  const snapshot = useStore(
    useMemo(
      () =>
        opened instanceof ParleyError
          ? emptyStore<ConversationSnapshot>({
              ...EMPTY_CONVERSATION,
              state: { state: "unavailable", reason: opened.code, error: opened },
            })
          : opened
            ? conversationStore(opened)
            : NO_CONVERSATION,
      [opened],
    ),
  )
  return useMemo(() => ({ ...snapshot, conversation }), [snapshot, conversation])
}

/** What {@link useMessages} returns. */
export interface UseMessages extends MessageWindowSnapshot {
  /** Adds a page of older messages (rejects offline when they must be fetched). */
  readonly loadOlder: () => Promise<void>
}

const EMPTY_WINDOW: MessageWindowSnapshot = { messages: [], hasOlder: false, loadingOlder: false }
const NO_WINDOW = emptyStore(EMPTY_WINDOW)
const noOlder = async () => {}

/**
 * The latest `pageSize` messages of `conversation`, oldest first, growing by a
 * page at each `loadOlder()`. A change to one message gives a new object for
 * that message only: memoise rows on their message (`React.memo`) and the
 * others do not re-render.
 */
export function useMessages(conversation: Conversation | undefined, pageSize = 50): UseMessages {
  const store = useMemo(
    () => (conversation ? messageWindowStore(conversation, pageSize) : undefined),
    [conversation, pageSize],
  )
  const snapshot = useStore(store ?? NO_WINDOW)
  return useMemo(
    () => ({ ...snapshot, loadOlder: store ? () => store.loadOlder() : noOlder }),
    [snapshot, store],
  )
}

/** The status of one of the user's messages (undefined for others' messages). */
export function useMessageStatus(
  conversation: Conversation | undefined,
  id: MessageId | string,
): MessageStatus | undefined {
  const store = useMemo(
    () => (conversation ? messageStatusStore(conversation, id) : emptyStore(undefined)),
    [conversation, id],
  )
  return useStore(store)
}

const NOBODY: readonly UserId[] = []
const NOBODY_STORE = emptyStore(NOBODY)

/** Other users typing in `conversation` now, sorted; entries expire on their own. */
export function useTyping(conversation: Conversation | undefined): readonly UserId[] {
  return useStore(useMemo(() => (conversation ? typingStore(conversation) : NOBODY_STORE), [conversation]))
}

/**
 * Who is around, from the SDK's presence API: in `conversation` when given,
 * else the user's contacts (everyone in the open conversations, merged).
 * Each is `online`, `away` (connected, idle) or `offline` with `lastSeen`;
 * users who hide their presence never appear. Sorted by user id.
 */
export function usePresence(conversation?: Conversation): readonly UserPresence[] {
  const client = useChatClient()
  return useStore(
    useMemo(
      () => (conversation ? presenceStore(conversation) : contactsPresenceStore(client)),
      [conversation, client],
    ),
  )
}

const NO_URL: AttachmentUrlSnapshot = { url: undefined, error: undefined }
const NO_URL_STORE = emptyStore(NO_URL)

/** What identifies an attachment's bytes: the relay's id, else its URL. */
function attachmentKey(attachment: Attachment | string | undefined): string | undefined {
  if (attachment === undefined || typeof attachment === "string") return attachment
  if ("id" in attachment && attachment.id) return attachment.id
  return "url" in attachment ? attachment.url : undefined
}

/**
 * A URL to show `attachment` with (`<img src>`, a download link): a signed
 * URL for files the relay stores (fetched, cached, renewed before it
 * expires), the URL itself for anything hosted elsewhere. `url` is undefined
 * until known; `error` says why not (NOT_FOUND: the user may not see it;
 * UNAVAILABLE: offline, fetched again once online).
 */
export function useAttachmentUrl(
  attachment: Attachment | string | undefined,
  variant: AttachmentVariant = "file",
): AttachmentUrlSnapshot {
  const client = useChatClient()
  const key = attachmentKey(attachment)
  // Keyed by the attachment's identity, not the object: a re-rendered message gives a new object for the same file.
  const store = useMemo(
    () => (attachment === undefined ? NO_URL_STORE : attachmentUrlStore(client, attachment, variant)),
    [client, key, variant],
  )
  return useStore(store)
}

const NO_PINS: readonly ChatMessage[] = []
const NO_PINS_STORE = emptyStore(NO_PINS)

/**
 * The pinned messages of `conversation` (sent `sticky`, not unpinned nor
 * deleted), oldest first; re-renders when one is pinned, unpinned, edited or
 * deleted. Unpin with `conversation.unpin(id)`.
 */
export function usePinned(conversation: Conversation | undefined): readonly ChatMessage[] {
  return useStore(useMemo(() => (conversation ? pinnedStore(conversation) : NO_PINS_STORE), [conversation]))
}

/** One user's presence among the contacts (`offline` without `lastSeen` when never seen). */
export function usePresenceOf(user: UserId | string): UserPresence {
  const all = usePresence()
  return useMemo(
    () => all.find((p) => p.user === user) ?? { user: user as UserId, status: "offline" as const },
    [all, user],
  )
}

/**
 * How `user` is shown: their display name (their id when they set none) and
 * picture, from their profile in the open conversations; the signed-in
 * user's own profile for them. Re-renders only when that profile changes.
 */
export function useProfile(user: UserId | string): Profile {
  const client = useChatClient()
  return useStore(useMemo(() => profileStore(client, user), [client, user]))
}

/** The display names of the users typing in `conversation` now (see {@link useTyping}). */
export function useTypingNames(conversation: Conversation | undefined): readonly string[] {
  const client = useChatClient()
  const users = useTyping(conversation)
  const [version, rerender] = useReducer((n: number) => n + 1, 0)
  useEffect(
    () =>
      client.on("profiles", ({ users: changed }) => {
        if (changed.some((u) => users.includes(u))) rerender()
      }),
    [client, users],
  )
  // `version` stands for the profiles read here: a new one re-reads them.
  return useMemo(() => users.map((u) => client.profileOf(u).name), [client, users, version])
}
