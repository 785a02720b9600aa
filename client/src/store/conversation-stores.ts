import type { ConversationInfo, MessageId, Participant, Role, UserId } from "@parley/shared"
import type { ChatMessage, Conversation, ConversationState } from "../conversation.js"
import type { MessageStatus } from "../message-status.js"
import type { UserPresence } from "../presence.js"
import { sameValue } from "./same-value.js"
import { BaseStore, type SnapshotStore, sameItems } from "./snapshot-store.js"

/** What {@link conversationStore} holds. */
export interface ConversationSnapshot {
  readonly state: ConversationState
  /** The conversation's fields once ready. */
  readonly info: ConversationInfo | undefined
  readonly participants: readonly Participant[]
  /** The user's role; undefined when they are not (or no longer) a participant. */
  readonly role: Role | undefined
  /** Messages others wrote that the user has not read. */
  readonly unreadCount: number
  /** Unread emergency messages (ids, oldest first): flagged until the user reads past them. */
  readonly unreadEmergency: readonly MessageId[]
}

/** A conversation's state, fields, participants and unread count as a store; messages are in {@link messageWindowStore}. */
export function conversationStore(conversation: Conversation): SnapshotStore<ConversationSnapshot> {
  return new (class extends BaseStore<ConversationSnapshot> {
    protected attach(changed: () => void) {
      const offs = [
        conversation.on("state", changed),
        conversation.on("unread", changed),
        conversation.on("resynced", changed),
        conversation.on("change", ({ events }) => {
          if (events.some((e) => e.type.startsWith("conversation.") || e.type.startsWith("participants.")))
            changed()
        }),
      ]
      return () => {
        for (const off of offs) off()
      }
    }
    protected compute(previous: ConversationSnapshot | undefined): ConversationSnapshot {
      const state = conversation.state
      const info = conversation.info
      const participants = conversation.participants
      const emergency = conversation.unreadEmergency
      const next: ConversationSnapshot = {
        state: previous && sameValue(previous.state, state) ? previous.state : state,
        info: previous && sameValue(previous.info, info) ? previous.info : info,
        participants:
          previous && sameValue(previous.participants, participants) ? previous.participants : participants,
        role: conversation.role,
        unreadCount: conversation.unreadCount,
        unreadEmergency:
          previous && sameValue(previous.unreadEmergency, emergency) ? previous.unreadEmergency : emergency,
      }
      if (
        previous &&
        previous.state === next.state &&
        previous.info === next.info &&
        previous.participants === next.participants &&
        previous.role === next.role &&
        previous.unreadCount === next.unreadCount &&
        previous.unreadEmergency === next.unreadEmergency
      )
        return previous
      return next
    }
  })()
}

/** What {@link messageWindowStore} holds. */
export interface MessageWindowSnapshot {
  /** Oldest first: the older messages loaded so far, then the latest ones. */
  readonly messages: readonly ChatMessage[]
  /** Whether older messages than these exist (call `loadOlder`). */
  readonly hasOlder: boolean
  /** Whether a `loadOlder` is under way. */
  readonly loadingOlder: boolean
}

/** A paged message window: a {@link SnapshotStore} plus `loadOlder`. */
export interface MessageWindowStore extends SnapshotStore<MessageWindowSnapshot> {
  /**
   * Adds up to one page of older messages to the window: more of the live
   * document's first, then sealed history (`Conversation.loadOlder`). Rejects
   * like `Conversation.loadOlder` (UNAVAILABLE offline when a segment must be fetched).
   */
  loadOlder(): Promise<void>
}

/**
 * Events that change which messages are in the window or their order, or (a
 * profile) every message of one author; others touch one message each.
 */
const RELIST = new Set(["message.sent", "messages.sequenced", "conversation.created", "profile.updated"])

/**
 * The latest `pageSize` messages of a conversation, growing by a page at each
 * `loadOlder`, as a store with structural sharing: a change to one message
 * (edit, reaction, status) replaces that message's object only, and every
 * other message keeps its identity (rows memoised on their message do not
 * re-render); nothing is serialised to find out what changed.
 */
export function messageWindowStore(conversation: Conversation, pageSize = 50): MessageWindowStore {
  let live = pageSize
  let loadingOlder = false
  /** Ids to re-read at the next compute; "all" re-lists the window. */
  let dirty: Set<MessageId> | "all" = "all"

  const store = new (class extends BaseStore<MessageWindowSnapshot> {
    protected attach(changed: () => void) {
      dirty = "all"
      const offs = [
        conversation.on("change", ({ events }) => {
          if (events.some((e) => RELIST.has(e.type))) dirty = "all"
          else if (dirty !== "all") {
            for (const e of events) if ("messageId" in e) dirty.add(e.messageId)
          }
          changed()
        }),
        conversation.on("status", ({ messageId }) => {
          if (dirty !== "all") dirty.add(messageId)
          changed()
        }),
        // A message waiting for its files: progress changes it; queued, written or discarded moves it in or out.
        conversation.on("upload", ({ messageId, phase }) => {
          if (phase !== "uploading" && phase !== "failed") dirty = "all"
          else if (dirty !== "all") dirty.add(messageId)
          changed()
        }),
        conversation.on("state", () => {
          dirty = "all"
          changed()
        }),
        conversation.on("resynced", () => {
          dirty = "all"
          changed()
        }),
        // Sealed messages fetched in the background (sealed inside the window since it was shown): the
        // window re-lists them, or it kept only what was live (36 of 76 messages after a reconnect).
        conversation.on("history", () => {
          dirty = "all"
          changed()
        }),
        // A fleeting message's time is up: it leaves the window.
        conversation.on("expired", () => {
          dirty = "all"
          changed()
        }),
      ]
      return () => {
        for (const off of offs) off()
      }
    }

    protected compute(previous: MessageWindowSnapshot | undefined): MessageWindowSnapshot {
      // Without the SDK's events nothing says what changed: re-list (unchanged messages still keep their objects).
      if (!this.listening) dirty = "all"
      let hasOlder = previous?.hasOlder ?? false
      let messages: readonly ChatMessage[]
      if (!previous || dirty === "all") {
        hasOlder = conversation.hasOlder || conversation.messages({ last: live + 1 }).length > live
        const before = new Map(previous?.messages.map((m) => [m.id, m]))
        const fresh = [...conversation.olderMessages(), ...conversation.messages({ last: live })]
        const next = fresh.map((m) => {
          const old = before.get(m.id)
          return old && sameValue(old, m) ? old : m
        })
        messages = previous && sameItems(previous.messages, next) ? previous.messages : next
      } else if (dirty.size === 0) {
        messages = previous.messages
      } else {
        const ids = dirty
        let copy: ChatMessage[] | undefined
        previous.messages.forEach((old, i) => {
          if (!ids.has(old.id)) return
          const fresh = conversation.message(old.id)
          if (!fresh || sameValue(old, fresh)) return
          copy ??= [...previous.messages]
          copy[i] = fresh
        })
        messages = copy ?? previous.messages
      }
      dirty = new Set()
      if (
        previous &&
        previous.messages === messages &&
        previous.hasOlder === hasOlder &&
        previous.loadingOlder === loadingOlder
      )
        return previous
      return { messages, hasOlder, loadingOlder }
    }

    async loadOlder(): Promise<void> {
      if (loadingOlder) return
      const more = conversation.messages({ last: live + pageSize }).length - live
      if (more > 0) {
        live += more
        dirty = "all"
        this.changed()
        return
      }
      loadingOlder = true
      this.changed()
      try {
        await conversation.loadOlder(pageSize)
      } finally {
        loadingOlder = false
        dirty = "all"
        this.changed()
      }
    }
  })()
  return store
}

/** One of the user's messages' status as a store (undefined for others' messages). */
export function messageStatusStore(
  conversation: Conversation,
  id: MessageId | string,
): SnapshotStore<MessageStatus | undefined> {
  return new (class extends BaseStore<MessageStatus | undefined> {
    protected attach(changed: () => void) {
      const offs = [
        conversation.on("status", ({ messageId }) => {
          if (messageId === id) changed()
        }),
        conversation.on("resynced", changed),
      ]
      return () => {
        for (const off of offs) off()
      }
    }
    protected compute() {
      return conversation.status(id)
    }
  })()
}

/** Other users typing in the conversation now, sorted, as a store. */
export function typingStore(conversation: Conversation): SnapshotStore<readonly UserId[]> {
  return new (class extends BaseStore<readonly UserId[]> {
    protected attach(changed: () => void) {
      const offs = [conversation.on("typing", changed), conversation.on("resynced", changed)]
      return () => {
        for (const off of offs) off()
      }
    }
    protected compute(previous: readonly UserId[] | undefined) {
      const users = conversation.typingUsers
      return previous && sameItems(previous, users) ? previous : users
    }
  })()
}

/**
 * Who is around in the conversation (the SDK's presence: `online`, `away`,
 * `offline` with `lastSeen`; users who hide their presence never appear),
 * sorted by user id, as a store.
 */
export function presenceStore(conversation: Conversation): SnapshotStore<readonly UserPresence[]> {
  return new (class extends BaseStore<readonly UserPresence[]> {
    protected attach(changed: () => void) {
      const offs = [conversation.on("presence", changed), conversation.on("resynced", changed)]
      return () => {
        for (const off of offs) off()
      }
    }
    protected compute(previous: readonly UserPresence[] | undefined) {
      const next = conversation.presence
      return previous && sameValue(previous, next) ? previous : next
    }
  })()
}

/** A conversation's pinned messages (oldest first) as a store, current with every pin, unpin, edit or deletion. */
export function pinnedStore(conversation: Conversation): SnapshotStore<readonly ChatMessage[]> {
  return new (class extends BaseStore<readonly ChatMessage[]> {
    protected attach(changed: () => void) {
      const offs = [conversation.on("pinned", changed), conversation.on("resynced", changed)]
      return () => {
        for (const off of offs) off()
      }
    }
    protected compute(previous: readonly ChatMessage[] | undefined): readonly ChatMessage[] {
      const pinned = conversation.pinned()
      return previous && sameValue(previous, pinned) ? previous : pinned
    }
  })()
}
