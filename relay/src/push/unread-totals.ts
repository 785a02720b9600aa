import {
  type ChangeEventType,
  type ConversationId,
  parseDocumentName,
  roleOf,
  typesOf,
  type UserId,
  unreadCount,
} from "@parley/shared"
import type { AfterSaved, RelayExtension, RunningCore } from "../extension.js"
import type { InboxSummary } from "../hooks/define.js"
import { inboxSummary } from "../inbox/summary.js"

/** Changes that move someone's unread count or membership. */
const COUNTED: ReadonlySet<ChangeEventType> = new Set<ChangeEventType>([
  "message.sent",
  "message.deleted",
  "messages.read",
  "messages.sequenced",
  "participants.added",
  "participants.removed",
  "conversation.deleted",
  "conversation.reopened",
])

/** Options of {@link UnreadTotals}. */
export interface UnreadTotalsOptions {
  /** Users whose totals are kept (least recently used dropped first). Default 10,000. */
  readonly maxUsers?: number
  /**
   * How long a user's totals are trusted before they are derived again, in
   * ms. Default 60 s: changes made through another relay of a cluster are
   * not seen here, so a badge is at most this stale for them.
   */
  readonly maxAgeMs?: number
  readonly now?: () => number
}

interface Totals {
  readonly unread: Map<ConversationId, number>
  readonly muted: Set<ConversationId>
  total: number
  readonly at: number
}

/**
 * Every pushed-to user's unread count per conversation, kept current in
 * memory so that a push's badge costs one read of the conversation at hand
 * instead of one per conversation the recipient is in (`inboxSummary`).
 * A user's totals are derived once (on their first push, or after
 * {@link UnreadTotalsOptions.maxAgeMs}), then every saved change of a
 * conversation updates the counts of its members whose totals are kept
 * (O(log n) each, shared `unreadCount`), and a change of a user's inbox
 * document (membership, mutes) drops theirs.
 */
export class UnreadTotals implements RelayExtension {
  readonly name = "unread-totals"
  private readonly users = new Map<UserId, Totals>()
  private readonly maxUsers: number
  private readonly maxAgeMs: number
  private readonly now: () => number

  constructor(options: UnreadTotalsOptions = {}) {
    this.maxUsers = options.maxUsers ?? 10_000
    this.maxAgeMs = options.maxAgeMs ?? 60_000
    this.now = options.now ?? Date.now
  }

  /**
   * `user`'s unread counts and mutes, with `conversation`'s count read from
   * the document now (the change being pushed may not have reached the
   * cache yet).
   */
  async summary(core: RunningCore, user: UserId, conversation?: ConversationId): Promise<InboxSummary> {
    let totals = this.users.get(user)
    if (totals && this.now() - totals.at > this.maxAgeMs) totals = undefined
    let derivedWith = false
    if (!totals) {
      const derived = await inboxSummary(core, user)
      totals = {
        unread: new Map(Object.entries(derived.unread) as [ConversationId, number][]),
        muted: new Set(derived.muted),
        total: derived.totalUnread,
        at: this.now(),
      }
      derivedWith = conversation === undefined || Object.hasOwn(derived.unread, conversation)
    }
    // Read now, unless just derived with it: the user's inbox may not list the conversation yet (its
    // entry is written as the push is sent; in a cluster, by another relay), and a first push to a
    // new member carried a badge without it (an outside probe: 0 instead of 1).
    if (conversation !== undefined && !derivedWith) {
      const count = await core.read(conversation, (doc) =>
        roleOf(doc, user) === undefined ? undefined : unreadCount(doc, user),
      )
      this.set(totals, conversation, count)
    }
    // Most recently used last: the first key is the one to drop.
    this.users.delete(user)
    this.users.set(user, totals)
    if (this.users.size > this.maxUsers) this.users.delete(this.users.keys().next().value!)
    return {
      totalUnread: totals.total,
      unread: Object.fromEntries(totals.unread),
      muted: [...totals.muted],
    }
  }

  /** How many users' totals are kept (tests, metrics). */
  get size(): number {
    return this.users.size
  }

  afterSaved({ name, doc, events }: AfterSaved): void {
    if (this.users.size === 0) return
    let parsed: ReturnType<typeof parseDocumentName>
    try {
      parsed = parseDocumentName(name)
    } catch {
      return
    }
    if (parsed.kind === "inbox") {
      this.users.delete(parsed.user)
      return
    }
    if (parsed.kind !== "conversation" || !events.some((e) => COUNTED.has(e.type))) return
    const participants = typesOf(doc).participants
    for (const e of events)
      if (e.type === "participants.removed")
        for (const user of e.users) {
          const totals = this.users.get(user)
          if (totals) this.set(totals, parsed.id, undefined)
        }
    // Whichever is smaller is walked: a big room with few users kept, or many kept and a small room.
    const update = (user: UserId) => {
      const totals = this.users.get(user)
      if (totals && participants.has(user)) this.set(totals, parsed.id, unreadCount(doc, user))
    }
    // Sized by Yjs's own map (removed members included: only which side is walked depends on it), not
    // `Y.Map.size`, which walks every member through iterators on every message of a big room.
    const members = (participants as unknown as { readonly _map: ReadonlyMap<string, unknown> })._map.size
    if (this.users.size < members) for (const user of this.users.keys()) update(user)
    else for (const user of participants.keys()) update(user as UserId)
  }

  private set(totals: Totals, conversation: ConversationId, count: number | undefined): void {
    totals.total -= totals.unread.get(conversation) ?? 0
    if (count === undefined) totals.unread.delete(conversation)
    else {
      totals.unread.set(conversation, count)
      totals.total += count
    }
  }
}
