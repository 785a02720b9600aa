import type * as Y from "yjs"
import { typesOf } from "./document.js"
import type { ConversationId, UserId } from "./ids.js"
import { unreadEmergency } from "./priorities.js"
import { displayNameOf } from "./profiles.js"
import { getConversation, lastMessage, unreadCount } from "./reads.js"
import type { ConversationKind, ParticipantRecord } from "./schema.js"

/**
 * A user's inbox: one entry per conversation they take part in, so that a
 * device can show the conversation list (title, last message, unread count,
 * ordered by activity) without opening every conversation. It is a Yjs
 * document named `inbox~<user>` that the relay alone writes (`entries`), except
 * for the user's own per-conversation preferences (`muted`).
 *
 * Entries are derived data: {@link inboxEntryFor} computes one from the
 * conversation document, so rebuilding an inbox from the conversations gives
 * exactly what incremental maintenance gives.
 */
export const InboxTopLevel = {
  /** `Y.Map<ConversationId, InboxEntry>`: written by the relay only. */
  entries: "entries",
  /** `Y.Map<ConversationId, true>`: conversations the user muted; written by the user. */
  muted: "muted",
} as const

/** Longest last-message preview kept in an entry, in characters. */
export const PREVIEW_LENGTH = 140
/** How many participant ids an entry lists (the count is always complete). */
export const PARTICIPANT_SUMMARY_SIZE = 5

/** The last message as an inbox shows it. */
export interface MessagePreview {
  readonly id: string
  readonly author: UserId
  /** The author's display name (their profile in the conversation); absent when they set none. */
  readonly authorName?: string
  /** Body cut to {@link PREVIEW_LENGTH} characters; "" for a deleted message. */
  readonly text: string
  readonly deleted: boolean
  readonly at: number
  readonly seq?: number
}

/** One conversation in a user's inbox. */
export interface InboxEntry {
  readonly conversationId: ConversationId
  readonly kind: ConversationKind
  readonly title: string
  /**
   * The first few participants (by time added), the total count, and the
   * display names those of them set (their profiles; absent when none did),
   * so that a list can name an untitled conversation without opening it.
   */
  readonly participants: {
    readonly count: number
    readonly first: readonly UserId[]
    readonly names?: Readonly<Record<string, string>>
  }
  readonly lastMessage?: MessagePreview
  readonly unread: number
  /**
   * Unread `emergency` messages (ids, oldest first), absent when none: the
   * entry stays flagged until the user's read marker passes them.
   */
  readonly emergency?: readonly string[]
  /** The user's read marker (sequence number). */
  readonly readUpTo: number
  /** Latest of: last message, creation. Inbox order is by this, newest first. */
  readonly lastActivityAt: number
  readonly deleted?: boolean
}

/** An entry as the SDK lists it: with the user's own mute preference. */
export interface InboxItem extends InboxEntry {
  readonly muted: boolean
}

function cut(text: string): string {
  return text.length <= PREVIEW_LENGTH ? text : `${text.slice(0, PREVIEW_LENGTH - 1)}…`
}

/**
 * What every participant's inbox entry shares for a conversation: computed
 * once per change, whatever the number of members (see {@link entryFromHead}).
 */
export interface ConversationHead {
  readonly entry: Omit<InboxEntry, "unread" | "readUpTo">
}

/**
 * The participant count and the first {@link PARTICIPANT_SUMMARY_SIZE} by
 * time added (then id), as `listParticipants` orders them, in one pass
 * without sorting or copying every member: a head is computed per change, and
 * a big room has thousands of members.
 */
function participantSummary(doc: Y.Doc): InboxEntry["participants"] {
  const map = typesOf(doc).participants
  // Inside a transaction the map may have changed without its observers having run yet.
  if ((doc as unknown as { _transaction: unknown })._transaction !== null) return summarize(doc)
  let summary = summaries.get(map)
  if (summary === undefined) {
    if (!watchedForSummary.has(map)) {
      watchedForSummary.add(map)
      map.observe(() => summaries.delete(map))
    }
    summary = summarize(doc)
    summaries.set(map, summary)
  }
  return summary
}

/**
 * Each conversation's participant summary, until its participants next
 * change (by its participants map): taken per change, it walked every member
 * of a big room on every message.
 */
const summaries = new WeakMap<object, InboxEntry["participants"]>()
/** Participants maps whose changes drop their cached summary. */
const watchedForSummary = new WeakSet<object>()

function summarize(doc: Y.Doc): InboxEntry["participants"] {
  const first: { user: string; addedAt: number }[] = []
  let count = 0
  const before = (a: { user: string; addedAt: number }, user: string, addedAt: number) =>
    a.addedAt - addedAt || a.user.localeCompare(user)
  typesOf(doc).participants.forEach((record: ParticipantRecord, user: string) => {
    count++
    const { addedAt } = record
    if (first.length === PARTICIPANT_SUMMARY_SIZE && before(first[first.length - 1]!, user, addedAt) <= 0)
      return
    let i = first.length
    while (i > 0 && before(first[i - 1]!, user, addedAt) > 0) i--
    first.splice(i, 0, { user, addedAt })
    if (first.length > PARTICIPANT_SUMMARY_SIZE) first.pop()
  })
  // Frozen: one summary is shared by the heads (and entries) of every change until the members change.
  return Object.freeze({ count, first: Object.freeze(first.map((p) => p.user as UserId)) })
}

/** The conversation's head (title, participants summary, last message), or undefined before it exists. */
export function conversationHead(doc: Y.Doc): ConversationHead | undefined {
  const info = getConversation(doc)
  if (!info) return undefined
  const participants = participantSummary(doc)
  const names: Record<string, string> = {}
  for (const user of participants.first) {
    const name = displayNameOf(doc, user)
    if (name !== undefined) names[user] = name
  }
  const last = lastMessage(doc)
  const preview: MessagePreview | undefined = last && {
    id: last.id,
    author: last.author,
    ...(last.authorName !== undefined ? { authorName: last.authorName } : {}),
    text: cut(last.body),
    deleted: last.deleted !== undefined,
    at: last.createdAt,
    ...(last.seq !== undefined ? { seq: last.seq } : {}),
  }
  return {
    entry: {
      conversationId: info.id,
      kind: info.kind,
      title: info.title,
      participants: {
        ...participants,
        ...(Object.keys(names).length > 0 ? { names } : {}),
      },
      ...(preview ? { lastMessage: preview } : {}),
      lastActivityAt: Math.max(info.createdAt, preview?.at ?? 0),
      ...(info.deletedAt !== undefined ? { deleted: true } : {}),
    },
  }
}

/** What differs between the members' entries of one change: a member's own read state. */
export interface MemberReadState {
  readonly unread: number
  /** Unread emergency message ids, oldest first; empty when none (the entry then has no `emergency`). */
  readonly emergency: readonly string[]
  readonly readUpTo: number
}

/**
 * `user`'s read state in the conversation `doc`, or undefined when `user` is
 * not a participant: with a {@link ConversationHead}, all an entry needs
 * ({@link entryFromParts}).
 */
export function memberReadState(doc: Y.Doc, user: UserId): MemberReadState | undefined {
  const types = typesOf(doc)
  if (types.participants.get(user)?.role === undefined) return undefined
  // The read marker read once for the three figures (once per connected member of a big room and message).
  const marker = types.read.get(user) ?? 0
  return {
    unread: unreadCount(doc, user, marker),
    emergency: unreadEmergency(doc, user, marker),
    readUpTo: marker,
  }
}

/**
 * The entry of a member whose read state is `state`, from the change's head.
 * Keys in the same order as always (an unchanged entry then compares equal,
 * see {@link writeInboxEntry}, and the relay's encoding of an entry from its
 * parts matches this object's): the head's keys up to the last message, then
 * `unread`, `emergency` (when any), `readUpTo`, `lastActivityAt`, `deleted`.
 * Built property by property, not by spreading, since the relay builds one per
 * connected member of a change.
 */
export function entryFromParts(head: ConversationHead, state: MemberReadState): InboxEntry {
  const h = head.entry
  const entry: { -readonly [K in keyof InboxEntry]?: InboxEntry[K] } = {
    conversationId: h.conversationId,
    kind: h.kind,
    title: h.title,
    participants: h.participants,
  }
  if (h.lastMessage) entry.lastMessage = h.lastMessage
  entry.unread = state.unread
  if (state.emergency.length > 0) entry.emergency = state.emergency
  entry.readUpTo = state.readUpTo
  entry.lastActivityAt = h.lastActivityAt
  if (h.deleted) entry.deleted = h.deleted
  return entry as InboxEntry
}

/**
 * `user`'s entry from the conversation's head and their own read state in
 * `doc` (the same document the head was taken from), or undefined when
 * `user` is not a participant.
 */
export function entryFromHead(head: ConversationHead, doc: Y.Doc, user: UserId): InboxEntry | undefined {
  const state = memberReadState(doc, user)
  return state && entryFromParts(head, state)
}

/**
 * The inbox entry of `user` for the conversation in `doc`, or undefined when
 * `user` is not a participant (a removed user loses the entry).
 */
export function inboxEntryFor(doc: Y.Doc, user: UserId): InboxEntry | undefined {
  const head = conversationHead(doc)
  return head && entryFromHead(head, doc, user)
}

const entriesOf = (inbox: Y.Doc) => inbox.getMap<InboxEntry>(InboxTopLevel.entries)
const mutedOf = (inbox: Y.Doc) => inbox.getMap<true>(InboxTopLevel.muted)

const sameEntry = (a: InboxEntry | undefined, b: InboxEntry | undefined) =>
  JSON.stringify(a) === JSON.stringify(b)

/**
 * Writes (or removes, when `entry` is undefined) a conversation's entry in an
 * inbox document. Writes nothing when the entry is unchanged, so that a change
 * which does not concern a user does not grow their inbox. Returns whether it wrote.
 */
export function writeInboxEntry(
  inbox: Y.Doc,
  conversation: ConversationId,
  entry: InboxEntry | undefined,
  origin?: unknown,
): boolean {
  const entries = entriesOf(inbox)
  if (sameEntry(entries.get(conversation), entry)) return false
  inbox.transact(() => {
    if (entry) entries.set(conversation, entry)
    else entries.delete(conversation)
  }, origin)
  return true
}

/**
 * Writes (or removes) a conversation's entry without first comparing it with
 * the one there: for a writer that knows it changed (the relay remembers what
 * it last wrote for connected users), sparing a comparison per member.
 */
export function replaceInboxEntry(
  inbox: Y.Doc,
  conversation: ConversationId,
  entry: InboxEntry | undefined,
  origin?: unknown,
): void {
  const entries = entriesOf(inbox)
  inbox.transact(() => {
    if (entry) entries.set(conversation, entry)
    else entries.delete(conversation)
  }, origin)
}

/** The inbox, newest activity first, with the user's mute flags. */
export function listInbox(inbox: Y.Doc): InboxItem[] {
  const muted = mutedOf(inbox)
  return [...entriesOf(inbox).values()]
    .map((entry) => ({ ...entry, muted: muted.has(entry.conversationId) }))
    .sort((a, b) => b.lastActivityAt - a.lastActivityAt || a.conversationId.localeCompare(b.conversationId))
}

/** One conversation's entry, if the user takes part in it. */
export function getInboxEntry(inbox: Y.Doc, conversation: ConversationId): InboxItem | undefined {
  const entry = entriesOf(inbox).get(conversation)
  return entry && { ...entry, muted: mutedOf(inbox).has(conversation) }
}

/** Unread messages over all conversations (muted ones included; a UI may subtract them). */
export function totalUnread(inbox: Y.Doc): number {
  let total = 0
  for (const entry of entriesOf(inbox).values()) total += entry.unread
  return total
}

/** Whether the user muted `conversation`. */
export const isMuted = (inbox: Y.Doc, conversation: ConversationId): boolean =>
  mutedOf(inbox).has(conversation)

/** Every conversation the user muted (with or without an entry yet). */
export const mutedConversations = (inbox: Y.Doc): ConversationId[] =>
  [...mutedOf(inbox).keys()] as ConversationId[]

/** Mutes or unmutes a conversation; the user's own write to their inbox. */
export function setMuted(inbox: Y.Doc, conversation: ConversationId, muted: boolean, origin?: unknown): void {
  const map = mutedOf(inbox)
  if (map.has(conversation) === muted) return
  inbox.transact(() => {
    if (muted) map.set(conversation, true)
    else map.delete(conversation)
  }, origin)
}
