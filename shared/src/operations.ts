import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { ErrorCode, ParleyError } from "./errors.js"
import { encodeTombstone, type SealedEntry, sealedHistory } from "./history.js"
import {
  type ConversationId,
  directConversationId,
  directDistinctKey,
  directUsersOf,
  isMessageId,
  type MessageId,
  newMessageId,
  parseUserId,
  type UserId,
} from "./ids.js"
import { assertTitle, metadataOf } from "./input-checks.js"
import { messageIndex } from "./message-index.js"
import { plainJsonOf } from "./plain-json.js"
import { getConversation, getMessage, type MessageView, markersOf, roleOf } from "./reads.js"
import {
  canAddParticipant,
  canAddReaction,
  canChangeRole,
  canCreateWithId,
  canDeleteMessage,
  canEditMessage,
  canMoveMarker,
  canReact,
  canRemoveParticipant,
  canReopenConversation,
  canSendMessage,
  canUpdateConversation,
  canWriteConversation,
  type Decision,
  keepsAnOwner,
} from "./rules.js"
import {
  type Attachment,
  type ConversationInfo,
  type ConversationKind,
  type DeletedMessageRecord,
  decodeStoredRecord,
  encodeStoredRecord,
  isDeletedRecord,
  isReactionEmoji,
  isReactionRemoval,
  Limits,
  type MessageRecord,
  type Metadata,
  MetaKey,
  type Priority,
  type Role,
  reactionKey,
  SCHEMA_VERSION,
  storedRecordId,
} from "./schema.js"
import {
  assertValid,
  checkEditRecord,
  checkMarker,
  checkMessageRecord,
  checkParticipantRecord,
} from "./validate.js"
import { assertWellFormed } from "./well-formed.js"

/**
 * The write operations on a conversation document. Each one checks the rules
 * for `actor` first and throws FORBIDDEN (naming the rule) before writing
 * anything; each writes in one Yjs transaction, so that it reaches every
 * replica as one update. `origin` is passed to the transaction for callers that
 * tell their own writes apart.
 */
export interface WriteOptions {
  /** Time to record, in milliseconds since the epoch. Defaults to `Date.now()`. */
  readonly now?: number
  /** Yjs transaction origin. */
  readonly origin?: unknown
}

/** Throws FORBIDDEN when `decision` refuses. */
export function assertAllowed(decision: Decision): void {
  if (!decision.allowed) throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
}

/** The actor's role, for a write: throws FORBIDDEN (rule `conversation-deleted`) once the conversation is deleted. */
function writerRole(doc: Y.Doc, actor: UserId): Role | undefined {
  assertAllowed(canWriteConversation(getConversation(doc)?.deletedAt !== undefined))
  return roleOf(doc, actor)
}

function requireConversation(doc: Y.Doc): ConversationInfo {
  const info = getConversation(doc)
  if (!info) throw new ParleyError(ErrorCode.NOT_FOUND, "this document holds no conversation")
  return info
}

/** What to create. */
export interface CreateConversationInput {
  readonly kind: ConversationKind
  /** The conversation id; derived from the participants for direct conversations. */
  readonly id?: ConversationId
  /** Other participants (the creator is added as owner). */
  readonly participants: readonly UserId[]
  readonly title?: string
  readonly metadata?: Metadata
}

/**
 * Creates the conversation in an empty document. For a direct conversation the
 * id and distinct key come from the two users, both are owners, and creating it
 * again (on either side, even concurrently offline) changes nothing.
 */
export function createConversation(
  doc: Y.Doc,
  actor: UserId,
  input: CreateConversationInput,
  options: WriteOptions = {},
): ConversationInfo {
  const existing = getConversation(doc)
  if (existing) {
    if (existing.kind === "direct" && input.kind === "direct") return existing
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "this conversation already exists")
  }
  const others = [...new Set(input.participants.map(parseUserId))].filter((u) => u !== actor)
  const roles = new Map<UserId, Role>([[actor, "owner"]])
  let id = input.id
  let distinctKey: string | undefined
  if (input.kind === "direct") {
    if (others.length !== 1)
      throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "a direct conversation has two users")
    id = directConversationId([actor, others[0]!])
    distinctKey = directDistinctKey([actor, others[0]!])
    roles.set(others[0]!, "owner")
  } else {
    for (const user of others) roles.set(user, "member")
  }
  if (id === undefined) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "a group conversation needs an id")
  if (roles.size > Limits.participants) throw new ParleyError(ErrorCode.TOO_LARGE, "too many participants")
  const title = input.title ?? ""
  assertTitle(title)
  const metadata = input.metadata === undefined ? {} : metadataOf(input.metadata)
  // The id decides who may create it and as what; a group id the creator owns.
  assertAllowed(canCreateWithId(actor, { id, kind: input.kind, roles, distinctKey }))
  const now = options.now ?? Date.now()
  const t = typesOf(doc)
  // In write order, which is the order of the document's clock: a creation too large for one update
  // (a group of more than ~340 members) reaches the relay in parts cut along that order (shared
  // `splitUpdate`), and the relay takes a first part only as a whole creation (every field, the
  // creator an owner), then the other members as participants added by that owner. With createdAt
  // written after every participant, the first part was refused and the group never existed.
  doc.transact(() => {
    t.meta.set(MetaKey.schemaVersion, SCHEMA_VERSION)
    t.meta.set(MetaKey.id, id)
    t.meta.set(MetaKey.kind, input.kind)
    t.meta.set(MetaKey.title, title)
    t.meta.set(MetaKey.createdBy, actor)
    t.meta.set(MetaKey.createdAt, now)
    t.meta.set(MetaKey.metadata, metadata)
    if (distinctKey !== undefined) t.meta.set(MetaKey.distinctKey, distinctKey)
    // The creator first (the roles map starts with them), so that the first part makes them its owner.
    for (const [user, role] of roles) t.participants.set(user, { role, addedBy: actor, addedAt: now })
  }, options.origin)
  return requireConversation(doc)
}

/** Sets the title (owners and admins). */
export function renameConversation(
  doc: Y.Doc,
  actor: UserId,
  title: string,
  options: WriteOptions = {},
): void {
  requireConversation(doc)
  assertAllowed(canUpdateConversation(writerRole(doc, actor)))
  assertTitle(title)
  doc.transact(() => typesOf(doc).meta.set(MetaKey.title, title), options.origin)
}

/** Replaces the conversation's metadata (owners and admins). */
export function setConversationMetadata(
  doc: Y.Doc,
  actor: UserId,
  metadata: Metadata,
  options: WriteOptions = {},
): void {
  requireConversation(doc)
  assertAllowed(canUpdateConversation(writerRole(doc, actor)))
  const value = metadataOf(metadata)
  doc.transact(() => typesOf(doc).meta.set(MetaKey.metadata, value), options.origin)
}

/** Marks the conversation deleted (owners and admins). Its content stays until purged. */
export function deleteConversation(doc: Y.Doc, actor: UserId, options: WriteOptions = {}): void {
  const info = requireConversation(doc)
  if (info.deletedAt !== undefined) return
  assertAllowed(canUpdateConversation(writerRole(doc, actor)))
  doc.transact(() => {
    typesOf(doc).meta.set(MetaKey.deletedBy, actor)
    typesOf(doc).meta.set(MetaKey.deletedAt, options.now ?? Date.now())
  }, options.origin)
}

/**
 * Reopens a deleted direct conversation (either of its two users, also one who
 * left it): removes the deletion, records when and by whom it was reopened,
 * and adds back as owners those of the two who left it, so that the pair can
 * talk again under the only id they have. What the deletion covered stays
 * purged: the relay purges it before it takes the reopen (relay README,
 * "Deletion and erasure"). Throws FORBIDDEN (rule `reopen-direct`) for a
 * group, for anyone else and for a conversation that is not deleted.
 */
export function reopenConversation(doc: Y.Doc, actor: UserId, options: WriteOptions = {}): void {
  const info = requireConversation(doc)
  assertAllowed(canReopenConversation(actor, info.id, info.kind, info.deletedAt !== undefined))
  const now = options.now ?? Date.now()
  const t = typesOf(doc)
  const missing = directUsersOf(info.id)!.filter((user) => !t.participants.has(user))
  doc.transact(() => {
    t.meta.delete(MetaKey.deletedAt)
    t.meta.delete(MetaKey.deletedBy)
    t.meta.set(MetaKey.reopenedBy, actor)
    t.meta.set(MetaKey.reopenedAt, now)
    for (const user of missing) t.participants.set(user, { role: "owner", addedBy: actor, addedAt: now })
  }, options.origin)
}

/** Adds users with `role` (owners and admins; not in direct conversations). Present users are skipped. */
export function addParticipants(
  doc: Y.Doc,
  actor: UserId,
  users: readonly UserId[],
  role: Role = "member",
  options: WriteOptions = {},
): UserId[] {
  const info = requireConversation(doc)
  assertAllowed(canAddParticipant(writerRole(doc, actor), info.kind, role))
  const t = typesOf(doc)
  const added = [...new Set(users.map(parseUserId))].filter((u) => !t.participants.has(u))
  if (t.participants.size + added.length > Limits.participants)
    throw new ParleyError(ErrorCode.TOO_LARGE, "too many participants")
  const now = options.now ?? Date.now()
  // What is written is checked as the relay checks it (a role "god" from a form was written, refused by
  // the relay, and every later change of the device to the conversation with it: an outside probe).
  assertValid(checkParticipantRecord, { role, addedBy: actor, addedAt: now })
  if (added.length > 0) {
    doc.transact(() => {
      for (const user of added) t.participants.set(user, { role, addedBy: actor, addedAt: now })
    }, options.origin)
  }
  return added
}

/** Removes users (owners and admins; anyone may remove themselves). Absent users are skipped. */
export function removeParticipants(
  doc: Y.Doc,
  actor: UserId,
  users: readonly UserId[],
  options: WriteOptions = {},
): UserId[] {
  const info = requireConversation(doc)
  const t = typesOf(doc)
  // Leaving stays possible once the conversation is deleted (it only takes it out of one's inbox).
  const actorRole = users.every((u) => u === actor) ? roleOf(doc, actor) : writerRole(doc, actor)
  const removed = [...new Set(users)].filter((u) => t.participants.has(u))
  for (const user of removed) {
    assertAllowed(
      canRemoveParticipant(
        actor,
        actorRole,
        info.kind,
        user,
        t.participants.get(user)!.role,
        typeof t.meta.get(MetaKey.deletedAt) === "number",
      ),
    )
  }
  if (removed.length > 0) {
    const staying = [...t.participants.entries()].filter(([user]) => !removed.includes(user as UserId))
    assertAllowed(
      keepsAnOwner(
        info.kind,
        staying.filter(([, record]) => record.role === "owner").length,
        staying.length,
        typeof t.meta.get(MetaKey.deletedAt) === "number",
      ),
    )
    doc.transact(() => {
      for (const user of removed) t.participants.delete(user)
    }, options.origin)
  }
  return removed
}

/** `actor` leaves the conversation. */
export const leaveConversation = (doc: Y.Doc, actor: UserId, options: WriteOptions = {}): void => {
  removeParticipants(doc, actor, [actor], options)
}

/** Changes a participant's role. */
export function changeRole(
  doc: Y.Doc,
  actor: UserId,
  user: UserId,
  role: Role,
  options: WriteOptions = {},
): void {
  const info = requireConversation(doc)
  const current = typesOf(doc).participants.get(user)
  if (!current) throw new ParleyError(ErrorCode.NOT_FOUND, `${user} is not a participant`)
  if (current.role === role) return
  assertValid(checkParticipantRecord, { ...current, role })
  assertAllowed(canChangeRole(writerRole(doc, actor), info.kind, current.role, role))
  if (current.role === "owner") {
    const records = [...typesOf(doc).participants.values()]
    assertAllowed(
      keepsAnOwner(info.kind, records.filter((r) => r.role === "owner").length - 1, records.length),
    )
  }
  doc.transact(() => typesOf(doc).participants.set(user, { ...current, role }), options.origin)
}

/** What to send. */
export interface SendMessageInput {
  /** Client-generated id; sending the same id again is a no-op. Generated when absent. */
  readonly id?: MessageId
  readonly body: string
  readonly type?: string
  readonly replyTo?: MessageId
  readonly attachments?: readonly Attachment[]
  readonly metadata?: Metadata
  readonly priority?: Priority
}

/** Sends a message as `actor`. Idempotent by id: a retry returns the message already there. */
export function sendMessage(
  doc: Y.Doc,
  actor: UserId,
  input: SendMessageInput,
  options: WriteOptions = {},
): MessageView {
  requireConversation(doc)
  if (typeof input !== "object" || input === null)
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "a message to send is an object with its body")
  const id = input.id ?? newMessageId()
  const already = getMessage(doc, id)
  if (already) return already
  assertAllowed(canSendMessage(actor, writerRole(doc, actor), actor))
  // An attachment's optional field given as `undefined` (`title: maybeTitle`) is left out, as JSON would.
  if (input.attachments !== undefined && !Array.isArray(input.attachments))
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "attachments are an array")
  const attachments = input.attachments?.length ? plainJsonOf(input.attachments, "an attachment") : undefined
  const metadata = input.metadata === undefined ? undefined : metadataOf(input.metadata)
  const record: MessageRecord = {
    id,
    author: actor,
    body: input.body,
    createdAt: options.now ?? Date.now(),
    ...(input.type !== undefined && input.type !== "text" ? { type: input.type } : {}),
    ...(input.replyTo !== undefined ? { replyTo: input.replyTo } : {}),
    ...(attachments ? { attachments } : {}),
    ...(metadata && Object.keys(metadata).length > 0 ? { metadata } : {}),
    ...(input.priority !== undefined && input.priority !== "normal" ? { priority: input.priority } : {}),
  }
  assertValid(checkMessageRecord, record)
  doc.transact(() => typesOf(doc).messages.push([encodeStoredRecord(record)]), options.origin)
  return getMessage(doc, id)!
}

function requireLiveMessage(doc: Y.Doc, id: MessageId): MessageRecord {
  const index = messageIndex(doc)
  const record = index.records.get(id)
  if (record && !index.deleted.has(id)) return record
  // A message sealed into history is as live as any, until deleted (its segment must be held here).
  const sealed = liveSealedEntry(doc, id)
  if (sealed) return sealed.record as MessageRecord
  throw new ParleyError(ErrorCode.NOT_FOUND, `no message ${id}`)
}

/** The sealed entry of `id` when this replica holds its segment and the message is not deleted. */
function liveSealedEntry(doc: Y.Doc, id: MessageId): SealedEntry | undefined {
  const entry = sealedHistory(doc).entry(id)
  if (!entry || isDeletedRecord(entry.record) || typesOf(doc).tombstones.has(id)) return undefined
  return entry
}

/** Replaces a message's body (author only). */
export function editMessage(
  doc: Y.Doc,
  actor: UserId,
  id: MessageId,
  body: string,
  options: WriteOptions = {},
): void {
  const record = requireLiveMessage(doc, id)
  assertAllowed(canEditMessage(actor, writerRole(doc, actor), record.author))
  const edit = { body, editedAt: options.now ?? Date.now() }
  assertValid(checkEditRecord, edit)
  doc.transact(() => typesOf(doc).edits.set(id, edit), options.origin)
}

/**
 * Deletes a message (author, owners and admins). The record is removed from the
 * array, so Yjs garbage-collects its body, attachments and metadata; a
 * placeholder with only id, author and times takes its place, and its edit and
 * reactions are removed too. Deleting twice is a no-op.
 */
export function deleteMessage(doc: Y.Doc, actor: UserId, id: MessageId, options: WriteOptions = {}): void {
  const index = messageIndex(doc)
  if (index.deleted.has(id)) return
  const sealed = index.records.has(id) ? undefined : sealedHistory(doc).entry(id)
  if (sealed && (isDeletedRecord(sealed.record) || typesOf(doc).tombstones.has(id))) return
  const record = requireLiveMessage(doc, id)
  assertAllowed(canDeleteMessage(actor, writerRole(doc, actor), record.author))
  const t = typesOf(doc)
  if (sealed) {
    // The record is in an immutable segment: the deletion is a tombstone in the live document.
    const tombstone = encodeTombstone({
      author: record.author,
      seq: sealed.seq,
      deletedAt: options.now ?? Date.now(),
      deletedBy: actor,
    })
    doc.transact(() => {
      t.tombstones.set(id, tombstone)
      t.edits.delete(id)
      // The relay's copy of a pinned sealed message holds its text: it goes with the message.
      if (t.pins.has(id)) t.pins.delete(id)
      for (const byEmoji of [index.reactions.get(id), index.reactionRemovals.get(id)])
        for (const [emoji, users] of byEmoji ?? []) {
          for (const user of users) t.reactions.delete(reactionKey(id, user, emoji))
        }
    }, options.origin)
    return
  }
  const placeholder: DeletedMessageRecord = {
    id,
    author: record.author,
    createdAt: record.createdAt,
    deletedAt: options.now ?? Date.now(),
    deletedBy: actor,
  }
  doc.transact(() => {
    const position = positionOfLiveRecord(t.messages, id)
    t.messages.delete(position, 1)
    t.messages.insert(position, [encodeStoredRecord(placeholder)])
    t.edits.delete(id)
    for (const [emoji, users] of index.reactions.get(id) ?? []) {
      for (const user of users) t.reactions.delete(reactionKey(id, user, emoji))
    }
  }, options.origin)
}

/** Index in `messages` of the live record of `id` (a concurrent placeholder may share its id). */
function positionOfLiveRecord(messages: Y.Array<unknown>, id: MessageId): number {
  let position = 0
  for (let item = messages._start; item !== null; item = item.right) {
    if (item.deleted || !item.countable) continue
    const values = item.content.getContent()
    for (let j = 0; j < values.length; j++) {
      const value = values[j]
      if (storedRecordId(value) === id && !isDeletedRecord(decodeStoredRecord(value)!)) return position + j
    }
    position += item.length
  }
  throw new ParleyError(ErrorCode.NOT_FOUND, `message ${id} not found`)
}

function checkEmoji(emoji: string) {
  if (typeof emoji !== "string" || !isReactionEmoji(emoji))
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "invalid reaction")
  assertWellFormed(emoji, "reaction")
}

/** Adds `actor`'s reaction with `emoji`. */
export function react(
  doc: Y.Doc,
  actor: UserId,
  id: MessageId,
  emoji: string,
  options: WriteOptions = {},
): void {
  requireLiveMessage(doc, id)
  checkEmoji(emoji)
  assertAllowed(canReact(actor, writerRole(doc, actor), actor))
  const key = reactionKey(id, actor, emoji)
  const value = typesOf(doc).reactions.get(key)
  if (value !== undefined && !isReactionRemoval(value)) return
  // Folded into its sealed entry and not removed since: there already.
  if (value === undefined && foldedReaction(doc, id, actor, emoji)) return
  const index = messageIndex(doc)
  const shown = index.reactions.get(id)
  const present = shown?.has(emoji) === true
  assertAllowed(canAddReaction(present, (shown?.size ?? 0) + (present ? 0 : 1), index.reactionsOf(actor) + 1))
  doc.transact(() => typesOf(doc).reactions.set(key, options.now ?? Date.now()), options.origin)
}

/** Removes `actor`'s reaction with `emoji`. */
export function unreact(
  doc: Y.Doc,
  actor: UserId,
  id: MessageId,
  emoji: string,
  options: WriteOptions = {},
): void {
  checkEmoji(emoji)
  assertAllowed(canReact(actor, writerRole(doc, actor), actor))
  const key = reactionKey(id, actor, emoji)
  const reactions = typesOf(doc).reactions
  const value = reactions.get(key)
  const index = messageIndex(doc)
  // A sealed message's folded reactions are in its segment: not held here, it cannot be told (the
  // relay's server-side writes hold it and try again on NOT_FOUND).
  if (!index.records.has(id) && !index.deleted.has(id) && value === undefined) requireLiveMessage(doc, id)
  if (foldedReaction(doc, id, actor, emoji)) {
    // Kept in the sealed entry: removed by a removal under its key (which replaces a later one too).
    if (isReactionRemoval(value)) return
    doc.transact(() => reactions.set(key, -(options.now ?? Date.now())), options.origin)
    return
  }
  if (value === undefined) return
  doc.transact(() => reactions.delete(key), options.origin)
}

/** Whether `user`'s reaction with `emoji` was folded into the sealed entry of `id` this replica holds. */
function foldedReaction(doc: Y.Doc, id: MessageId, user: UserId, emoji: string): boolean {
  const folded = sealedHistory(doc).entry(id)?.overlays?.reactions
  return folded?.some(([e, u]) => e === emoji && u === user) === true
}

/** A marker target: a sequence number, a message id, or the latest message. */
export type MarkerTarget = number | MessageId | "latest"

function markerValue(doc: Y.Doc, target: MarkerTarget): number {
  const index = messageIndex(doc)
  if (typeof target === "number") {
    assertValid(checkMarker, target)
    return target
  }
  if (target === "latest") return index.lastSequence()
  // Not an id at all ("nope", a typo): refused as react and edit refuse it, not taken for "latest" (which
  // marked every message read and answered true: an outside tester).
  if (!isMessageId(target))
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `invalid message id: ${JSON.stringify(target)}`)
  const seq = index.seqOf.get(target) ?? sealedHistory(doc).entry(target)?.seq
  if (seq !== undefined) return seq
  // A message not sequenced yet (still pending somewhere) marks everything the relay has ordered.
  if (index.records.has(target)) return index.lastSequence()
  // Unknown here: most likely sealed in a segment this replica has not loaded. Guessing would mark
  // every later message read (the "latest" fallback did), so the caller must load it or give a number.
  throw new ParleyError(
    ErrorCode.NOT_FOUND,
    `no message ${target} here: a sealed message must be loaded (loadOlder) before it can be marked`,
  )
}

function moveMarker(
  doc: Y.Doc,
  which: "read" | "delivered",
  actor: UserId,
  target: MarkerTarget,
  options: WriteOptions,
): boolean {
  requireConversation(doc)
  const map = typesOf(doc)[which]
  const to = Math.min(markerValue(doc, target), messageIndex(doc).lastSequence())
  const current = map.get(actor)
  if (current !== undefined && to <= current) return false
  if (current === undefined && to === 0) return false
  assertAllowed(canMoveMarker(actor, writerRole(doc, actor), actor, current, to))
  doc.transact(() => {
    map.set(actor, to)
    // Read implies delivered; keeping both forward spares readers a max().
    if (which === "read" && (typesOf(doc).delivered.get(actor) ?? 0) < to)
      typesOf(doc).delivered.set(actor, to)
  }, options.origin)
  return true
}

/** Moves `actor`'s read marker forward to `target` (default: latest). Returns whether it moved. */
export const markRead = (
  doc: Y.Doc,
  actor: UserId,
  target: MarkerTarget = "latest",
  options: WriteOptions = {},
) => moveMarker(doc, "read", actor, target, options)

/** Moves `actor`'s delivered marker forward to `target` (default: latest). Returns whether it moved. */
export const markDelivered = (
  doc: Y.Doc,
  actor: UserId,
  target: MarkerTarget = "latest",
  options: WriteOptions = {},
) => moveMarker(doc, "delivered", actor, target, options)

export { markersOf }
