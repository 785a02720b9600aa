import * as map from "lib0/map"
import type * as Y from "yjs"
import { type Markers, typesOf } from "./document.js"
import { decodeTombstone, type SealedEntry, sealedHistory, sealedThrough, sealedUnread } from "./history.js"
import type { ConversationId, MessageId, UserId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import {
  type Attachment,
  type ConversationInfo,
  type ConversationKind,
  type DeletedMessageRecord,
  type EditRecord,
  isDeletedRecord,
  type Metadata,
  MetaKey,
  type Participant,
  type Priority,
  type Role,
} from "./schema.js"
import { checkProfileRecord } from "./validate.js"

/**
 * The author's display name and picture from the conversation's `profiles`
 * (see `profiles.ts`), as the optional fields of a {@link MessageView}.
 */
function authorProfile(doc: Y.Doc, author: UserId): { authorName?: string; authorPicture?: string } {
  const record = typesOf(doc).profiles.get(author)
  if (record === undefined || checkProfileRecord(record) !== undefined) return {}
  const name = record.name.trim()
  return {
    ...(name !== "" ? { authorName: name } : {}),
    ...(record.picture !== "" ? { authorPicture: record.picture } : {}),
  }
}

/** The conversation's fields, or undefined when the document holds no conversation yet. */
export function getConversation(doc: Y.Doc): ConversationInfo | undefined {
  const meta = typesOf(doc).meta
  const createdAt = meta.get(MetaKey.createdAt)
  if (typeof createdAt !== "number") return undefined
  const info: ConversationInfo = {
    id: meta.get(MetaKey.id) as ConversationId,
    schemaVersion: (meta.get(MetaKey.schemaVersion) as number | undefined) ?? 1,
    kind: (meta.get(MetaKey.kind) as ConversationKind | undefined) ?? "group",
    title: (meta.get(MetaKey.title) as string | undefined) ?? "",
    createdBy: meta.get(MetaKey.createdBy) as UserId,
    createdAt,
    metadata: (meta.get(MetaKey.metadata) as Metadata | undefined) ?? {},
  }
  const distinctKey = meta.get(MetaKey.distinctKey)
  const deletedAt = meta.get(MetaKey.deletedAt)
  const deletedBy = meta.get(MetaKey.deletedBy)
  const fleetingSeconds = meta.get(MetaKey.fleetingSeconds)
  const reopenedAt = meta.get(MetaKey.reopenedAt)
  const reopenedBy = meta.get(MetaKey.reopenedBy)
  return {
    ...info,
    ...(typeof distinctKey === "string" ? { distinctKey } : {}),
    ...(typeof deletedAt === "number" ? { deletedAt, deletedBy: deletedBy as UserId } : {}),
    ...(typeof reopenedAt === "number" ? { reopenedAt, reopenedBy: reopenedBy as UserId } : {}),
    ...(typeof fleetingSeconds === "number" ? { fleetingSeconds } : {}),
  }
}

/** Participants with their roles, sorted by the time they were added. */
export function listParticipants(doc: Y.Doc): Participant[] {
  const list: Participant[] = []
  for (const [user, record] of typesOf(doc).participants) list.push({ user: user as UserId, ...record })
  return list.sort((a, b) => a.addedAt - b.addedAt || a.user.localeCompare(b.user))
}

/** `user`'s role, or undefined when they are not a participant. */
export const roleOf = (doc: Y.Doc, user: UserId): Role | undefined =>
  typesOf(doc).participants.get(user)?.role

/** A message as readers see it: the record with its edit, deletion and reactions applied. */
export interface MessageView {
  readonly id: MessageId
  readonly author: UserId
  /** Current body: the latest edit, or "" once deleted. */
  readonly body: string
  readonly type: string
  readonly createdAt: number
  readonly priority: Priority
  readonly replyTo?: MessageId
  readonly attachments: readonly Attachment[]
  readonly metadata: Metadata
  /** Canonical sequence number, once the relay has accepted the message. */
  readonly seq?: number
  readonly editedAt?: number
  readonly deleted?: { readonly at: number; readonly by: UserId }
  /** Emoji → users who reacted with it. */
  readonly reactions: Readonly<Record<string, readonly UserId[]>>
  /** The author's display name from their profile in this conversation; absent when they set none (show `author`). */
  readonly authorName?: string
  /** The author's picture URL (`https:`) from their profile; absent when none (show initials). */
  readonly authorPicture?: string
}

/** One message with its edit, delete and reaction state. */
export function getMessage(doc: Y.Doc, id: MessageId): MessageView | undefined {
  const index = messageIndex(doc)
  const seq = index.seqOf.get(id)
  const placeholder = index.deleted.get(id)
  const shadowing = sealedOver(doc, id, placeholder ?? index.records.get(id))
  if (shadowing) return sealedMessageView(doc, shadowing)
  if (placeholder) return deletedView(doc, placeholder, placeholder, seq)
  const record = index.records.get(id)
  if (!record) {
    const sealed = sealedHistory(doc).entry(id)
    return sealed ? sealedMessageView(doc, sealed) : undefined
  }
  const edit = typesOf(doc).edits.get(id)
  const reactions: Record<string, UserId[]> = {}
  for (const [emoji, users] of index.reactions.get(id) ?? []) reactions[emoji] = [...users].sort()
  return {
    id,
    author: record.author,
    body: edit ? edit.body : record.body,
    type: record.type ?? "text",
    createdAt: record.createdAt,
    priority: record.priority ?? "normal",
    attachments: record.attachments ?? [],
    metadata: record.metadata ?? {},
    reactions,
    ...(record.replyTo !== undefined ? { replyTo: record.replyTo } : {}),
    ...(seq !== undefined ? { seq } : {}),
    ...(edit ? { editedAt: edit.editedAt } : {}),
    ...authorProfile(doc, record.author),
  }
}

/** A deleted message as readers see it: no content, who deleted it and when. */
function deletedView(
  doc: Y.Doc,
  message: { readonly id: MessageId; readonly author: UserId; readonly createdAt: number },
  deletion: Pick<DeletedMessageRecord, "deletedAt" | "deletedBy" | "priority">,
  seq: number | undefined,
): MessageView {
  return {
    id: message.id,
    author: message.author,
    body: "",
    type: "deleted",
    createdAt: message.createdAt,
    priority: deletion.priority ?? "normal",
    attachments: [],
    metadata: {},
    reactions: {},
    deleted: { at: deletion.deletedAt, by: deletion.deletedBy },
    ...(seq !== undefined ? { seq } : {}),
    ...authorProfile(doc, message.author),
  }
}

/**
 * The sealed entry of `id` this replica holds when the live document's
 * record (or placeholder) `live` under that id is another message: one
 * written under a sealed message's id before the relay refused such ids
 * (rule `message-id-taken`). The sealed, older one is the message; the other
 * is not shown (until the segment is held, this replica cannot tell).
 */
function sealedOver(
  doc: Y.Doc,
  id: MessageId,
  live: { readonly author: UserId; readonly createdAt: number } | undefined,
): SealedEntry | undefined {
  if (!live) return undefined
  const sealed = sealedHistory(doc).entry(id)
  return sealed && (sealed.record.author !== live.author || sealed.record.createdAt !== live.createdAt)
    ? sealed
    : undefined
}

/**
 * A sealed message as readers see it: its record from the segment with the
 * overlays the live document holds (edit, reactions, deletion since sealing).
 */
export function sealedMessageView(doc: Y.Doc, entry: SealedEntry): MessageView {
  const { seq, record } = entry
  if (isDeletedRecord(record)) return deletedView(doc, record, record, seq)
  const tombstone = decodeTombstone(typesOf(doc).tombstones.get(record.id))
  if (tombstone) return deletedView(doc, record, tombstone, seq)
  // A later edit wins over the one folded when the message was sealed.
  const edit = (typesOf(doc).edits.get(record.id) as EditRecord | undefined) ?? entry.overlays?.edit
  const reactions = sealedReactions(doc, entry)
  return {
    id: record.id,
    author: record.author,
    body: edit ? edit.body : record.body,
    type: record.type ?? "text",
    createdAt: record.createdAt,
    priority: record.priority ?? "normal",
    attachments: record.attachments ?? [],
    metadata: record.metadata ?? {},
    reactions,
    seq,
    ...(record.replyTo !== undefined ? { replyTo: record.replyTo } : {}),
    ...(edit ? { editedAt: edit.editedAt } : {}),
    ...authorProfile(doc, record.author),
  }
}

/**
 * A sealed message's reactions: those folded into its entry, less the ones
 * removed since (a removal under their key), and those added since.
 */
function sealedReactions(doc: Y.Doc, entry: SealedEntry): Record<string, UserId[]> {
  const index = messageIndex(doc)
  const id = entry.record.id
  const byEmoji = new Map<string, Set<UserId>>()
  const removed = index.reactionRemovals.get(id)
  for (const [emoji, user] of entry.overlays?.reactions ?? [])
    if (!removed?.get(emoji)?.has(user)) map.setIfUndefined(byEmoji, emoji, () => new Set<UserId>()).add(user)
  for (const [emoji, users] of index.reactions.get(id) ?? [])
    for (const user of users) map.setIfUndefined(byEmoji, emoji, () => new Set<UserId>()).add(user)
  const reactions: Record<string, UserId[]> = {}
  for (const [emoji, users] of byEmoji) reactions[emoji] = [...users].sort()
  return reactions
}

/**
 * Sealed messages this replica holds (see `SealedHistory`) numbered below
 * `before`, the latest `limit` of them, oldest first, as readers see them.
 * An id sealed twice (a message written under a sealed one's id before the
 * relay refused that) is listed once, as its first.
 */
export function listSealedMessages(doc: Y.Doc, before: number, limit: number): MessageView[] {
  const history = sealedHistory(doc)
  const views: MessageView[] = []
  const held = history.held()
  for (let h = held.length - 1; h >= 0 && views.length < limit; h--) {
    const segment = history.segment(held[h]!)!
    for (let i = segment.entries.length - 1; i >= 0 && views.length < limit; i--) {
      const entry = segment.entries[i]!
      if (entry.seq < before && history.entry(entry.record.id) === entry)
        views.push(sealedMessageView(doc, entry))
    }
  }
  return views.reverse()
}

/** Which part of the canonical order to read. */
export type MessageWindow =
  | { readonly last: number }
  | { readonly before: MessageId; readonly limit: number }
  | { readonly after: MessageId; readonly limit: number }
  | { readonly around: MessageId; readonly limit: number }

/**
 * A window of messages in canonical order. An anchor id that is unknown gives
 * an empty list rather than a guess.
 */
export function listMessages(doc: Y.Doc, window: MessageWindow): MessageView[] {
  const index = messageIndex(doc)
  const order = index.order()
  let start: number
  let end: number
  if ("last" in window) {
    start = Math.max(0, order.length - window.last)
    end = order.length
  } else {
    const anchor = "before" in window ? window.before : "after" in window ? window.after : window.around
    const at = index.positionOf(anchor)
    if (at < 0 || order[at] !== anchor) return []
    if ("before" in window) {
      start = Math.max(0, at - window.limit)
      end = at
    } else if ("after" in window) {
      start = at + 1
      end = Math.min(order.length, at + 1 + window.limit)
    } else {
      const before = Math.floor((window.limit - 1) / 2)
      start = Math.max(0, at - before)
      end = Math.min(order.length, start + window.limit)
      start = Math.max(0, end - window.limit)
    }
  }
  const views: MessageView[] = []
  for (let i = start; i < end; i++) {
    const id = order[i]!
    // Another message under a sealed one's id: the sealed one is listed where it was sealed.
    if (sealedOver(doc, id, index.deleted.get(id) ?? index.records.get(id))) continue
    const view = getMessage(doc, id)
    if (view) views.push(view)
  }
  return views
}

/** Most messages {@link lastMessage} passes over from the end. */
const LAST_MESSAGE_WALK = 256

/**
 * The latest message in canonical order, deleted ones included (as
 * placeholders), expired fleeting ones not: they are gone for readers, and a
 * preview of them would say "deleted". Looks back at most
 * {@link LAST_MESSAGE_WALK} messages.
 */
export function lastMessage(doc: Y.Doc): MessageView | undefined {
  const index = messageIndex(doc)
  const order = index.order()
  // Almost always its last message; bounded, for a relay whose history is never sealed (no preview
  // past that many expired ones).
  for (let i = order.length - 1; i >= Math.max(0, order.length - LAST_MESSAGE_WALK); i--) {
    const id = order[i]!
    if (sealedOver(doc, id, index.deleted.get(id) ?? index.records.get(id))) continue
    const view = getMessage(doc, id)
    if (view && !(view.deleted && view.priority === "fleeting")) return view
  }
  return undefined
}

/** Number of messages in the conversation, deleted placeholders included. */
export const messageCount = (doc: Y.Doc): number => messageIndex(doc).order().length

/** Every user's markers, for "seen by" displays. */
export function allMarkers(doc: Y.Doc): Record<UserId, Markers> {
  const t = typesOf(doc)
  const out: Record<string, Markers> = {}
  for (const [user, read] of t.read)
    out[user] = { read, delivered: Math.max(read, t.delivered.get(user) ?? 0) }
  for (const [user, delivered] of t.delivered) out[user] ??= { read: 0, delivered }
  return out as Record<UserId, Markers>
}

/** `user`'s markers (0 when unset). Read implies delivered. */
export function markersOf(doc: Y.Doc, user: UserId): Markers {
  const t = typesOf(doc)
  const read = t.read.get(user) ?? 0
  return { read, delivered: Math.max(read, t.delivered.get(user) ?? 0) }
}

/**
 * Messages `user` has not read: sequenced above their read marker, plus those
 * not sequenced yet, that others wrote and that are not deleted. Counting by
 * sequence rather than position is what keeps an offline device's messages,
 * merged in late, from hiding behind a marker or being counted twice.
 */
export function unreadCount(
  doc: Y.Doc,
  user: UserId,
  /** The user's read marker, when the caller has read it already (see `memberReadState`). */
  marker: number = typesOf(doc).read.get(user) ?? 0,
): number {
  const live = messageIndex(doc).unreadFor(user, marker)
  // Sealed messages count from the segments' summaries (and the held segment the marker falls in).
  return marker < sealedThrough(doc) ? live + sealedUnread(doc, user, marker).count : live
}

/** Highest sequence number assigned in this conversation (0 when none), sealed history included. */
export const lastSequence = (doc: Y.Doc): number =>
  Math.max(messageIndex(doc).lastSequence(), sealedThrough(doc))
