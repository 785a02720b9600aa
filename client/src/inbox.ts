import {
  type ConversationId,
  type InboxEntry,
  type InboxItem,
  InboxTopLevel,
  inboxEntryFor,
  isMuted,
  listInbox,
  parseConversationId,
  setMuted,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"
import type { DocumentConnection } from "./connection.js"
import type { Conversation } from "./conversation.js"
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
  readonly user: UserId
  /**
   * A device-local document (never synced) with its persistence: the entries
   * of conversations the user changed here, until the relay's entry catches up.
   */
  readonly pending: { readonly doc: Y.Doc; readonly replica: LocalReplica }
}

/** Whether the relay's entry has caught up with what the user did on this device. */
function caughtUp(relay: InboxEntry | undefined, local: InboxEntry): boolean {
  if (!relay || relay.readUpTo < local.readUpTo) return false
  if (!local.lastMessage) return true
  return relay.lastActivityAt > local.lastActivityAt || relay.lastMessage?.id === local.lastMessage.id
}

/** The relay's entry with the user's own changes on this device laid over it. */
function overlay(relay: InboxItem | undefined, local: InboxEntry, muted: boolean, user: UserId): InboxItem {
  if (!relay) return { ...local, muted }
  const newer = local.lastActivityAt > relay.lastActivityAt && local.lastMessage !== undefined
  const readAhead = local.readUpTo > relay.readUpTo
  const { emergency, ...rest } = relay
  // Read ahead on this device: the emergencies read here are no longer flagged, whatever the relay's entry says.
  const flagged = readAhead ? local.emergency : emergency
  return {
    ...rest,
    ...(newer ? { lastMessage: local.lastMessage, lastActivityAt: local.lastActivityAt } : {}),
    ...(readAhead ? { readUpTo: local.readUpTo, unread: unreadPast(relay, local, user) } : {}),
    ...(flagged ? { emergency: flagged } : {}),
  }
}

/**
 * Unread messages past the device's read marker, `local.readUpTo`, which is
 * ahead of the relay's entry: the relay counted `relay.unread` past its own
 * marker, of which at most the numbers in between were read here. Messages
 * that came after the device's read (the relay's last one is past its
 * marker, from someone else) stay unread: before, the device's count (0)
 * hid them until the conversation was opened.
 */
function unreadPast(relay: InboxItem, local: InboxEntry, user: UserId): number {
  const last = relay.lastMessage
  const lastUnread =
    last?.seq !== undefined && last.seq > local.readUpTo && !last.deleted && last.author !== user ? 1 : 0
  const past = Math.max(lastUnread, relay.unread - (local.readUpTo - relay.readUpTo))
  // Never more than the relay counted, nor than the numbers past the device's marker.
  return Math.min(relay.unread, last?.seq !== undefined ? Math.max(0, last.seq - local.readUpTo) : past, past)
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
  private readonly pending: Y.Map<InboxEntry>
  /**
   * Conversations the user changed on this device since their work was last
   * known sent (any change: an added member or a reaction shows in no inbox
   * entry), kept with {@link pending} (see `ChatClient.sendChangedHere`).
   */
  private readonly unsent: Y.Map<boolean>
  /**
   * Conversations whose replica lost content to a deletion (see
   * {@link purgedIn}) whose relay entry has not changed since: the preview
   * the relay has not derived again yet may be the deleted message's.
   */
  private readonly purgeOwed: Y.Map<boolean>
  private readonly onChange = () => {
    this.cachedItems = undefined
    this.prune()
    this.emit("change", { items: this.items, totalUnread: this.totalUnread })
  }

  /**
   * An entry removed, its conversation deleted (or purged) or its last message deleted:
   * the stored updates of the inbox (and of the device's own entries, which
   * may show the same message) keep the preview until merged.
   */
  private readonly onEntries = (event: Y.YMapEvent<InboxEntry>) => {
    // What the replica's own load applies is merged by that load.
    if (event.transaction.origin === this.options.replica) return
    const entries = event.target
    for (const [id, change] of event.changes.keys) {
      if (this.purgeOwed.has(id)) {
        this.purgeOwed.delete(id)
        return this.compactStored()
      }
      const before = change.oldValue as InboxEntry | undefined
      const now = entries.get(id)
      // A deleted conversation's entry changes when the relay's purge empties its title and preview.
      if (
        change.action === "delete" ||
        now?.deleted ||
        (before?.lastMessage &&
          (!now?.lastMessage || (now.lastMessage.deleted && !before.lastMessage.deleted)))
      )
        return this.compactStored()
    }
  }

  /** @internal Created by the ChatClient. */
  constructor(private readonly options: InboxOptions) {
    super()
    this.pending = options.pending.doc.getMap<InboxEntry>("entries")
    this.unsent = options.pending.doc.getMap<boolean>("unsent")
    this.purgeOwed = options.pending.doc.getMap<boolean>("purgeOwed")
    options.doc.getMap<InboxEntry>(InboxTopLevel.entries).observe(this.onEntries)
    options.doc.getMap(InboxTopLevel.entries).observe(this.onChange)
    options.doc.getMap(InboxTopLevel.muted).observe(this.onChange)
    this.pending.observe(this.onChange)
  }

  /** Resolves once the locally stored inbox is loaded. */
  get loaded(): Promise<void> {
    return Promise.all([this.options.replica.loaded, this.options.pending.replica.loaded]).then(() => {})
  }

  /**
   * The conversations, newest activity first. The user's own changes made on
   * this device (a message sent, a conversation read), offline included, show
   * at once: they are laid over the relay's entries until those catch up.
   */
  get items(): readonly InboxItem[] {
    this.cachedItems ??= this.list()
    return this.cachedItems
  }

  /**
   * @internal The conversations the user changed on this device whose work
   * may not have reached the relay: changed since last known sent, or whose
   * entries the relay has not caught up with.
   */
  changedHere(): ConversationId[] {
    return [...new Set([...this.unsent.keys(), ...this.pending.keys()])] as ConversationId[]
  }

  /** @internal Whether `id` was changed on this device since its work was last known sent. */
  unsentHere(id: ConversationId): boolean {
    return this.unsent.has(id)
  }

  /** @internal The relay has everything `id`'s replica on this device wrote (as far as it was asked). */
  sentHere(id: ConversationId): void {
    if (this.unsent.has(id)) this.unsent.delete(id)
  }

  /**
   * @internal Merges what the inbox and the device's own entries stored into
   * one state each, so that previews replaced or deleted leave the disk (see
   * `LocalReplica.compact`).
   */
  compactStored(): void {
    void this.options.replica.compact()
    void this.options.pending.replica.compact()
  }

  /**
   * @internal Conversation `id`'s replica lost content to a deletion (this
   * device's, or one it received): the inbox's stored previews are merged
   * now, and again once the relay's entry of `id` changes (derived again
   * without the deleted message; for a deletion made offline, once it is sent).
   */
  purgedIn(id: ConversationId): void {
    this.compactStored()
    if (!this.purgeOwed.has(id)) this.purgeOwed.set(id, true)
  }

  /** @internal Forgets the device's own entry of `id` (a deleted conversation's: its preview goes). */
  forgetPending(id: ConversationId): void {
    if (this.pending.has(id)) this.pending.delete(id)
  }

  /** Unread messages over all conversations. */
  get totalUnread(): number {
    return this.items.reduce((n, item) => n + item.unread, 0)
  }

  /**
   * @internal Follows the user's own changes in `conversation` (sent, read...)
   * until the relay's inbox entry reflects them.
   */
  track(conversation: Conversation): () => void {
    const forget = () => {
      if (this.pending.has(conversation.id)) this.pending.delete(conversation.id)
    }
    // No longer a participant (left, removed), or the conversation deleted: the relay drops or empties
    // the entry, so must this device (its own messages there were refused, not sent).
    const gone = () => conversation.role === undefined || conversation.info?.deletedAt !== undefined
    const offChange = conversation.on("change", ({ events, local }) => {
      if (gone()) return forget()
      const shown = this.pending.get(conversation.id)?.lastMessage?.id
      // The preview the device keeps was deleted: the entry is derived again, without its text.
      if (shown && events.some((e) => e.type === "message.deleted" && e.messageId === shown)) {
        const entry = inboxEntryFor(conversation.doc, this.options.user)
        if (entry) this.pending.set(conversation.id, entry)
        else forget()
      }
      if (!local) return
      if (!this.unsent.has(conversation.id)) this.unsent.set(conversation.id, true)
      const entry = inboxEntryFor(conversation.doc, this.options.user)
      if (entry) this.pending.set(entry.conversationId, entry)
    })
    const offState = conversation.on("state", ({ state }) => {
      if (state.state === "unavailable" || (state.state === "ready" && gone())) forget()
    })
    // A refused change rebuilds the replica from the relay's state without change events.
    const offResync = conversation.on("resynced", () => {
      if (gone()) forget()
    })
    return () => {
      offChange()
      offState()
      offResync()
    }
  }

  private list(): InboxItem[] {
    const relay = listInbox(this.options.doc)
    if (this.pending.size === 0) return relay
    const byId = new Map(relay.map((item) => [item.conversationId, item]))
    for (const [id, local] of this.pending) {
      if (caughtUp(byId.get(id as ConversationId), local)) continue
      byId.set(
        id as ConversationId,
        overlay(
          byId.get(id as ConversationId),
          local,
          isMuted(this.options.doc, id as ConversationId),
          this.options.user,
        ),
      )
    }
    return [...byId.values()].sort(
      (a, b) => b.lastActivityAt - a.lastActivityAt || a.conversationId.localeCompare(b.conversationId),
    )
  }

  /** Forgets the device's entries the relay has caught up with. */
  private prune(): void {
    const entries = this.options.doc.getMap<InboxEntry>(InboxTopLevel.entries)
    const done = [...this.pending].filter(([id, local]) => caughtUp(entries.get(id), local)).map(([id]) => id)
    if (done.length === 0) return
    this.options.pending.doc.transact(() => {
      for (const id of done) this.pending.delete(id)
    })
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
    this.pending.unobserve(this.onChange)
    this.options.connection.destroy()
    await Promise.all([this.options.replica.destroy(), this.options.pending.replica.destroy()])
    this.removeAllListeners()
  }
}
