import {
  type ConversationId,
  type InboxItem,
  InboxTopLevel,
  listInbox,
  parseConversationId,
  setMuted,
  totalUnread,
} from "@parley/shared"
import type * as Y from "yjs"
import type { DocumentConnection } from "./connection.js"
import { Emitter } from "./emitter.js"
import type { LocalReplica } from "./storage.js"

/** Events of the {@link Inbox}. */
export interface InboxEvents {
  /** The list or a count changed. */
  change: { readonly items: readonly InboxItem[]; readonly totalUnread: number }
}

/** What the client gives its inbox. */
export interface InboxOptions {
  readonly doc: Y.Doc
  readonly replica: LocalReplica
  readonly connection: DocumentConnection
  /** Yjs origin of the user's own writes (mute). */
  readonly origin: unknown
}

/**
 * The signed-in user's conversation list, across devices: one entry per
 * conversation they take part in (title, last message, unread count), newest
 * activity first. The relay maintains it in the user's inbox document; this is
 * a replica of that document, so the list is available offline after one sync
 * and a conversation the user was just added to appears in real time.
 */
export class Inbox extends Emitter<InboxEvents> {
  private cachedItems: readonly InboxItem[] | undefined
  private readonly onChange = () => {
    this.cachedItems = undefined
    this.emit("change", { items: this.items, totalUnread: this.totalUnread })
  }

  /** @internal Created by the ChatClient. */
  constructor(private readonly options: InboxOptions) {
    super()
    options.doc.getMap(InboxTopLevel.entries).observe(this.onChange)
    options.doc.getMap(InboxTopLevel.muted).observe(this.onChange)
  }

  /** Resolves once the locally stored inbox is loaded. */
  get loaded(): Promise<void> {
    return this.options.replica.loaded
  }

  /** The conversations, newest activity first. */
  get items(): readonly InboxItem[] {
    this.cachedItems ??= listInbox(this.options.doc)
    return this.cachedItems
  }

  /** Unread messages over all conversations. */
  get totalUnread(): number {
    return totalUnread(this.options.doc)
  }

  /** Unread messages over conversations the user did not mute (for badges). */
  get totalUnreadUnmuted(): number {
    return this.items.reduce((n, item) => n + (item.muted ? 0 : item.unread), 0)
  }

  /**
   * Mutes (or unmutes) a conversation for this user on every device; push hooks
   * skip muted conversations except for emergency messages.
   */
  mute(conversationId: string, muted = true): void {
    const id: ConversationId = parseConversationId(conversationId)
    setMuted(this.options.doc, id, muted, this.options.origin)
  }

  /** The inbox's Yjs document, for those who want it. */
  get doc(): Y.Doc {
    return this.options.doc
  }

  /** @internal */
  start(): void {
    this.options.connection.start()
  }

  /** @internal */
  stop(): void {
    this.options.connection.stop()
  }

  /** @internal */
  async destroy(): Promise<void> {
    this.options.doc.getMap(InboxTopLevel.entries).unobserve(this.onChange)
    this.options.doc.getMap(InboxTopLevel.muted).unobserve(this.onChange)
    this.options.connection.destroy()
    await this.options.replica.destroy()
    this.removeAllListeners()
  }
}
