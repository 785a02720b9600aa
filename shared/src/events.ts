import * as map from "lib0/map"
import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { decodeTombstone } from "./history.js"
import type { MessageId, UserId } from "./ids.js"
import { type Profile, profileOf } from "./profiles.js"
import { getConversation } from "./reads.js"
import {
  type ConversationInfo,
  type DeletedMessageRecord,
  decodeSequenceRecord,
  decodeStoredRecord,
  type EditRecord,
  isDeletedRecord,
  isReactionRemoval,
  type MessageRecord,
  MetaKey,
  type Participant,
  type ParticipantRecord,
  parseReactionKey,
  type Role,
} from "./schema.js"
import { addedItems, contentOf, inListOrder } from "./transaction-changes.js"

/**
 * What happened in a conversation, derived from what a Yjs transaction changed.
 * The relay turns these into hook events; the SDK into its own events. Who did
 * it is not part of the document change: callers that know (the relay knows the
 * session) add it.
 */
export type ChangeEvent =
  | { readonly type: "conversation.created"; readonly conversation: ConversationInfo }
  | {
      readonly type: "conversation.updated"
      readonly fields: readonly ("title" | "metadata" | "fleetingSeconds")[]
      readonly conversation: ConversationInfo
    }
  | { readonly type: "conversation.deleted"; readonly deletedBy: UserId }
  /** A deleted direct conversation was reopened (shared `reopenConversation`): empty, open to writes again. */
  | { readonly type: "conversation.reopened"; readonly reopenedBy: UserId }
  | { readonly type: "participants.added"; readonly participants: readonly Participant[] }
  | { readonly type: "participants.removed"; readonly users: readonly UserId[] }
  | {
      readonly type: "participants.roleChanged"
      readonly changes: readonly { readonly user: UserId; readonly from: Role; readonly to: Role }[]
    }
  | { readonly type: "message.sent"; readonly message: MessageRecord }
  | {
      readonly type: "message.edited"
      readonly messageId: MessageId
      readonly body: string
      readonly editedAt: number
    }
  | {
      readonly type: "message.deleted"
      readonly messageId: MessageId
      readonly author: UserId
      readonly deletedBy: UserId
    }
  | {
      readonly type: "reaction.added"
      readonly messageId: MessageId
      readonly user: UserId
      readonly emoji: string
    }
  | {
      readonly type: "reaction.removed"
      readonly messageId: MessageId
      readonly user: UserId
      readonly emoji: string
    }
  | { readonly type: "messages.read"; readonly user: UserId; readonly upTo: number }
  | { readonly type: "messages.delivered"; readonly user: UserId; readonly upTo: number }
  | { readonly type: "messages.sequenced"; readonly from: number; readonly ids: readonly MessageId[] }
  /** A user set (or removed) their profile in this conversation; `profile` is how it reads now. */
  | { readonly type: "profile.updated"; readonly user: UserId; readonly profile: Profile }

/** The `type` of a {@link ChangeEvent}. */
export type ChangeEventType = ChangeEvent["type"]

type MapChanges = Map<string, { action: "add" | "update" | "delete"; oldValue: unknown }>

/**
 * Calls `listener` after every transaction on `doc` that changed the
 * conversation, with the events in a stable order (conversation, participants,
 * messages, reactions, markers, sequencing, profiles). Returns the unsubscribe function.
 */
export function observeChanges(
  doc: Y.Doc,
  listener: (events: ChangeEvent[], transaction: Y.Transaction) => void,
): () => void {
  const t = typesOf(doc)
  // Collected while Yjs calls observers (deleted content is still readable then),
  // emitted once per transaction.
  const pending = new Map<Y.Transaction, Partial<Record<string, unknown>>>()
  const slot = (tr: Y.Transaction) =>
    map.setIfUndefined(pending, tr, (): Partial<Record<string, unknown>> => ({}))
  const onMap = (name: string) => (event: Y.YMapEvent<unknown>) => {
    slot(event.transaction)[name] = new Map(event.changes.keys)
  }
  const onMessages = (event: Y.YArrayEvent<unknown>) => {
    slot(event.transaction).messages = contentOf(
      inListOrder(addedItems(event.transaction, t.messages as Y.AbstractType<unknown>)),
    )
      .map(decodeStoredRecord)
      .filter((record) => record !== undefined)
  }
  // A seal or a re-seal (the relay's changes to `segments`) folds reactions into a segment: the keys it
  // removes are no reaction's removal.
  const onSegments = (event: Y.YArrayEvent<unknown>) => {
    slot(event.transaction).sealed = true
  }
  const onOrder = (event: Y.YArrayEvent<string>) => {
    slot(event.transaction).order = contentOf(
      addedItems(event.transaction, t.order as Y.AbstractType<unknown>),
    )
  }
  const mapNames = [
    "meta",
    "participants",
    "edits",
    "reactions",
    "read",
    "delivered",
    "tombstones",
    "profiles",
  ] as const
  const mapHandlers = mapNames.map((name) => [t[name] as Y.Map<unknown>, onMap(name)] as const)
  for (const [type, handler] of mapHandlers) type.observe(handler)
  t.messages.observe(onMessages)
  t.order.observe(onOrder)
  t.segments.observe(onSegments)
  const afterTransaction = (tr: Y.Transaction) => {
    const changes = pending.get(tr)
    if (!changes) return
    pending.delete(tr)
    const events = deriveEvents(doc, changes)
    if (events.length > 0) listener(events, tr)
  }
  doc.on("afterTransaction", afterTransaction)
  let stopped = false
  return () => {
    // Called twice (a document unloaded while its change waited for storage), Yjs wrote an error to the
    // console for each observer it no longer had.
    if (stopped) return
    stopped = true
    for (const [type, handler] of mapHandlers) type.unobserve(handler)
    t.messages.unobserve(onMessages)
    t.order.unobserve(onOrder)
    t.segments.unobserve(onSegments)
    doc.off("afterTransaction", afterTransaction)
  }
}

function deriveEvents(doc: Y.Doc, changes: Partial<Record<string, unknown>>): ChangeEvent[] {
  const events: ChangeEvent[] = []
  const t = typesOf(doc)
  const meta = changes.meta as MapChanges | undefined
  if (meta) {
    const conversation = getConversation(doc)
    if (meta.get(MetaKey.createdAt)?.action === "add" && conversation) {
      events.push({ type: "conversation.created", conversation })
    } else if (conversation) {
      // Both users creating their direct conversation at once rewrite these with the same values.
      const fields = (["title", "metadata", "fleetingSeconds"] as const).filter((k) => {
        const change = meta.get(k)
        return (
          change !== undefined &&
          !(change.action === "update" && JSON.stringify(change.oldValue) === JSON.stringify(t.meta.get(k)))
        )
      })
      if (fields.length > 0) events.push({ type: "conversation.updated", fields, conversation })
    }
    if (meta.get(MetaKey.deletedAt)?.action === "add" && conversation?.deletedAt !== undefined) {
      events.push({ type: "conversation.deleted", deletedBy: conversation.deletedBy! })
    }
    if (
      meta.get(MetaKey.deletedAt)?.action === "delete" &&
      meta.has(MetaKey.reopenedAt) &&
      conversation?.deletedAt === undefined &&
      conversation?.reopenedBy !== undefined
    ) {
      events.push({ type: "conversation.reopened", reopenedBy: conversation.reopenedBy })
    }
  }
  const participants = changes.participants as MapChanges | undefined
  if (participants) {
    const added: Participant[] = []
    const removed: UserId[] = []
    const roles: { user: UserId; from: Role; to: Role }[] = []
    for (const [key, change] of participants) {
      const user = key as UserId
      const now = t.participants.get(user)
      if (change.action === "add" && now) added.push({ user, ...now })
      else if (change.action === "delete") removed.push(user)
      else if (change.action === "update" && now) {
        const from = (change.oldValue as ParticipantRecord).role
        if (from !== now.role) roles.push({ user, from, to: now.role })
      }
    }
    if (added.length > 0) events.push({ type: "participants.added", participants: added })
    if (removed.length > 0) events.push({ type: "participants.removed", users: removed })
    if (roles.length > 0) events.push({ type: "participants.roleChanged", changes: roles })
  }
  for (const record of (changes.messages as (MessageRecord | DeletedMessageRecord)[] | undefined) ?? []) {
    if (isDeletedRecord(record)) {
      events.push({
        type: "message.deleted",
        messageId: record.id,
        author: record.author,
        deletedBy: record.deletedBy,
      })
    } else {
      events.push({ type: "message.sent", message: record })
    }
  }
  // A sealed message's deletion is an overlay (its record is in an immutable segment): the same event.
  for (const [key, change] of (changes.tombstones as MapChanges | undefined) ?? []) {
    const tombstone = change.action === "add" ? decodeTombstone(t.tombstones.get(key)) : undefined
    if (tombstone)
      events.push({
        type: "message.deleted",
        messageId: key as MessageId,
        author: tombstone.author,
        deletedBy: tombstone.deletedBy,
      })
  }
  const edits = changes.edits as MapChanges | undefined
  for (const [key, change] of edits ?? []) {
    const edit = t.edits.get(key) as EditRecord | undefined
    if (change.action !== "delete" && edit) {
      events.push({
        type: "message.edited",
        messageId: key as MessageId,
        body: edit.body,
        editedAt: edit.editedAt,
      })
    }
  }
  // A value that is no removal (see `isReactionRemoval`) is a reaction: a reaction is added when a key
  // comes to hold one, removed when its key stops holding one (deleted, or a folded one's removal written).
  const holds = (value: unknown) => value !== undefined && !isReactionRemoval(value)
  for (const [key, change] of (changes.reactions as MapChanges | undefined) ?? []) {
    const parsed = parseReactionKey(key)
    if (!parsed) continue
    const was = change.action === "add" ? false : holds(change.oldValue)
    const is = change.action === "delete" ? false : holds(t.reactions.get(key))
    if (is && !was) events.push({ type: "reaction.added", messageId: parsed.message, ...pick(parsed) })
    if (change.action === "add" && !is)
      events.push({ type: "reaction.removed", messageId: parsed.message, ...pick(parsed) })
    else if (was && !is && !changes.sealed)
      events.push({ type: "reaction.removed", messageId: parsed.message, ...pick(parsed) })
  }
  for (const which of ["read", "delivered"] as const) {
    for (const [key, change] of (changes[which] as MapChanges | undefined) ?? []) {
      const upTo = t[which].get(key)
      if (change.action !== "delete" && upTo !== undefined) {
        events.push({
          type: which === "read" ? "messages.read" : "messages.delivered",
          user: key as UserId,
          upTo,
        })
      }
    }
  }
  for (const value of (changes.order as string[] | undefined) ?? []) {
    const record = decodeSequenceRecord(value)
    // A copy: the decoded record is shared (frozen), the event is the listener's to keep.
    if (record) events.push({ type: "messages.sequenced", from: record.from, ids: [...record.ids] })
  }
  for (const key of ((changes.profiles as MapChanges | undefined) ?? new Map()).keys()) {
    const user = key as UserId
    events.push({ type: "profile.updated", user, profile: profileOf(doc, user) })
  }
  return events
}

const pick = (p: { user: UserId; emoji: string }) => ({ user: p.user, emoji: p.emoji })
