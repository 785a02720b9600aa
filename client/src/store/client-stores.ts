import type { InboxItem } from "@parley/shared"
import type { ChatClient, ClientStatus } from "../client.js"
import { sameValue } from "./same-value.js"
import { BaseStore, type SnapshotStore, sameItems } from "./snapshot-store.js"

/** The client's connection status as a store. */
export function connectionStatusStore(client: ChatClient): SnapshotStore<ClientStatus> {
  return new (class extends BaseStore<ClientStatus> {
    protected attach(changed: () => void) {
      return client.on("status", changed)
    }
    protected compute() {
      return client.status
    }
  })()
}

/** What {@link inboxStore} holds. */
export interface InboxSnapshot {
  /** The conversations, newest activity first. */
  readonly items: readonly InboxItem[]
  /** Unread messages over all conversations. */
  readonly totalUnread: number
  /** Unread messages over conversations the user did not mute (for badges). */
  readonly totalUnreadUnmuted: number
  /**
   * Unread emergency messages over all conversations, muted ones included
   * (an emergency bypasses mutes); each item's `emergency` lists its own.
   */
  readonly emergency: number
}

/**
 * The inbox as a store. An item that did not change keeps its identity from
 * one snapshot to the next, so a list row memoised on its item re-renders only
 * when its own conversation changed.
 */
export function inboxStore(client: ChatClient): SnapshotStore<InboxSnapshot> {
  return new (class extends BaseStore<InboxSnapshot> {
    protected attach(changed: () => void) {
      return client.inbox.on("change", changed)
    }
    protected compute(previous: InboxSnapshot | undefined): InboxSnapshot {
      const before = new Map(previous?.items.map((item) => [item.conversationId, item]))
      const items = client.inbox.items.map((item) => {
        const old = before.get(item.conversationId)
        return old && sameValue(old, item) ? old : item
      })
      const totalUnread = client.inbox.totalUnread
      const totalUnreadUnmuted = items.reduce((n, item) => n + (item.muted ? 0 : item.unread), 0)
      const emergency = items.reduce((n, item) => n + (item.emergency?.length ?? 0), 0)
      if (
        previous &&
        sameItems(previous.items, items) &&
        previous.totalUnread === totalUnread &&
        previous.totalUnreadUnmuted === totalUnreadUnmuted &&
        previous.emergency === emergency
      )
        return previous
      return {
        items: previous && sameItems(previous.items, items) ? previous.items : items,
        totalUnread,
        totalUnreadUnmuted,
        emergency,
      }
    }
  })()
}
