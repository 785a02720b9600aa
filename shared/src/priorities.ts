import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { ErrorCode, ParleyError } from "./errors.js"
import { encodeTombstone, type SealedEntry, sealedHistory } from "./history.js"
import type { MessageId, UserId } from "./ids.js"
import { assertTitle, metadataOf } from "./input-checks.js"
import { messageIndex } from "./message-index.js"
import { assertAllowed, type WriteOptions } from "./operations.js"
import { getConversation, getMessage, type MessageView, roleOf, sealedMessageView } from "./reads.js"
import { canUnpinMessage, canUpdateConversation, canWriteConversation } from "./rules.js"
import {
  DEFAULT_FLEETING_SECONDS,
  type DeletedMessageRecord,
  decodeStoredRecord,
  encodeStoredRecord,
  isDeletedRecord,
  type MessageRecord,
  type Metadata,
  MetaKey,
  reactionKey,
  type StoredMessage,
  type StoredPin,
  storedRecordId,
  type UnpinRecord,
} from "./schema.js"
import { assertValid, checkFleetingSeconds, checkUnpinRecord } from "./validate.js"

/*
 * What a message's priority does, beyond being stored in its record:
 *
 * - sticky: pinned. `pinnedMessages` lists live sticky records and the
 *   copies the relay keeps in `pins` of the ones it sealed, minus those in
 *   `unpinned` (written by the author or an admin: `unpinMessage`) and the
 *   deleted ones.
 * - emergency: stays flagged for a reader until their read marker passes it
 *   (`unreadEmergency`, which inbox entries carry).
 * - fleeting: gone for everyone `fleetingSeconds` after it was written
 *   (`fleetingExpiry`): readers hide it from then on (`isExpired`), and the
 *   relay replaces it by a deletion placeholder (`expireMessage`), which
 *   purges its content from storage as any deletion does.
 */

function writerRole(doc: Y.Doc, actor: UserId) {
  assertAllowed(canWriteConversation(getConversation(doc)?.deletedAt !== undefined))
  return roleOf(doc, actor)
}

/** Encodes a `pins` value. */
export const encodePin = (entry: { seq: number; record: MessageRecord }): StoredPin => ({
  s: entry.seq,
  r: encodeStoredRecord(entry.record) as StoredMessage,
})

/** Decodes a `pins` value; undefined when malformed. */
export function decodePin(value: unknown): SealedEntry | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const { s, r } = value as { s?: unknown; r?: unknown }
  const record = decodeStoredRecord(r)
  if (!Number.isInteger(s) || !record || isDeletedRecord(record)) return undefined
  return { seq: s as number, record }
}

/** Who unpinned `id`, when someone did. */
export function unpinOf(doc: Y.Doc, id: MessageId): UnpinRecord | undefined {
  return typesOf(doc).unpinned.get(id)
}

/**
 * The pinned messages, oldest first: sticky messages not unpinned and not
 * deleted, live or sealed (sealed ones from the relay's copies in `pins`, so
 * no segment is needed), with their edits and reactions.
 */
export function pinnedMessages(doc: Y.Doc): MessageView[] {
  const t = typesOf(doc)
  const index = messageIndex(doc)
  const views: MessageView[] = []
  const seen = new Set<MessageId>()
  for (const id of index.prioritized) {
    const record = index.records.get(id)
    if (record?.priority !== "sticky" || t.unpinned.has(id)) continue
    const view = getMessage(doc, id)
    if (view && !view.deleted) {
      views.push(view)
      seen.add(id)
    }
  }
  for (const [id, value] of t.pins) {
    if (seen.has(id as MessageId) || t.unpinned.has(id) || t.tombstones.has(id)) continue
    const entry = decodePin(value)
    if (!entry || index.deleted.has(id as MessageId)) continue
    const view = sealedMessageView(doc, entry)
    if (!view.deleted) views.push(view)
  }
  return views.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || a.createdAt - b.createdAt)
}

/** The record of a message that is not deleted, wherever this replica has it (live, pinned copy, segment). */
function liveRecord(doc: Y.Doc, id: MessageId): MessageRecord | undefined {
  const index = messageIndex(doc)
  if (index.deleted.has(id) || typesOf(doc).tombstones.has(id)) return undefined
  const record =
    index.records.get(id) ??
    decodePin(typesOf(doc).pins.get(id))?.record ??
    sealedHistory(doc).entry(id)?.record
  return record && !isDeletedRecord(record) ? record : undefined
}

/**
 * Unpins a sticky message, as `actor` (its author or an owner / admin: rule
 * `unpin-author-or-admin`). Recorded in `unpinned` for good; the relay's
 * copy of a sealed one goes with it. Unpinning twice is a no-op. Throws
 * NOT_FOUND for an unknown or deleted message, INVALID_ARGUMENT for one that
 * is not sticky.
 */
export function unpinMessage(doc: Y.Doc, actor: UserId, id: MessageId, options: WriteOptions = {}): void {
  const t = typesOf(doc)
  if (t.unpinned.has(id)) return
  const record = liveRecord(doc, id)
  if (!record) throw new ParleyError(ErrorCode.NOT_FOUND, `no message ${id}`)
  if (record.priority !== "sticky")
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "the message is not pinned")
  assertAllowed(canUnpinMessage(actor, writerRole(doc, actor), record.author))
  const unpin: UnpinRecord = { by: actor, at: options.now ?? Date.now() }
  assertValid(checkUnpinRecord, unpin)
  doc.transact(() => {
    t.unpinned.set(id, unpin)
    if (t.pins.has(id)) t.pins.delete(id)
  }, options.origin)
}

/**
 * Sets (or, with undefined, clears) the conversation's `fleetingSeconds`
 * (owners and admins). Applies to fleeting messages already sent too: each
 * disappears `fleetingSeconds` after it was written.
 */
export function setFleetingSeconds(
  doc: Y.Doc,
  actor: UserId,
  seconds: number | undefined,
  options: WriteOptions = {},
): void {
  assertAllowed(canUpdateConversation(writerRole(doc, actor)))
  if (seconds !== undefined) assertValid(checkFleetingSeconds, seconds)
  const meta = typesOf(doc).meta
  if (meta.get(MetaKey.fleetingSeconds) === seconds) return
  doc.transact(() => {
    if (seconds === undefined) meta.delete(MetaKey.fleetingSeconds)
    else meta.set(MetaKey.fleetingSeconds, seconds)
  }, options.origin)
}

/** What {@link updateConversation} changes; absent parts stay, `fleetingSeconds: null` returns to the default. */
export interface ConversationChange {
  readonly title?: string | undefined
  readonly metadata?: Metadata | undefined
  readonly fleetingSeconds?: number | null | undefined
}

/**
 * Changes the title, metadata and fleeting time together (owners and admins):
 * every part is checked before any is written, and all are written in one
 * transaction, so that a refused change (a title too long, metadata too
 * large) changes nothing. (One call per part, as `renameConversation` and
 * `setConversationMetadata` are, stores the parts before the refused one.)
 */
export function updateConversation(
  doc: Y.Doc,
  actor: UserId,
  change: ConversationChange,
  options: WriteOptions = {},
): void {
  if (!getConversation(doc)) throw new ParleyError(ErrorCode.NOT_FOUND, "this document holds no conversation")
  assertAllowed(canUpdateConversation(writerRole(doc, actor)))
  if (change.title !== undefined) assertTitle(change.title)
  const metadata = change.metadata === undefined ? undefined : metadataOf(change.metadata)
  if (change.fleetingSeconds !== undefined && change.fleetingSeconds !== null)
    assertValid(checkFleetingSeconds, change.fleetingSeconds)
  const meta = typesOf(doc).meta
  doc.transact(() => {
    if (change.title !== undefined) meta.set(MetaKey.title, change.title)
    if (metadata !== undefined) meta.set(MetaKey.metadata, metadata)
    if (change.fleetingSeconds === null) meta.delete(MetaKey.fleetingSeconds)
    else if (
      change.fleetingSeconds !== undefined &&
      meta.get(MetaKey.fleetingSeconds) !== change.fleetingSeconds
    )
      meta.set(MetaKey.fleetingSeconds, change.fleetingSeconds)
  }, options.origin)
}

/** The conversation's fleeting lifetime in seconds (its setting, or {@link DEFAULT_FLEETING_SECONDS}). */
export function fleetingSecondsOf(doc: Y.Doc): number {
  const value = typesOf(doc).meta.get(MetaKey.fleetingSeconds)
  return checkFleetingSeconds(value) === undefined ? (value as number) : DEFAULT_FLEETING_SECONDS
}

/**
 * When a fleeting message disappears (ms since epoch): `fleetingSeconds` after
 * it was written. `acceptedAt` (the relay's clock when it took the message)
 * bounds a `createdAt` a device set in the future; undefined for a message
 * that is not fleeting.
 */
export function fleetingExpiry(
  message: { readonly priority?: string; readonly createdAt: number },
  seconds: number,
  acceptedAt = Number.POSITIVE_INFINITY,
): number | undefined {
  if (message.priority !== "fleeting") return undefined
  return Math.min(message.createdAt, acceptedAt) + seconds * 1000
}

/**
 * Whether a message (as readers see it) is a fleeting one whose time in `doc`
 * is up at `now`, or the placeholder the relay left when it was (whatever
 * this device's clock says).
 */
export function isExpired(doc: Y.Doc, message: MessageView, now: number): boolean {
  if (message.deleted && message.priority === "fleeting") return true
  const at = fleetingExpiry(message, fleetingSecondsOf(doc))
  return at !== undefined && at <= now
}

/** The earliest expiry after `now` among `messages` (for a timer), if any. */
export function nextExpiry(doc: Y.Doc, messages: readonly MessageView[], now: number): number | undefined {
  const seconds = fleetingSecondsOf(doc)
  let next: number | undefined
  for (const m of messages) {
    const at = fleetingExpiry(m, seconds)
    if (at !== undefined && at > now && (next === undefined || at < next)) next = at
  }
  return next
}

/** Live fleeting messages of `doc` (ids), for the relay's expiry. */
export function fleetingMessages(doc: Y.Doc): { id: MessageId; createdAt: number }[] {
  const index = messageIndex(doc)
  const out: { id: MessageId; createdAt: number }[] = []
  for (const id of index.prioritized) {
    const record = index.records.get(id)
    if (record?.priority === "fleeting") out.push({ id, createdAt: record.createdAt })
  }
  return out
}

/**
 * The relay's write when a fleeting message's time is up: the message becomes
 * a deletion placeholder (a tombstone if it was sealed), its edit and
 * reactions go, as a deletion by its author (`deletedBy` is the author: they
 * chose the message's lifetime), marked `priority: "fleeting"` so that
 * readers hide it rather than show "deleted". No rule is consulted: the
 * relay writes it as itself. Returns whether it changed anything (false for
 * a message already deleted, unknown here, or not fleeting).
 */
export function expireMessage(doc: Y.Doc, id: MessageId, options: WriteOptions = {}): boolean {
  const t = typesOf(doc)
  const index = messageIndex(doc)
  const deletedAt = options.now ?? Date.now()
  const reactions = [...(index.reactions.get(id) ?? [])].flatMap(([emoji, users]) =>
    [...users].map((u) => reactionKey(id, u, emoji)),
  )
  const live = index.records.get(id)
  if (live && !index.deleted.has(id)) {
    if (live.priority !== "fleeting") return false
    const placeholder: DeletedMessageRecord = {
      id,
      author: live.author,
      createdAt: live.createdAt,
      deletedAt,
      deletedBy: live.author,
      priority: "fleeting",
    }
    doc.transact(() => {
      const positions: number[] = []
      t.messages.forEach((value, position) => {
        if (storedRecordId(value) === id) positions.push(position)
      })
      for (let i = positions.length - 1; i >= 0; i--) t.messages.delete(positions[i]!, 1)
      t.messages.insert(positions[0] ?? t.messages.length, [encodeStoredRecord(placeholder)])
      t.edits.delete(id)
      for (const key of reactions) t.reactions.delete(key)
    }, options.origin)
    return true
  }
  const sealed = sealedHistory(doc).entry(id)
  if (!sealed || isDeletedRecord(sealed.record) || t.tombstones.has(id)) return false
  if (sealed.record.priority !== "fleeting") return false
  const author = sealed.record.author
  doc.transact(() => {
    t.tombstones.set(
      id,
      encodeTombstone({ author, seq: sealed.seq, deletedAt, deletedBy: author, priority: "fleeting" }),
    )
    t.edits.delete(id)
    for (const key of reactions) t.reactions.delete(key)
  }, options.origin)
  return true
}

/**
 * Emergency messages `user` has not read, oldest first: others' live
 * `emergency` messages numbered above the user's read marker, or not numbered
 * yet. Live messages only: the relay seals only messages far behind the
 * latest (250 kept live by default), and an emergency that old is a stale one.
 */
export function unreadEmergency(
  doc: Y.Doc,
  user: UserId,
  /** The user's read marker, when the caller has read it already (see `memberReadState`). */
  marker: number = typesOf(doc).read.get(user) ?? 0,
): MessageId[] {
  const index = messageIndex(doc)
  // Almost always none: nothing to walk (once per connected member of a big room and message).
  if (index.prioritized.size === 0) return []
  const out: { id: MessageId; order: number }[] = []
  for (const id of index.prioritized) {
    const record = index.records.get(id)
    if (record?.priority !== "emergency" || record.author === user) continue
    const seq = index.seqOf.get(id)
    if (seq === undefined || seq > marker) out.push({ id, order: seq ?? Number.MAX_SAFE_INTEGER })
  }
  // Almost always none: no sort and copy per member of a big room.
  if (out.length === 0) return []
  return out.sort((a, b) => a.order - b.order).map((e) => e.id)
}
