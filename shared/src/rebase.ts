import * as Y from "yjs"
import { typesOf } from "./document.js"
import { ErrorCode, ParleyError, toParleyError } from "./errors.js"
import { epochBaseline, sealedHistory } from "./history.js"
import type { MessageId, UserId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import {
  addParticipants,
  assertAllowed,
  changeRole,
  createConversation,
  deleteConversation,
  deleteMessage,
  editMessage,
  markDelivered,
  markRead,
  react,
  removeParticipants,
  renameConversation,
  reopenConversation,
  sendMessage,
  setConversationMetadata,
  unreact,
} from "./operations.js"
import { setFleetingSeconds, unpinMessage } from "./priorities.js"
import { mayWriteProfile, setProfile } from "./profiles.js"
import { getConversation, roleOf } from "./reads.js"
import { canMoveMarker, canReact, canSendMessage, canWriteSequence, Rule } from "./rules.js"
import {
  type ConversationInfo,
  decodeStoredRecord,
  type EditRecord,
  isDeletedRecord,
  type MessageRecord,
  type Metadata,
  MetaKey,
  type ParticipantRecord,
  type ProfileRecord,
  parseReactionKey,
  TopLevel,
} from "./schema.js"

/**
 * Recovery of a replica whose update the relay refused.
 *
 * Why a resync in the SDK rather than a compensating change written by the
 * relay: a Yjs update is all-or-nothing for the relay (it checks the whole
 * update and stores all of it or none), and every later update of the same
 * replica depends on the refused structs by Yjs clock (a client's structs are
 * numbered consecutively, and its next writes point at the items it wrote
 * before as their origins). The relay can therefore never integrate anything
 * that replica writes afterwards. A compensating change cannot help either: it
 * would have to undo structs the relay never integrated, and undoing them means
 * integrating them first — exactly what was refused. So the replica itself is
 * abandoned: the SDK fetches the relay's state into a fresh document (with a
 * new client id), re-applies its user's pending work onto it through the shared
 * operations — which check the same rules and throw FORBIDDEN naming the rule —
 * and then replaces its replica with it. The forbidden change is reported as
 * failed with that rule; everything valid survives and is sent again.
 */

/** One piece of pending work found in the stale replica. */
export type PendingChange =
  | { readonly kind: "conversation.create" }
  | { readonly kind: "conversation.field"; readonly field: string }
  | { readonly kind: "participant.add" | "participant.remove" | "participant.role"; readonly user: string }
  | {
      readonly kind: "message.send" | "message.edit" | "message.delete" | "message.unpin"
      readonly id: MessageId
    }
  | {
      readonly kind: "reaction.add" | "reaction.remove"
      readonly id: MessageId
      readonly user: string
      readonly emoji: string
    }
  | {
      readonly kind: "marker"
      readonly which: "read" | "delivered"
      readonly user: string
      readonly to: number
    }
  | { readonly kind: "profile"; readonly user: string }
  | { readonly kind: "sequence" }
  | { readonly kind: "unknown"; readonly where: string }

/**
 * Work a refusal failed for good (the user removed from the conversation):
 * everything the stale replica wrote up to `through` (a state vector taken
 * when the relay refused it). See {@link rebasePendingWork}.
 */
export interface RefusedWork {
  readonly through: ReadonlyMap<number, number>
  readonly error: ParleyError
}

/** What {@link rebasePendingWork} did. */
export interface RebaseResult {
  /** Pending work now written into the fresh document. */
  readonly reapplied: readonly PendingChange[]
  /** Pending work refused, with the error (FORBIDDEN errors name the rule). */
  readonly failed: readonly { readonly what: PendingChange; readonly error: ParleyError }[]
}

type Internals = { _item: Y.Item | null; _map: Map<string, Y.Item> }
type StoreInternals = { clients: Map<number, (Y.Item | Y.GC)[]> }

const forbidden = (rule: Rule, message: string) => new ParleyError(ErrorCode.FORBIDDEN, message, { rule })

function stateOf(doc: Y.Doc, client: number): number {
  const structs = (doc.store as unknown as StoreInternals).clients.get(client)
  const last = structs?.[structs.length - 1]
  return last ? last.id.clock + last.length : 0
}

function structAt(doc: Y.Doc, client: number, clock: number): Y.Item | Y.GC | undefined {
  const structs = (doc.store as unknown as StoreInternals).clients.get(client)
  if (!structs || clock >= stateOf(doc, client)) return undefined
  return structs[Y.findIndexSS(structs as Y.Item[], clock)]
}

/**
 * The clock up to which `stale` and `fresh` hold the same structs of `client`
 * (at most `upTo`, what `fresh` has). They differ when someone else wrote
 * under the id on the relay first: then the stale replica's structs from the
 * first difference on never reached the relay. A struct deleted or collected
 * on either side has no content left to compare and counts as the same.
 */
function commonHistory(stale: Y.Doc, fresh: Y.Doc, client: number, upTo: number): number {
  const structs = (stale.store as unknown as StoreInternals).clients.get(client) ?? []
  for (const struct of structs) {
    if (struct.id.clock >= upTo) break
    if (!(struct instanceof Y.Item)) continue
    const end = Math.min(struct.id.clock + struct.length, upTo)
    for (let clock = struct.id.clock; clock < end; clock++) {
      const other = structAt(fresh, client, clock)
      if (other && !sameStruct(struct, other, clock)) return clock
    }
  }
  return upTo
}

function sameStruct(a: Y.Item, b: Y.Item | Y.GC, clock: number): boolean {
  if (!(b instanceof Y.Item)) return true
  if (a.parentSub !== b.parentSub) return false
  if (a.deleted || b.deleted) return true
  if (a.content.constructor !== b.content.constructor) return false
  const x = a.content.getContent()[clock - a.id.clock]
  const y = b.content.getContent()[clock - b.id.clock]
  return x === y || JSON.stringify(x) === JSON.stringify(y)
}

/** The values written under `key` of `map`, newest first, each with its item (a value overwritten and collected is undefined). */
function* writesOf(map: Y.Map<unknown>, key: string): Generator<{ item: Y.Item; value: unknown }> {
  for (let item = (map as unknown as Internals)._map.get(key) ?? null; item !== null; item = item.left) {
    const content = item.content.getContent()
    yield { item, value: content[content.length - 1] }
  }
}

/**
 * Whether `stale` holds a creation of `user`'s that the relay never stored
 * (`isPending`) while the relay's state holds another conversation under the
 * id, `fresh`: one of another creation identity (creator, time, kind). Then
 * the id was taken (another user, or another device of the user, created it
 * first) and everything the replica wrote into its creation was meant for a
 * conversation that does not exist: re-applied onto the relay's, messages
 * went to an audience the user never chose (an outside tester's report: a
 * group created offline under an app-chosen id, created meanwhile by another
 * user with the creator in it). The stale replica may hold both creations
 * (the relay's state reached it before its own update was refused), the
 * relay's winning; its own is still found, as a write under `createdAt`.
 *
 * A direct conversation is never taken: its id fixes its two users and kind,
 * so both users' creations are one conversation (see `createConversation`).
 * The same creation sent again (its ack lost, a reload) is not pending, and
 * a resync re-creates a conversation with its first time: same identity.
 */
function creationTaken(
  stale: Y.Doc,
  fresh: ConversationInfo,
  user: UserId,
  isPending: (item: Y.Item) => boolean,
): ParleyError | undefined {
  if (fresh.kind === "direct") return undefined
  const meta = typesOf(stale).meta as Y.Map<unknown>
  const own = (key: string) => {
    for (const write of writesOf(meta, key)) if (isPending(write.item)) return write
    return undefined
  }
  const createdAt = own(MetaKey.createdAt)
  if (createdAt === undefined) return undefined
  // Values another write replaced (and the document collected) are unknown: only one known to differ decides.
  const creator = own(MetaKey.createdBy)?.value ?? user
  const kind = own(MetaKey.kind)?.value
  const same =
    createdAt.value === fresh.createdAt &&
    creator === fresh.createdBy &&
    (kind === undefined || kind === fresh.kind)
  if (same) return undefined
  return new ParleyError(
    ErrorCode.CONFLICT,
    `conversation id "${fresh.id}" was taken: another conversation was created under it first, so the one created on this device was not, and nothing written in it was sent`,
    { rule: Rule.conversationIdTaken },
  )
}

/**
 * Re-applies `user`'s pending work found in `stale` (what it has that `fresh`,
 * the relay's state, lacks: messages, edits, deletions, reactions, markers,
 * conversation and participant changes) onto `fresh`, each through the shared
 * operation that checks the rules. Writes only to `fresh`; the caller then
 * replaces its replica with it and sends what was written.
 */
export function rebasePendingWork(
  stale: Y.Doc,
  fresh: Y.Doc,
  user: UserId,
  /** How far the relay had `stale`'s epoch's clients: by default what `fresh` holds (see `baselineSource`). */
  baseline: ReadonlyMap<number, number> = epochBaseline(fresh),
  /**
   * Messages the relay refused, with its error: not re-applied (failed with
   * that error). Some of its rules are its own (a message dated more than a
   * day ahead of its clock, or before the conversation), so the shared
   * operations would write such a message again, the relay refuse it again,
   * and every later update of the replica, which depends on it, with it.
   */
  refused: ReadonlyMap<MessageId, ParleyError> = new Map(),
  /**
   * Work the relay refused for good when the user was removed: the user's
   * changes written up to its state vector (messages, edits, deletions,
   * reactions, unpins, conversation and participant changes) fail with its
   * error rather than be re-applied, so that they never go out on their own
   * if the user is added back; what was written after it (under a client id
   * of a later load, say) is re-applied. A removal (an undone reaction, say)
   * carries no client id and counts as refused. Markers and profiles, which
   * the SDK writes itself and disclose nothing, are re-applied.
   */
  refusedWork?: RefusedWork,
): RebaseResult {
  const reapplied: PendingChange[] = []
  const failed: { what: PendingChange; error: ParleyError }[] = []
  /** Set when the relay holds another conversation under the id this replica created: nothing goes into it. */
  let taken: ParleyError | undefined
  /** `refusedWork`'s error when it covers the write `item` (`"removal"`: what removed something). */
  const refusedBy = (item: Y.Item | "removal" | undefined): ParleyError | undefined => {
    if (refusedWork === undefined || item === undefined) return undefined
    if (item === "removal") return refusedWork.error
    return item.id.clock < (refusedWork.through.get(item.id.client) ?? 0) ? refusedWork.error : undefined
  }
  /** Writes `what` onto `fresh`, unless refused; `written` is the stale write, when `refusedWork` applies. */
  const attempt = (what: PendingChange, write: () => void, written?: Y.Item | "removal") => {
    if (taken) {
      failed.push({ what, error: taken })
      return
    }
    const refusal = refusedBy(written)
    if (refusal) {
      failed.push({ what, error: refusal })
      return
    }
    try {
      write()
      reapplied.push(what)
    } catch (error) {
      failed.push({ what, error: toParleyError(error) })
    }
  }
  // What the relay has of each client, up to where its history and the stale replica's part: under a
  // client id someone else wrote first, the relay's structs are not this replica's, whatever their clocks.
  const freshState = Y.decodeStateVector(Y.encodeStateVector(fresh))
  for (const client of (stale.store as unknown as StoreInternals).clients.keys()) {
    const shared = freshState.get(client)
    if (shared !== undefined) freshState.set(client, commonHistory(stale, fresh, client, shared))
  }
  // A fresh document of a later epoch holds none of the earlier client ids, but their content up to
  // where the relay had it when the epoch began: only what lies beyond is this replica's pending work.
  for (const [client, clock] of baseline) if (!freshState.has(client)) freshState.set(client, clock)
  const isPending = (item: Y.Item) => item.id.clock + item.length > (freshState.get(item.id.client) ?? 0)
  const roots = new Map<unknown, string>()
  for (const [name, type] of stale.share) roots.set(type, name)
  const rootOf = (item: Y.Item): string | undefined => {
    const parent = item.parent as unknown as Internals | null
    return parent && parent._item === null ? roots.get(parent) : undefined
  }

  // What the stale replica wrote that the relay does not have.
  const mapKeys = new Map<string, Set<string>>()
  const touch = (root: string, key: string) => {
    let keys = mapKeys.get(root)
    if (!keys) {
      keys = new Set()
      mapKeys.set(root, keys)
    }
    keys.add(key)
  }
  const newElements: { root: string; value: unknown; item: Y.Item }[] = []
  for (const [client, structs] of (stale.store as unknown as StoreInternals).clients) {
    const from = freshState.get(client) ?? 0
    if (from >= stateOf(stale, client)) continue
    for (let i = Y.findIndexSS(structs as Y.Item[], from); i < structs.length; i++) {
      const item = structs[i]
      if (!(item instanceof Y.Item) || !isPending(item)) continue
      const root = rootOf(item)
      if (root === undefined) {
        failed.push({
          what: { kind: "unknown", where: "nested type" },
          error: forbidden(Rule.schema, "nested types are not part of a conversation"),
        })
        continue
      }
      if (item.parentSub !== null) touch(root, item.parentSub)
      else if (!item.deleted) {
        const content = item.content.getContent()
        for (let j = Math.max(0, from - item.id.clock); j < content.length; j++)
          newElements.push({ root, value: content[j], item })
      }
    }
  }
  // What the stale replica deleted that the relay still has.
  const deletedRecords = new Map<MessageId, MessageRecord>()
  for (const [client, structs] of (fresh.store as unknown as StoreInternals).clients) {
    for (const item of structs) {
      if (!(item instanceof Y.Item) || item.deleted) continue
      const parent = item.parent as unknown as Internals
      const root = [...fresh.share].find(([, t]) => (t as unknown) === parent)?.[0]
      if (root === undefined) continue
      if (item.parentSub !== null) {
        const common = item.id.clock < (freshState.get(client) ?? 0)
        if (common && structAt(stale, client, item.id.clock)?.deleted) touch(root, item.parentSub)
        continue
      }
      if (root !== TopLevel.messages) continue
      item.content.getContent().forEach((value, j) => {
        const record = decodeStoredRecord(value)
        // Past the common history, the stale struct at this clock is another one altogether.
        if (item.id.clock + j >= (freshState.get(client) ?? 0)) return
        if (record && structAt(stale, client, item.id.clock + j)?.deleted && !isDeletedRecord(record))
          deletedRecords.set(record.id, record)
      })
    }
  }

  const staleValue = (root: string, key: string): { item?: Y.Item; value?: unknown } => {
    const item = (stale.share.get(root) as unknown as Internals | undefined)?._map.get(key)
    if (!item || item.deleted) return item ? { item } : {}
    const content = item.content.getContent()
    return { item, value: content[content.length - 1] }
  }
  const freshValue = (root: string, key: string): unknown => (fresh.getMap(root) as Y.Map<unknown>).get(key)
  /** Keys whose stale value is the replica's own write, or that it removed; `by`: the write, or "removal". */
  const changed = (root: string) => {
    const out: { key: string; value: unknown; removed: boolean; by: Y.Item | "removal" }[] = []
    for (const key of mapKeys.get(root) ?? []) {
      const { item, value } = staleValue(root, key)
      if (value !== undefined && item && isPending(item)) out.push({ key, value, removed: false, by: item })
      else if (value === undefined && freshValue(root, key) !== undefined)
        out.push({ key, value, removed: true, by: "removal" })
    }
    return out
  }
  const role = () => roleOf(fresh, user)

  // 1. The conversation itself, when this replica created it. Creating a direct
  // conversation that the other user created meanwhile changes nothing (shared
  // `createConversation`); a group id that holds another conversation fails, and
  // with it everything written into the creation (see `creationTaken`).
  const staleInfo = getConversation(stale)
  const freshInfo = getConversation(fresh)
  const creation = staleValue(TopLevel.meta, MetaKey.createdAt).item
  let created = false
  taken = freshInfo && creationTaken(stale, freshInfo, user, isPending)
  if (taken) {
    created = true
    failed.push({ what: { kind: "conversation.create" }, error: taken })
  } else if (staleInfo && (!freshInfo || (creation && isPending(creation)))) {
    created = true
    const others = [...typesOf(stale).participants.keys()].filter((u) => u !== user) as UserId[]
    attempt({ kind: "conversation.create" }, () => {
      createConversation(
        fresh,
        user,
        {
          kind: staleInfo.kind,
          id: staleInfo.id,
          participants: others,
          title: staleInfo.title,
          metadata: staleInfo.metadata,
        },
        { now: staleInfo.createdAt },
      )
      for (const [other, record] of typesOf(stale).participants) {
        if (other !== user && record.role !== "member" && staleInfo.kind === "group")
          changeRole(fresh, user, other as UserId, record.role)
      }
    })
  }

  // 2. Conversation fields and participants (leaving comes last).
  // A reopen this replica made (shared `reopenConversation`): its removal of the deletion, and its adding
  // back of the two users, are part of it.
  const reopenedHere = [...writesOf(typesOf(stale).meta as Y.Map<unknown>, MetaKey.reopenedAt)].some((w) =>
    isPending(w.item),
  )
  if (!created) {
    let deleted = false
    // A deletion this replica made and removed again by reopening it offline: the relay never stored
    // it, so the reopen cannot go with it (rule `reopen-direct`). The deletion stands (what was written
    // before it is purged, as its user asked); the reopen fails, to be made again once it is stored.
    const deletedHere = [...writesOf(typesOf(stale).meta as Y.Map<unknown>, MetaKey.deletedAt)].some((w) =>
      isPending(w.item),
    )
    if (reopenedHere && deletedHere && getConversation(fresh)?.deletedAt === undefined) {
      attempt({ kind: "conversation.field", field: MetaKey.deletedAt }, () => deleteConversation(fresh, user))
      deleted = true
    }
    let reopened = false
    for (const { key, value, removed, by } of changed(TopLevel.meta)) {
      const what: PendingChange = { kind: "conversation.field", field: key }
      if (reopenedHere && (key === MetaKey.deletedAt || key === MetaKey.deletedBy) && removed) continue
      if (key === MetaKey.reopenedAt || key === MetaKey.reopenedBy) {
        if (reopened) continue
        reopened = true
        if (deleted)
          failed.push({
            what,
            error: forbidden(
              Rule.reopenDirect,
              "the conversation's deletion had not reached the relay: reopen it once it has",
            ),
          })
        // Reopened meanwhile by the other user (or another device): open already.
        else if (getConversation(fresh)?.deletedAt !== undefined)
          attempt(what, () => reopenConversation(fresh, user), by)
        continue
      }
      if (key === MetaKey.fleetingSeconds)
        attempt(what, () => setFleetingSeconds(fresh, user, removed ? undefined : (value as number)), by)
      else if (removed) failed.push({ what, error: forbidden(Rule.immutable, `"${key}" cannot be removed`) })
      else if (key === MetaKey.title)
        attempt(what, () => renameConversation(fresh, user, value as string), by)
      else if (key === MetaKey.metadata)
        attempt(what, () => setConversationMetadata(fresh, user, value as Metadata), by)
      else if (key === MetaKey.deletedAt || key === MetaKey.deletedBy) {
        if (!deleted) attempt(what, () => deleteConversation(fresh, user), by)
        deleted = true
      } else failed.push({ what, error: forbidden(Rule.immutable, `"${key}" is fixed at creation`) })
    }
  }
  let leaving = false
  if (!created) {
    for (const { key, value, removed, by } of changed(TopLevel.participants)) {
      const other = key as UserId
      if (removed) {
        if (other === user) leaving = true
        else
          attempt(
            { kind: "participant.remove", user: other },
            () => removeParticipants(fresh, user, [other]),
            by,
          )
        continue
      }
      const record = value as ParticipantRecord
      const current = typesOf(fresh).participants.get(other)
      if (!current && reopenedHere && staleInfo?.kind === "direct") continue
      if (!current)
        attempt(
          { kind: "participant.add", user: other },
          () => addParticipants(fresh, user, [other], record.role),
          by,
        )
      else if (current.role !== record.role)
        attempt(
          { kind: "participant.role", user: other },
          () => changeRole(fresh, user, other, record.role),
          by,
        )
    }
  }

  // 3. Messages, then what refers to them.
  const placeholders = new Map<MessageId, Y.Item>()
  for (const { root, value, item } of newElements) {
    if (root === TopLevel.order) {
      const decision = canWriteSequence(false)
      if (!decision.allowed)
        failed.push({ what: { kind: "sequence" }, error: forbidden(decision.rule, decision.reason) })
      continue
    }
    if (root !== TopLevel.messages) {
      failed.push({
        what: { kind: "unknown", where: root },
        error: forbidden(Rule.schema, `unknown top-level type "${root}"`),
      })
      continue
    }
    const record = decodeStoredRecord(value)
    if (record === undefined || typeof record.id !== "string") {
      failed.push({
        what: { kind: "unknown", where: root },
        error: forbidden(Rule.schema, "not a message record"),
      })
    } else if (isDeletedRecord(record)) placeholders.set(record.id, item)
    else if (!messageIndex(fresh).records.has(record.id) && !messageIndex(fresh).deleted.has(record.id)) {
      // (A creation taken explains every refusal of what was written into it: failed as taken below.)
      const refusal = taken ? undefined : refused.get(record.id)
      if (refusal !== undefined) {
        failed.push({ what: { kind: "message.send", id: record.id }, error: refusal })
        continue
      }
      attempt(
        { kind: "message.send", id: record.id },
        () => {
          assertAllowed(canSendMessage(user, role(), record.author))
          sendMessage(
            fresh,
            user,
            {
              id: record.id,
              body: record.body,
              ...(record.type !== undefined ? { type: record.type } : {}),
              ...(record.replyTo !== undefined ? { replyTo: record.replyTo } : {}),
              ...(record.attachments !== undefined ? { attachments: record.attachments } : {}),
              ...(record.metadata !== undefined ? { metadata: record.metadata } : {}),
              ...(record.priority !== undefined ? { priority: record.priority } : {}),
            },
            { now: record.createdAt },
          )
        },
        item,
      )
    }
  }
  const deleting = new Set<MessageId>([...placeholders.keys()])
  for (const { key, value, removed, by } of changed(TopLevel.edits)) {
    const id = key as MessageId
    if (deleting.has(id)) continue
    if (removed) {
      failed.push({
        what: { kind: "message.edit", id },
        error: forbidden(Rule.immutable, "an edit goes with its message"),
      })
      continue
    }
    const edit = value as EditRecord
    attempt(
      { kind: "message.edit", id },
      () => editMessage(fresh, user, id, edit.body, { now: edit.editedAt }),
      by,
    )
  }
  for (const { key, value, removed, by } of changed(TopLevel.reactions)) {
    const parsed = parseReactionKey(key)
    if (!parsed) {
      failed.push({
        what: { kind: "unknown", where: "reactions" },
        error: forbidden(Rule.schema, "reaction key invalid"),
      })
      continue
    }
    if (removed && deleting.has(parsed.message)) continue
    const what: PendingChange = {
      kind: removed ? "reaction.remove" : "reaction.add",
      id: parsed.message,
      user: parsed.user,
      emoji: parsed.emoji,
    }
    attempt(
      what,
      () => {
        assertAllowed(canReact(user, role(), parsed.user))
        if (removed) unreact(fresh, user, parsed.message, parsed.emoji)
        else react(fresh, user, parsed.message, parsed.emoji, { now: value as number })
      },
      by,
    )
  }
  for (const { key, removed, by } of changed(TopLevel.unpinned)) {
    if (removed || deleting.has(key as MessageId)) continue
    attempt(
      { kind: "message.unpin", id: key as MessageId },
      () => unpinMessage(fresh, user, key as MessageId),
      by,
    )
  }
  // Deletions of sealed messages (the fresh document must hold their segments: the SDK adds them).
  for (const { key, removed, by } of changed(TopLevel.tombstones)) {
    if (removed) continue
    attempt(
      { kind: "message.delete", id: key as MessageId },
      () => deleteMessage(fresh, user, key as MessageId),
      by,
    )
  }
  for (const [id, item] of placeholders) {
    // Sent and deleted while offline: the relay never saw it, nothing to redo.
    if (
      !messageIndex(fresh).records.has(id) &&
      !messageIndex(fresh).deleted.has(id) &&
      !sealedHistory(fresh).entry(id)
    )
      continue
    attempt({ kind: "message.delete", id }, () => deleteMessage(fresh, user, id), item)
  }
  for (const [id] of deletedRecords) {
    if (!placeholders.has(id))
      failed.push({
        what: { kind: "message.delete", id },
        error: forbidden(Rule.immutable, "a deleted message leaves a placeholder"),
      })
  }

  // 4. Markers: own, forward.
  for (const which of ["read", "delivered"] as const) {
    for (const { key, value, removed } of changed(which)) {
      const to = removed ? 0 : (value as number)
      const what: PendingChange = { kind: "marker", which, user: key, to }
      attempt(what, () => {
        if (removed) throw forbidden(Rule.markerForwardOnly, "markers are never removed")
        const from = typesOf(fresh)[which].get(key)
        if (key === user && from === to) return
        assertAllowed(canMoveMarker(user, role(), key as UserId, from, to))
        if (which === "read") markRead(fresh, user, to)
        else markDelivered(fresh, user, to)
      })
    }
  }

  // 5. The user's own profile entry (the SDK writes it again anyway when it next differs).
  for (const { key, value, removed } of changed(TopLevel.profiles)) {
    attempt({ kind: "profile", user: key }, () => {
      assertAllowed(mayWriteProfile(fresh, user, key as UserId))
      if (removed) typesOf(fresh).profiles.delete(key)
      else setProfile(fresh, user, value as ProfileRecord)
    })
  }

  if (leaving)
    attempt({ kind: "participant.remove", user }, () => removeParticipants(fresh, user, [user]), "removal")
  return { reapplied, failed }
}
