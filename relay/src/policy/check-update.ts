import {
  type ConversationId,
  type ConversationKind,
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
  canSetProfile,
  canUnpinMessage,
  canUpdateConversation,
  canWrite,
  canWriteConversation,
  canWriteSequence,
  checkEditRecord,
  checkFleetingSeconds,
  checkMarker,
  checkMetadata,
  checkParticipantRecord,
  checkProfileRecord,
  checkSequenceRecord,
  checkStoredRecord,
  checkUnpinRecord,
  type Decision,
  type DeletedMessageRecord,
  decodePin,
  decodeStoredRecord,
  decodeTombstone,
  directUsersOf,
  holdsNameControls,
  isDeletedRecord,
  isMessageId,
  isPlainJson,
  isReactionEmoji,
  isReactionRemoval,
  isUserId,
  keepsAnOwner,
  Limits,
  type MessageId,
  type MessageRecord,
  MetaKey,
  messageIndex,
  type ParticipantRecord,
  parseReactionKey,
  type Role,
  Rule,
  SCHEMA_VERSION,
  type SealedEntry,
  sealedHistory,
  storedRecordId,
  TOP_LEVEL_ARRAYS,
  TOP_LEVEL_MAPS,
  TopLevel,
  typesOf,
  type UnpinRecord,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { sealedIdStatus } from "../history/sealed-ids.js"
import { describePrincipal, type Principal } from "../principal.js"
import { membership, membershipOf, type ReplicaView, replicaHad } from "../replica-view.js"
import { type ClientBinding, type ClientBindings, RELAY_KEY } from "./client-bindings.js"
import { sameJson } from "./plain-json.js"
import {
  currentMapItem,
  mapItemValue,
  type NewItem,
  type ReadUpdate,
  Refusal,
  readUpdate,
} from "./update-structs.js"

/** What {@link checkUpdate} judges. */
export interface CheckUpdateInput {
  /** The relay's current state of the document. Read, never modified. */
  readonly doc: Y.Doc
  /** The incoming update (Yjs v1 encoding). */
  readonly update: Uint8Array
  /** Who sent it. */
  readonly principal: Principal
  /** Owners of the document's client ids. */
  readonly bindings: ClientBindings
  /** The document's conversation id; when given, a creation must use it. */
  readonly conversation?: ConversationId
  /** The relay's clock (ms since the epoch), for {@link MAX_FUTURE_SKEW_MS}; `Date.now()` when not given. */
  readonly now?: number
  /**
   * What the sender's replica had seen, from the frame the update came in
   * (see {@link ReplicaView}); absent for the relay's and its API's own writes,
   * made on the document as it is.
   */
  readonly seen?: ReplicaView
}

/**
 * How far ahead of the relay's clock a user's message or conversation may be
 * dated. Conversation lists sort by those dates: one dated years ahead would
 * stay at the top of every member's list for good. A day leaves room for
 * clocks that are set wrong without refusing their users' messages.
 */
export const MAX_FUTURE_SKEW_MS = 24 * 60 * 60 * 1000

/**
 * How much later than the date it restates a second creation of a direct
 * conversation may date it (two replicas creating it at once differ by their
 * clocks' skew).
 */
export const RESTATED_CREATION_LATER_MS = 60 * 60 * 1000

/**
 * How much earlier than the date it restates a second creation of a direct
 * conversation may date it: a user who created it offline (on a flight, say)
 * days before the other user created it online keeps the date their device
 * wrote, and their messages dated since are not "before the conversation".
 * Bounded, so that a crafted restatement cannot date a conversation to 1970.
 */
export const RESTATED_CREATION_EARLIER_MS = 30 * 24 * 60 * 60 * 1000

/** The decision, and for an accepted update the client ids it binds to its sender. */
export type CheckResult = Decision & { readonly newBindings?: readonly ClientBinding[] }

/**
 * Decides whether `update` may be applied to `doc` by `principal`, from what it
 * would change, without applying it: every new struct and every deletion is
 * mapped to the conversation's layout (shared `schema.ts`) and judged with the
 * shared rules (`rules.ts`, `validate.ts`). Deletions carried in the update's
 * delete set count as the sender's acts. Never throws: anything it cannot
 * make sense of is refused under {@link Rule.schema}.
 *
 * Cost: decoding the update, plus a binary search in one client's struct list
 * per reference and O(1) map lookups (shared `messageIndex`) per change, and
 * for each new message the sealed ids' filters (`sealedIdStatus`: a dozen
 * word operations per 32 sealed segments, answered once per id). It never
 * copies, encodes or scans the document, and reads no sealed history (the
 * update path holds what the filters name first).
 */
export function checkUpdate(input: CheckUpdateInput): CheckResult {
  try {
    return new UpdateCheck(input).run()
  } catch (error) {
    if (error instanceof Refusal) return { allowed: false, rule: error.rule as Rule, reason: error.reason }
    return { allowed: false, rule: Rule.schema, reason: "the update is malformed" }
  }
}

// A declared function (not an arrow in a const) so that TypeScript narrows after a call.
function refuse(rule: Rule, reason: string): never {
  throw new Refusal(rule, reason)
}
const assert = (decision: Decision): void => {
  if (!decision.allowed) throw new Refusal(decision.rule, decision.reason)
}
/** `problem` of the stored message record `value`, naming its id when it has a valid one. */
function namingMessage(value: unknown, problem: string): string {
  const id = storedRecordId(value)
  return id !== undefined && isMessageId(id) ? `message ${id}: ${problem}` : problem
}

const schema = (problem: string | undefined): void => {
  if (problem !== undefined) refuse(Rule.schema, problem)
}

const rootKind = (name: string): "map" | "array" | undefined =>
  TOP_LEVEL_MAPS.has(name) ? "map" : TOP_LEVEL_ARRAYS.has(name) ? "array" : undefined

/** Absent map value (distinct from any JSON value). */
const ABSENT = Symbol("absent")
type Value = unknown

/** What one map key goes through: its value before, and every value it may have after. */
interface KeyChange {
  readonly root: string
  readonly key: string
  readonly before: Value
  readonly after: readonly Value[]
  /** Every outcome leaves the key holding a value (none leaves it empty, whatever it held before). */
  readonly held: boolean
}

/** The `meta` fields a reopen writes or removes (see `checkReopen`). */
const REOPEN_FIELDS: ReadonlySet<string> = new Set([
  MetaKey.deletedAt,
  MetaKey.deletedBy,
  MetaKey.reopenedAt,
  MetaKey.reopenedBy,
])

const isTime = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v) && v >= 0

class UpdateCheck {
  private readonly doc: Y.Doc
  private readonly principal: Principal
  private readonly isRelay: boolean
  private readonly actor: UserId | undefined
  private read!: ReadUpdate
  /** The actor's role, as of before the update (or as created by it). */
  private role: Role | undefined
  private kind: "direct" | "group" = "group"
  /** The `createdAt` of the conversation the update creates, when it creates one. */
  private creationTime: number | undefined
  /** The update creates a direct conversation that another replica of its users created first. */
  private restatesCreation = false
  /** The date the update's restated creation of a direct conversation gives it, once accepted. */
  private restatedAt: number | undefined
  /** The earliest creation date a direct conversation's participant records hold (see {@link earliestCreation}). */
  private statedCreation: number | undefined | null = null
  private readonly newRecords = new Map<MessageId, MessageRecord>()
  private readonly newPlaceholders = new Map<MessageId, DeletedMessageRecord>()
  /** Live records the update deletes, by id. */
  private readonly deletedRecords = new Map<MessageId, MessageRecord>()
  /** Records the update writes and deletes at once ("deleted on arrival"), by id. */
  private readonly transientRecords = new Map<MessageId, MessageRecord>()
  /** The map keys the update touches (see {@link mapChanges}). */
  private changes: readonly KeyChange[] = []
  /** {@link changes} by root and key, made on the first lookup (most updates make none). */
  private keyChanges: Map<string, KeyChange> | undefined

  constructor(private readonly input: CheckUpdateInput) {
    this.doc = input.doc
    this.principal = input.principal
    this.isRelay = input.principal.kind === "relay"
    this.actor = input.principal.kind === "user" ? input.principal.user : undefined
  }

  /** Whether the conversation was deleted before this update (a direct one may be left then), and not reopened by it. */
  private get deleted(): boolean {
    return !this.reopened && typeof typesOf(this.doc).meta.get(MetaKey.deletedAt) === "number"
  }
  /** The update reopens the deleted direct conversation (see {@link checkReopen}). */
  private reopened = false

  run(): CheckResult {
    const { doc, update, bindings, principal } = this.input
    // Enough for a full delete set re-sent on reconnect, not for sweeping a whole conversation for free.
    this.read = readUpdate(doc, update, rootKind, Rule.schema, 10_000 + 64 * update.length)

    const key = describePrincipal(principal)
    const newBindings: ClientBinding[] = []
    for (const client of this.read.writers) {
      const owner = bindings.get(client) ?? (client === doc.clientID ? RELAY_KEY : undefined)
      if (owner === undefined) newBindings.push([client, key])
      else if (owner !== key) refuse(Rule.clientIdOwner, `client id ${client} belongs to someone else`)
    }

    const changes = this.mapChanges()
    this.changes = changes
    // Any new item is a write, whatever it holds: items of deleted content (an array item can claim
    // four billion elements of it) are stored, bound to their writer and broadcast like any other, and
    // were accepted from outsiders waiting on a conversation not created yet and in deleted ones.
    const changesSomething = this.read.items.length > 0 || this.read.deleted.length > 0 || changes.length > 0
    if (principal.kind === "service" && changesSomething) refuse(Rule.readOnly, "service access is read-only")

    this.role = this.actor ? typesOf(doc).participants.get(this.actor)?.role : undefined
    this.kind = typesOf(doc).meta.get(MetaKey.kind) === "direct" ? "direct" : "group"
    // A document with participants is a conversation even without its creation fields (which no
    // rule lets anyone remove): it is never created again over what it holds.
    const created =
      typeof typesOf(doc).meta.get(MetaKey.createdAt) === "number" || typesOf(doc).participants.size > 0
    const byRoot = (root: string) => changes.filter((c) => c.root === root)
    // Both users (or two devices) may create their direct conversation at once, online or offline:
    // the later creation can only restate who created it and when, since every other field of a
    // direct conversation is fixed by its id. It is accepted, so that neither replica must resync.
    // A creation is written on nothing: every creation field and participant record it holds has no
    // origin. One that chains on an existing value is a rewrite, judged like any other; so is one from a
    // user who wrote here before under another client id (a replica that created the conversation never
    // saw it: an outside probe restated it from a fresh client id every hour, each winning the merge).
    // It restates the date only near the one it restates (see checkMeta); a leave concurrent with a
    // restated record it replaced is refused as a concurrent change (checkStaleRemovals), not lost.
    const creationItem = (n: (typeof this.read.items)[number]) =>
      n.location.root === TopLevel.participants ||
      (n.location.root === TopLevel.meta &&
        (n.location.key === MetaKey.createdAt || n.location.key === MetaKey.createdBy))
    this.restatesCreation =
      created &&
      !this.isRelay &&
      this.kind === "direct" &&
      this.role !== undefined &&
      this.read.items.some(
        (n) =>
          n.location.root === TopLevel.meta && n.location.key === MetaKey.createdAt && n.item.origin === null,
      ) &&
      this.read.items.every(
        (n) => !creationItem(n) || (n.item.origin === null && n.item.rightOrigin === null),
      ) &&
      !bindings.ownsOther(key, this.read.writers)

    // Once deleted, a conversation is closed to everyone but the relay (which purges it); a participant
    // may still leave it (nothing written: their entry goes), which takes it out of their inbox.
    const leavesOnly =
      this.read.items.length === 0 &&
      this.read.deleted.every(
        (d) => d.location.root === TopLevel.participants && d.location.key === this.actor,
      )
    // A deleted direct conversation reopened by one of its two users: the reopen's own fields are
    // judged apart (checkReopen), and whatever else the update holds as a write to the open conversation
    // (a device that reopened it offline and wrote in it sends both at once).
    const reopening =
      created &&
      !this.isRelay &&
      this.deleted &&
      changes.some(
        (c) => c.root === TopLevel.meta && (c.key === MetaKey.reopenedAt || c.key === MetaKey.reopenedBy),
      )
    let meta = byRoot(TopLevel.meta)
    let participants = byRoot(TopLevel.participants)
    if (reopening) ({ meta, participants } = this.checkReopen(meta, participants))
    else if (created && changesSomething && !this.isRelay && !leavesOnly)
      assert(canWriteConversation(typeof typesOf(doc).meta.get(MetaKey.deletedAt) === "number"))
    if (!created && !this.isRelay) this.checkCreation(meta, participants)
    else this.checkMeta(meta)
    if (created || this.isRelay) this.checkParticipants(participants)
    this.checkStaleRemovals()
    if (changesSomething && !this.isRelay) assert(canWrite(this.role))

    this.collectMessages()
    this.checkMessages()
    this.checkOrder()
    this.checkTombstones(byRoot(TopLevel.tombstones))
    this.checkEdits(byRoot(TopLevel.edits))
    this.checkReactions(byRoot(TopLevel.reactions))
    this.checkUnpins(byRoot(TopLevel.unpinned))
    this.checkPins(byRoot(TopLevel.pins))
    this.checkMarkers(byRoot(TopLevel.read))
    this.checkMarkers(byRoot(TopLevel.delivered))
    this.checkProfiles(byRoot(TopLevel.profiles))
    return { allowed: true, newBindings }
  }

  /**
   * Values of a new array item, each with whether the same update deletes it.
   * Content deleted on arrival is judged like any other: it is stored and
   * broadcast as sent, and replicas that keep deleted content see it.
   */
  private elements(n: NewItem): { value: unknown; deleted: boolean }[] {
    if (!(n.item.content instanceof Y.ContentAny)) return []
    const content = n.item.content.getContent()
    const values: { value: unknown; deleted: boolean }[] = []
    for (let i = n.offset; i < n.item.length; i++)
      values.push({ value: content[i], deleted: this.read.deletes(n.item.id.client, n.item.id.clock + i) })
    return values
  }

  /**
   * The map keys the update touches, with the value before and every value
   * the key may hold after. A new item whose origin is the key's current item
   * (a chain of them, as one writer produces) is what the key holds after; an
   * item placed concurrently may or may not end up last, so its value counts
   * as possible too. A deleted current value with nothing written after it is
   * a removal; overwritten, it is part of the new value.
   */
  private mapChanges(): KeyChange[] {
    // One entry per map key; the closures are made once, not once per key (an update may touch thousands).
    const byKey = new Map<string, { root: string; key: string; items: NewItem[] }>()
    const keyOf = (root: string, key: string) => `${root}\u0000${key}`
    for (const n of this.read.items) {
      if (n.location.key === null) continue
      if (n.item.content instanceof Y.ContentAny && n.item.length !== 1)
        refuse(Rule.schema, "a map entry holds one value")
      // Yjs writes a map entry after the key's value (a right origin never set): one with a right
      // origin lands before that item and is deleted at once, so what the key holds after the
      // update would not be what this reading of it assumes (with the same update deleting the
      // current item, a removal dressed up as "the same value again").
      if (n.item.rightOrigin !== null)
        refuse(Rule.schema, "a map entry is written after the key's value, never before it")
      const k = keyOf(n.location.root, n.location.key)
      const entry = byKey.get(k)
      if (entry) entry.items.push(n)
      else byKey.set(k, { root: n.location.root, key: n.location.key, items: [n] })
    }
    for (const d of this.read.deleted) {
      if (d.location.key === null) continue
      const k = keyOf(d.location.root, d.location.key)
      if (!byKey.has(k)) byKey.set(k, { root: d.location.root, key: d.location.key, items: [] })
    }
    const stateOf = (item: Y.Item): Value =>
      !(item.content instanceof Y.ContentAny) || this.read.deletes(item.id.client, item.id.clock)
        ? ABSENT
        : mapItemValue(item)
    // Values written and then overwritten or deleted within the update are judged as writes too.
    const transient = (item: Y.Item, after: Value[]) => {
      if (item.content instanceof Y.ContentAny && stateOf(item) === ABSENT) after.push(mapItemValue(item))
    }
    const changes: KeyChange[] = []
    for (const { root, key, items } of byKey.values()) {
      const current = currentMapItem(this.doc, root, key)
      const before: Value = current && !current.deleted ? mapItemValue(current) : ABSENT
      let expected = current
        ? { client: current.id.client, clock: current.id.clock + current.length - 1 }
        : null
      let chainEnd: Y.Item | undefined
      const after: Value[] = []
      for (const { item } of items) {
        const origin = item.origin
        const chained =
          expected === null
            ? origin === null
            : origin !== null && origin.client === expected.client && origin.clock === expected.clock
        if (chained) {
          if (chainEnd?.content instanceof Y.ContentAny) after.push(mapItemValue(chainEnd))
          chainEnd = item
          expected = { client: item.id.client, clock: item.id.clock + item.length - 1 }
        } else {
          after.push(stateOf(item))
          transient(item, after)
        }
      }
      if (chainEnd) {
        after.push(stateOf(chainEnd))
        transient(chainEnd, after)
      } else if (
        current &&
        !current.deleted &&
        this.read.deletes(current.id.client, current.id.clock + current.length - 1) &&
        !outranks(items, current, stateOf)
      )
        after.push(ABSENT)
      for (const v of after)
        if (v !== ABSENT && !isPlainJson(v)) refuse(Rule.schema, "values are plain JSON only")
      const distinct = after.filter((v) => !sameValue(v, before))
      // Any entry written under a key is a write of it, whatever it holds: it takes its place among the
      // key's items, and Yjs orders a later write from a replica that has not seen it before it (when
      // its client id is lower) and deletes that write on arrival, acknowledged and lost. Entries that
      // held nothing new (empty ones where the key held nothing, the value the key already holds) were
      // no change: outside probes kept members' markers, reactions, edits, removals, demotions and a
      // conversation's deletion from landing, and squatted conversations not created yet. Such a write
      // is judged by the key's rules as its sender writing what the key holds after (nothing, or the
      // same value): only who may write the key places one.
      const judged = distinct.length > 0 || this.isRelay || items.length === 0 ? distinct : after
      if (judged.length > 0)
        changes.push({
          root,
          key,
          before,
          after: judged,
          held: after.length > 0 && !after.includes(ABSENT),
        })
    }
    return changes
  }

  /** An empty document becomes a conversation: complete, valid, its creator an owner. */
  private checkCreation(meta: readonly KeyChange[], participants: readonly KeyChange[]): void {
    if (meta.length === 0) return // Not a creation: the participant rule refuses any other change.
    const actor = this.actor!
    // A creation is written on nothing: where a field or participant already holds an item (one
    // that holds nothing, left before the creation), Yjs would order the creation's entries before
    // it and delete them on arrival, and the creation acknowledged would be lost.
    for (const change of [...meta, ...participants])
      if (currentMapItem(this.doc, change.root, change.key))
        refuse(Rule.immutable, `conversation field "${change.root}.${change.key}" holds an entry already`)
    const fields = new Map<string, unknown>()
    for (const change of meta) {
      // The fleeting lifetime set and cleared before the creation was sent: no field.
      if (change.key === MetaKey.fleetingSeconds && emptyWrite(change)) continue
      if (change.after.length !== 1 || change.after[0] === ABSENT)
        refuse(Rule.schema, "a conversation is created in one consistent update")
      fields.set(change.key, change.after[0])
    }
    for (const key of fields.keys())
      if (
        !(Object.values(MetaKey) as string[]).includes(key) ||
        key === MetaKey.deletedAt ||
        key === MetaKey.deletedBy ||
        key === MetaKey.reopenedAt ||
        key === MetaKey.reopenedBy ||
        key === MetaKey.epoch ||
        key === MetaKey.epochFrom ||
        key === MetaKey.epochs
      )
        refuse(Rule.schema, `a new conversation has no "${key}" field`)
    for (const key of [
      MetaKey.schemaVersion,
      MetaKey.id,
      MetaKey.kind,
      MetaKey.title,
      MetaKey.createdBy,
      MetaKey.createdAt,
      MetaKey.metadata,
    ])
      if (!fields.has(key)) refuse(Rule.schema, `a new conversation needs "${key}"`)
    const id = fields.get(MetaKey.id)
    const kind = fields.get(MetaKey.kind)
    if (fields.get(MetaKey.schemaVersion) !== SCHEMA_VERSION)
      refuse(Rule.schema, "unsupported schema version")
    if (typeof id !== "string" || (this.input.conversation !== undefined && id !== this.input.conversation))
      refuse(Rule.schema, "the conversation id must be the document's name")
    if (kind !== "direct" && kind !== "group") refuse(Rule.schema, "conversation kind invalid")
    const title = fields.get(MetaKey.title)
    if (typeof title !== "string" || title.length > Limits.titleLength || holdsNameControls(title))
      refuse(Rule.schema, "title invalid")
    schema(checkMetadata(fields.get(MetaKey.metadata)))
    if (!isTime(fields.get(MetaKey.createdAt))) refuse(Rule.schema, "createdAt invalid")
    this.creationTime = fields.get(MetaKey.createdAt) as number
    this.refuseFuture(fields.get(MetaKey.createdAt) as number, "the conversation")
    if (fields.has(MetaKey.fleetingSeconds)) schema(checkFleetingSeconds(fields.get(MetaKey.fleetingSeconds)))

    const roles = new Map<UserId, Role>()
    const addedBy = new Set<unknown>()
    for (const change of participants) {
      // Added and removed again before the creation was sent: by its creator, an owner.
      if (emptyWrite(change)) {
        if (!isUserId(change.key)) refuse(Rule.schema, "participant id invalid")
        continue
      }
      const record = change.after.length === 1 ? change.after[0] : ABSENT
      if (record === ABSENT) refuse(Rule.schema, "a conversation is created in one consistent update")
      if (!isUserId(change.key)) refuse(Rule.schema, "participant id invalid")
      schema(checkParticipantRecord(record))
      const p = record as ParticipantRecord
      addedBy.add(p.addedBy)
      roles.set(change.key as UserId, p.role)
    }
    if (roles.size > Limits.participants) refuse(Rule.schema, "too many participants")
    // The id decides who may create the conversation and as what (a `dm~` id is a claim about two users).
    assert(
      canCreateWithId(actor, {
        id: id as string,
        kind: kind as ConversationKind,
        roles,
        distinctKey: fields.get(MetaKey.distinctKey),
      }),
    )
    if (fields.get(MetaKey.createdBy) !== actor)
      refuse(Rule.creatorIsOwner, "a conversation is created by its creator")
    if ([...addedBy].some((by) => by !== actor)) refuse(Rule.selfOnly, "participants are added as oneself")
    if (
      kind === "group" &&
      fields.has(MetaKey.distinctKey) &&
      typeof fields.get(MetaKey.distinctKey) !== "string"
    )
      refuse(Rule.schema, "distinctKey invalid")
    this.role = roles.get(actor)
    this.kind = kind as "direct" | "group"
  }

  /**
   * A deleted direct conversation reopened (rule `reopen-direct`, shared
   * `reopenConversation`): by one of its two users, as themself, removing
   * both deletion fields and writing both reopen fields, adding back as
   * owners (added by the reopener) only those of the two who left it. Returns
   * the update's other changes of `meta` and `participants`, judged by the
   * usual rules as changes of the reopened conversation: the reopen grants
   * nothing else.
   */
  private checkReopen(
    meta: readonly KeyChange[],
    participants: readonly KeyChange[],
  ): { meta: KeyChange[]; participants: KeyChange[] } {
    const actor = this.actor!
    const id = typesOf(this.doc).meta.get(MetaKey.id)
    assert(canReopenConversation(actor, typeof id === "string" ? id : "", this.kind, true))
    const users = directUsersOf(id as string)!
    const reopen = (problem: string): never => refuse(Rule.reopenDirect, problem)
    const one = (change: KeyChange | undefined): unknown =>
      change && change.after.length === 1
        ? change.after[0]
        : reopen("a reopen writes each of its fields once")
    const field = (key: string) => meta.find((c) => c.key === key)
    for (const key of [MetaKey.deletedAt, MetaKey.deletedBy])
      if (one(field(key)) !== ABSENT) reopen("a reopen removes the deletion")
    const at = one(field(MetaKey.reopenedAt))
    if (!isTime(at)) refuse(Rule.schema, "reopenedAt invalid")
    this.refuseFuture(at, "the reopen")
    if (one(field(MetaKey.reopenedBy)) !== actor) reopen("a conversation is reopened as oneself")
    const rest = participants.filter((change) => {
      if (!(users as readonly string[]).includes(change.key) || change.before !== ABSENT) return true
      const record = one(change)
      schema(checkParticipantRecord(record))
      const p = record as ParticipantRecord
      if (p.role !== "owner" || p.addedBy !== actor)
        reopen("both users of a direct conversation are its owners, added back by the reopener")
      const removed = currentMapItem(this.doc, TopLevel.participants, change.key)
      const was = removed ? membershipOf(removed) : undefined
      if (was !== undefined && was === membership(p))
        refuse(Rule.immutable, "a participant added again is dated apart from the removed membership")
      this.refuseFuture(p.addedAt, "a participant's addedAt")
      this.refuseBeforeCreation(p.addedAt, "a participant's addedAt")
      return false
    })
    // Both users are in it again: the one reopening it, and the other, who may have left it too.
    for (const user of users)
      if (
        !typesOf(this.doc).participants.has(user) &&
        !participants.some((c) => c.key === user && !rest.includes(c))
      )
        reopen("a reopened direct conversation has both its users again")
    this.reopened = true
    this.role = "owner"
    return { meta: meta.filter((c) => !REOPEN_FIELDS.has(c.key)), participants: rest }
  }

  /** Title and metadata by managers; deletion once, by a manager, as themselves; the rest is fixed. */
  private checkMeta(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      for (const after of change.after) {
        // A second creation of a direct conversation writes every field again, most with the value held.
        if (this.restatesCreation && change.before !== ABSENT && sameValue(after, change.before)) continue
        // The fleeting lifetime is a setting: cleared back to the default by a manager.
        if (change.key === MetaKey.fleetingSeconds) {
          if (after !== ABSENT) schema(checkFleetingSeconds(after))
          if (!this.isRelay) assert(canUpdateConversation(this.role))
          continue
        }
        if (after === ABSENT) refuse(Rule.immutable, `conversation field "${change.key}" cannot be removed`)
        switch (change.key) {
          case MetaKey.title:
            if (typeof after !== "string" || after.length > Limits.titleLength || holdsNameControls(after))
              refuse(Rule.schema, "title invalid")
            break
          case MetaKey.metadata:
            schema(checkMetadata(after))
            break
          case MetaKey.reopenedAt:
          case MetaKey.reopenedBy:
            if (this.isRelay) break
            // Only with the removal of a deletion stored before this update (see checkReopen).
            refuse(Rule.reopenDirect, "only a deleted conversation is reopened")
            break
          case MetaKey.deletedAt:
          case MetaKey.deletedBy:
            if (change.before !== ABSENT) refuse(Rule.immutable, "a deleted conversation stays deleted")
            if (change.key === MetaKey.deletedAt && !isTime(after)) refuse(Rule.schema, "deletedAt invalid")
            if (change.key === MetaKey.deletedBy && !this.isRelay && after !== this.actor)
              refuse(Rule.selfOnly, "a conversation is deleted as oneself")
            break
          default:
            if (this.isRelay && (Object.values(MetaKey) as string[]).includes(change.key)) break
            if (this.restatesCreation && change.key === MetaKey.createdBy && after === this.actor) break
            if (this.restatesCreation && change.key === MetaKey.createdAt && isTime(after)) {
              // It orders the conversation in every member's list: a creation is not dated ahead, nor
              // (a concurrent one differs by clock skew only) long before the one it restates.
              this.refuseFuture(after, "the conversation's createdAt")
              // A creation made offline days before the other user's (a flight) restates an earlier date;
              // not a month earlier (before: refused a day earlier, and the user's messages after it).
              if (typeof change.before === "number" && after < change.before - RESTATED_CREATION_EARLIER_MS)
                refuse(Rule.schema, "the conversation's createdAt is dated before the conversation")
              // Nor much after it: messages dated a day before the conversation are refused, and a
              // crafted "creation" from a participant's first write moved a direct conversation's date a
              // day ahead at any time, so that the other's messages were refused (an outside probe).
              // Two replicas creating it at once differ by their clocks' skew; one that created it
              // much later without seeing the first rebuilds on it (concurrent change).
              if (typeof change.before === "number" && after > change.before + RESTATED_CREATION_LATER_MS)
                refuse(
                  Rule.concurrentChange,
                  "the direct conversation was created before this replica's creation of it: rebuild on the relay's state and send the work again",
                )
              this.restatedAt = Math.min(this.restatedAt ?? after, after)
              break
            }
            if ((Object.values(MetaKey) as string[]).includes(change.key))
              refuse(Rule.immutable, `conversation field "${change.key}" is fixed at creation`)
            refuse(Rule.schema, "unknown conversation field")
        }
        if (!this.isRelay) assert(canUpdateConversation(this.role))
      }
    }
  }

  /** Adds, removals (leaving included) and role changes, by the rules of shared. */
  private checkParticipants(changes: readonly KeyChange[]): void {
    let added = 0
    for (const change of changes) {
      if (change.before === ABSENT && change.after.some((v) => v !== ABSENT)) added++
      if (!isUserId(change.key)) refuse(Rule.schema, "participant id invalid")
      const user = change.key as UserId
      const before = change.before === ABSENT ? undefined : (change.before as ParticipantRecord)
      for (const after of change.after) {
        if (after === ABSENT) {
          if (!before) {
            // An entry that holds nothing where there was none: placed only by who may add the user.
            if (!this.isRelay) assert(canAddParticipant(this.role, this.kind, "member"))
            continue
          }
          if (!this.isRelay)
            assert(canRemoveParticipant(this.actor!, this.role, this.kind, user, before.role, this.deleted))
          continue
        }
        schema(checkParticipantRecord(after))
        const record = after as ParticipantRecord
        if (!before) {
          if (this.isRelay) continue
          assert(canAddParticipant(this.role, this.kind, record.role))
          if (record.addedBy !== this.actor) refuse(Rule.selfOnly, "participants are added as oneself")
          // Added again: a new membership, told from the removed one by who added the user and when
          // (the removal rule reads it: a removal re-sent from before this adding is not a new one).
          const removed = currentMapItem(this.doc, TopLevel.participants, change.key)
          const was = removed ? membershipOf(removed) : undefined
          if (was !== undefined && was === membership(record))
            refuse(Rule.immutable, "a participant added again is dated apart from the removed membership")
          // It orders the participants every member is shown: not dated ahead of the relay's clock, nor
          // (once the conversation exists) a day before it was created.
          this.refuseFuture(record.addedAt, "a participant's addedAt")
          this.refuseBeforeCreation(record.addedAt, "a participant's addedAt")
        } else {
          const restated =
            this.restatesCreation && record.addedBy === this.actor && record.role === before.role
          if (!restated && (record.addedBy !== before.addedBy || record.addedAt !== before.addedAt)) {
            // A new record where one stood: the user removed and added again (one offline batch, which
            // Yjs cannot tell from a rewrite; refused before, and the admin's replica rebuilt). Judged
            // as both, by whoever may do both; never of oneself (an admin rewriting his own record over
            // and over kept an owner's removal of him from taking effect).
            if (this.isRelay) continue
            if (user === this.actor) refuse(Rule.immutable, "who added a participant, and when, is fixed")
            assert(canRemoveParticipant(this.actor!, this.role, this.kind, user, before.role, this.deleted))
            assert(canAddParticipant(this.role, this.kind, record.role))
            if (record.addedBy !== this.actor) refuse(Rule.selfOnly, "participants are added as oneself")
            this.refuseFuture(record.addedAt, "a participant's addedAt")
            this.refuseBeforeCreation(record.addedAt, "a participant's addedAt")
            continue
          }
          if (restated) {
            this.refuseFuture(record.addedAt, "a participant's addedAt")
            this.refuseBeforeCreation(record.addedAt, "a participant's addedAt")
          }
          // The same record written again would take the key's place and keep a removal or role change
          // made concurrently (by an owner whose replica has not seen it) from landing: an admin kept
          // himself in (an outside probe). Nobody writes a record again but to change it.
          if (!this.isRelay && !restated && sameValue(record, before))
            refuse(Rule.immutable, "a participant's record is written again only to change it")
          if (!this.isRelay && record.role !== before.role)
            assert(canChangeRole(this.role, this.kind, before.role, record.role))
        }
      }
    }
    if (added > 0 && typesOf(this.doc).participants.size + added > Limits.participants)
      refuse(Rule.schema, "too many participants")
    if (!this.isRelay) this.checkKeepsAnOwner(changes)
  }

  /**
   * A group with participants keeps an owner (`last-owner`), judged on what
   * the update may leave: an owner is counted only where every outcome of
   * its key holds an owner, a participant wherever one may stay.
   */
  private checkKeepsAnOwner(changes: readonly KeyChange[]): void {
    if (changes.length === 0) return
    const isOwner = (v: Value) => v !== ABSENT && (v as ParticipantRecord).role === "owner"
    const changed = new Map(changes.map((c) => [c.key, c]))
    let owners = 0
    let participants = 0
    for (const [user, record] of typesOf(this.doc).participants.entries()) {
      if (changed.has(user)) continue
      participants++
      if (record.role === "owner") owners++
    }
    for (const change of changes) {
      const outcomes = change.held ? change.after : [...change.after, ABSENT]
      if (outcomes.some((v) => v !== ABSENT)) participants++
      if (outcomes.every(isOwner)) owners++
    }
    assert(keepsAnOwner(this.kind, owners, participants, this.deleted))
  }

  /** Gathers new records and placeholders, and the live records the update deletes. */
  private collectMessages(): void {
    for (const n of this.read.items) {
      if (n.location.root !== TopLevel.messages) continue
      for (const { value, deleted } of this.elements(n)) {
        // Naming the message: its writer's SDK leaves it out of its next rebuild, so one malformed
        // message (an older SDK wrote `undefined` into it) does not take every later one down with it.
        if (!isPlainJson(value)) refuse(Rule.schema, namingMessage(value, "a message holds plain JSON only"))
        const problem = checkStoredRecord(value)
        if (problem !== undefined) refuse(Rule.schema, namingMessage(value, problem))
        const record = decodeStoredRecord(value)!
        if (deleted) {
          if (isDeletedRecord(record)) refuse(Rule.immutable, "a deletion placeholder is permanent")
          if (this.transientRecords.has(record.id) || this.newRecords.has(record.id))
            refuse(Rule.immutable, `message ${record.id} written twice`)
          this.transientRecords.set(record.id, record)
        } else if (isDeletedRecord(record)) {
          if (this.newPlaceholders.has(record.id))
            refuse(Rule.immutable, "one placeholder per deleted message")
          this.newPlaceholders.set(record.id, record)
        } else {
          if (this.newRecords.has(record.id) || this.transientRecords.has(record.id))
            refuse(Rule.immutable, `message ${record.id} written twice`)
          this.newRecords.set(record.id, record)
        }
      }
    }
    for (const d of this.read.deleted) {
      if (d.location.root !== TopLevel.messages) continue
      const record = decodeStoredRecord(d.item.content.getContent()[d.index])
      if (!record || isDeletedRecord(record)) refuse(Rule.immutable, "a deletion placeholder is permanent")
      this.deletedRecords.set(record.id, record)
    }
  }

  /** New messages as their author; a deletion always leaves a matching placeholder. */
  /** Refuses a user's `createdAt` more than {@link MAX_FUTURE_SKEW_MS} ahead of the relay's clock. */
  private refuseFuture(createdAt: number, what: string): void {
    if (this.isRelay || createdAt <= (this.input.now ?? Date.now()) + MAX_FUTURE_SKEW_MS) return
    refuse(Rule.schema, `${what} is dated more than a day ahead of the relay's clock`)
  }

  /** Refuses a user's date more than {@link MAX_FUTURE_SKEW_MS} before the conversation's creation (once it exists). */
  private refuseBeforeCreation(at: number, what: string): void {
    if (this.isRelay) return
    const stored = typesOf(this.doc).meta.get(MetaKey.createdAt) ?? this.creationTime
    const created = this.kind === "direct" ? this.earliestCreation(stored) : stored
    if (typeof created === "number" && at < created - MAX_FUTURE_SKEW_MS)
      refuse(Rule.schema, `${what} is dated before the conversation`)
  }

  /**
   * A direct conversation's date for {@link refuseBeforeCreation}: the earliest
   * either of its users stated by creating it (the stored `createdAt` is
   * whichever creation won the merge). A user who created it offline, days
   * before the other did online, wrote messages dated since their own creation:
   * judged against the stored, later date they were refused, and every later
   * update of their replica with them (an outside tester's flight). Each
   * creation's participant records carry its date (`addedAt`); the relay keeps
   * the values of replaced records (`RELAY_DOC_OPTIONS`), so a creation that
   * lost the merge still counts. Only the two users can create it, and each
   * creation was judged when it came (not ahead, not more than
   * {@link RESTATED_CREATION_EARLIER_MS} earlier): a stranger gains nothing, and
   * a group's date is never moved.
   */
  private earliestCreation(stored: unknown): unknown {
    if (this.statedCreation === null) {
      let earliest: number | undefined
      const participants = typesOf(this.doc).participants
      const map = (participants as unknown as { _map: Map<string, Y.Item> })._map
      for (const last of map.values())
        for (let item: Y.Item | null = last; item !== null; item = item.left as Y.Item | null) {
          const content = item.content.getContent()
          const record = content[content.length - 1] as Partial<ParticipantRecord> | undefined
          if (
            record !== null &&
            typeof record === "object" &&
            isTime(record.addedAt) &&
            typeof record.addedBy === "string" &&
            map.has(record.addedBy)
          )
            earliest = Math.min(earliest ?? record.addedAt, record.addedAt)
        }
      this.statedCreation = earliest
    }
    const dates = [stored, this.statedCreation, this.restatedAt].filter(isTime)
    return dates.length > 0 ? Math.min(...dates) : stored
  }

  private checkMessages(): void {
    const index = messageIndex(this.doc)
    // Deletions first: a record deleted and written again is an attempt to rewrite it.
    for (const [id, record] of this.deletedRecords) {
      if (!this.isRelay) assert(canDeleteMessage(this.actor!, this.role, record.author))
      if (!this.newPlaceholders.has(id)) refuse(Rule.immutable, "a deleted message leaves a placeholder")
    }
    for (const record of this.newRecords.values()) {
      if (!this.isRelay) assert(canSendMessage(this.actor!, this.role, record.author))
      this.refuseFuture(record.createdAt, `message ${record.id}`)
      // Readers order by it, and an inbox shows the last message's time as the conversation's activity:
      // one dated 1970 sank the conversation in every member's list (an outside probe).
      this.refuseBeforeCreation(record.createdAt, `message ${record.id}`)
      if (index.records.has(record.id) || index.deleted.has(record.id) || this.deletedRecords.has(record.id))
        refuse(Rule.immutable, `message ${record.id} already exists`)
      this.refuseSealedId(record.id)
    }
    // Written and deleted at once: a message sent, then deleted by someone allowed to, with its placeholder.
    for (const [id, record] of this.transientRecords) {
      if (!this.isRelay) assert(canSendMessage(this.actor!, this.role, record.author))
      this.refuseFuture(record.createdAt, `message ${id}`)
      this.refuseBeforeCreation(record.createdAt, `message ${id}`)
      if (index.records.has(id) || index.deleted.has(id) || this.deletedRecords.has(id))
        refuse(Rule.immutable, `message ${id} already exists`)
      this.refuseSealedId(id)
      if (!this.isRelay) assert(canDeleteMessage(this.actor!, this.role, record.author))
      if (!this.newPlaceholders.has(id)) refuse(Rule.immutable, "a deleted message leaves a placeholder")
    }
    for (const [id, placeholder] of this.newPlaceholders) {
      const original =
        this.deletedRecords.get(id) ??
        this.transientRecords.get(id) ??
        index.deleted.get(id) ??
        this.sealed(id)?.record
      // A placeholder for a message not found may be for a sealed one whose segment is not held: the
      // author it claims is checked against the sealed record once it is.
      if (!original && sealedIdStatus(this.doc, id) === "unchecked")
        refuse(Rule.immutable, `message ${id} could not be checked against the sealed history`)
      if (original) {
        if (placeholder.author !== original.author || placeholder.createdAt !== original.createdAt)
          refuse(Rule.immutable, "a placeholder keeps the message's author and time")
      } else if (index.records.has(id) || this.newRecords.has(id)) {
        refuse(Rule.immutable, "a placeholder replaces the message it deletes")
      } else if (!this.isRelay && placeholder.author !== this.actor) {
        // A message sent and deleted offline never reached anyone: only its own author may say so.
        refuse(Rule.authorOrAdmin, "a placeholder for an unknown message is its author's only")
      }
      if (this.isRelay) continue
      if (placeholder.priority !== undefined) refuse(Rule.relayOnly, "only the relay expires a message")
      assert(canDeleteMessage(this.actor!, this.role, placeholder.author))
      if (placeholder.deletedBy !== this.actor) refuse(Rule.selfOnly, "a message is deleted as oneself")
    }
  }

  /**
   * A new message's id is no sealed message's: refused when a held segment
   * has it, or when the sealed history could not be checked for it (the
   * update path settles that first: see `HistoryKeeper.settleSealedIds`).
   */
  private refuseSealedId(id: MessageId): void {
    const status = sealedIdStatus(this.doc, id)
    if (status === "sealed") refuse(Rule.messageIdTaken, `message ${id} already exists in the sealed history`)
    if (status === "unchecked")
      refuse(Rule.messageIdTaken, `message ${id} could not be checked against the sealed history`)
  }

  /** Sequence numbers and the sealed history's summaries: the relay's alone. */
  private checkOrder(): void {
    for (const n of this.read.items) {
      if (n.location.root === TopLevel.segments && !this.isRelay)
        refuse(Rule.relayOnly, "sealed history is written only by the relay")
      if (n.location.root !== TopLevel.order) continue
      assert(canWriteSequence(this.isRelay))
      for (const { value } of this.elements(n)) schema(checkSequenceRecord(value))
    }
    for (const d of this.read.deleted) {
      if (d.location.root === TopLevel.segments && !this.isRelay)
        refuse(Rule.relayOnly, "sealed history is the relay's")
      // The relay removes the numbers of the messages it seals.
      if (d.location.root === TopLevel.order && !this.isRelay)
        refuse(Rule.relayOnly, "sequence numbers are never removed")
    }
  }

  /** The sealed entry of `id` when the relay's directory has it (see `HistoryKeeper`). */
  private sealed(id: MessageId): SealedEntry | undefined {
    return sealedHistory(this.doc).entry(id)
  }

  /** Tombstones: a sealed, live message deleted once, as oneself, by its author or a manager. */
  private checkTombstones(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      if (!isMessageId(change.key)) refuse(Rule.schema, "tombstone key invalid")
      if (change.before !== ABSENT) refuse(Rule.immutable, "a deleted message stays deleted")
      for (const after of change.after) {
        if (after === ABSENT) {
          // An entry that holds nothing would keep a later deletion of the message from landing.
          if (!this.isRelay) refuse(Rule.schema, "a tombstone holds the deletion")
          continue
        }
        const tombstone = decodeTombstone(after)
        if (!tombstone) refuse(Rule.schema, "tombstone invalid")
        const entry = this.sealed(change.key as MessageId)
        if (!entry || isDeletedRecord(entry.record))
          refuse(Rule.immutable, `message ${change.key} is not a live sealed message`)
        if (entry.seq !== tombstone.seq || entry.record.author !== tombstone.author)
          refuse(Rule.immutable, "a tombstone keeps the message's author and number")
        if (this.isRelay) continue
        if (tombstone.priority !== undefined) refuse(Rule.relayOnly, "only the relay expires a message")
        assert(canDeleteMessage(this.actor!, this.role, tombstone.author))
        if (tombstone.deletedBy !== this.actor) refuse(Rule.selfOnly, "a message is deleted as oneself")
      }
    }
  }

  /** A sealed message deleted before or by this update (tombstone, or a placeholder sent for it). */
  private sealedDeletion(id: MessageId): SealedEntry | undefined {
    const entry = this.sealed(id)
    if (!entry) return undefined
    if (isDeletedRecord(entry.record)) return entry
    if (typesOf(this.doc).tombstones.has(id) || this.newPlaceholders.has(id)) return entry
    // Deleted by this update only if it surely leaves a tombstone (checkTombstones judges its value):
    // an item that is empty, or deleted on arrival, deletes nothing.
    return this.surelyWrites(TopLevel.tombstones, id) ? entry : undefined
  }

  /** Is `id` a message that exists and stays live after the update? */
  private liveMessage(id: MessageId): MessageRecord | undefined {
    const index = messageIndex(this.doc)
    if (this.deletedRecords.has(id) || this.newPlaceholders.has(id)) return undefined
    if (index.deleted.has(id)) return undefined
    const record = index.records.get(id) ?? this.newRecords.get(id)
    if (record) return record
    const entry = this.sealed(id)
    if (!entry || this.sealedDeletion(id)) return undefined
    return entry.record as MessageRecord
  }

  /** The author of a message being deleted now, or deleted before; undefined otherwise. */
  private deletedAuthor(id: MessageId): UserId | undefined {
    const placeholder = this.newPlaceholders.get(id) ?? messageIndex(this.doc).deleted.get(id)
    return placeholder?.author ?? this.sealedDeletion(id)?.record.author
  }

  /** Edits by the author of a live message; removed only with the message. */
  private checkEdits(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      if (!isMessageId(change.key)) refuse(Rule.schema, "edit key invalid")
      const id = change.key as MessageId
      for (const after of change.after) {
        if (after === ABSENT) {
          const author =
            this.deletedAuthor(id) ??
            messageIndex(this.doc).records.get(id)?.author ??
            this.sealed(id)?.record.author
          if (this.isRelay) continue
          if (author === undefined) refuse(Rule.immutable, "an edit goes with its message")
          // Dropping an edit is the author's (an edit back) or goes with deleting the message.
          if (this.deletedAuthor(id) !== undefined) assert(canDeleteMessage(this.actor!, this.role, author!))
          else assert(canEditMessage(this.actor!, this.role, author!))
          continue
        }
        schema(checkEditRecord(after))
        const record = this.liveMessage(id)
        if (!record) refuse(Rule.immutable, `message ${id} does not exist or is deleted`)
        if (!this.isRelay) assert(canEditMessage(this.actor!, this.role, record!.author))
      }
    }
  }

  /** Reactions as oneself on live messages; others' removed only with the message. */
  private checkReactions(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      const parsed = parseReactionKey(change.key)
      if (!parsed || !isMessageId(parsed.message) || !isUserId(parsed.user) || !isReactionEmoji(parsed.emoji))
        refuse(Rule.schema, "reaction key invalid")
      const { message, user } = parsed!
      for (const after of change.after) {
        if (this.isRelay) continue
        if (after === ABSENT) {
          const author = this.deletedAuthor(message)
          if (author !== undefined && user !== this.actor)
            assert(canDeleteMessage(this.actor!, this.role, author))
          else assert(canReact(this.actor!, this.role, user))
          continue
        }
        if (!isTime(after) && !isReactionRemoval(after)) refuse(Rule.schema, "reaction time invalid")
        assert(canReact(this.actor!, this.role, user))
        if (!this.liveMessage(message))
          refuse(Rule.immutable, `message ${message} does not exist or is deleted`)
        // A removal is of a reaction folded into the message's sealed entry (shared `SealedOverlays`).
        if (
          isReactionRemoval(after) &&
          !this.sealed(message)?.overlays?.reactions?.some(([e, u]) => e === parsed!.emoji && u === user)
        )
          refuse(Rule.schema, "a removal names a reaction folded into its sealed message")
      }
    }
    if (!this.isRelay) this.checkReactionCounts(changes)
  }

  /**
   * The bounds of rule `reaction-limit` on what the document holds once the
   * update is applied: different emoji per message (only where the update
   * adds one a message did not show) and the actor's reactions in all.
   * Reactions are set as oneself only (checked above), so the actor's are the
   * only ones an update adds.
   */
  private checkReactionCounts(changes: readonly KeyChange[]): void {
    const index = messageIndex(this.doc)
    // Per message: emoji → users, as the update leaves them (copied only for messages it adds to).
    const shown = new Map<MessageId, Map<string, Set<string>>>()
    const emojiOf = (message: MessageId) => {
      let byEmoji = shown.get(message)
      if (!byEmoji) {
        byEmoji = new Map([...(index.reactions.get(message) ?? [])].map(([e, users]) => [e, new Set(users)]))
        shown.set(message, byEmoji)
      }
      return byEmoji
    }
    let added = 0
    let removed = 0
    const additions: { message: MessageId; emoji: string }[] = []
    for (const change of changes) {
      const parsed = parseReactionKey(change.key)!
      // Added when it was absent and the update writes it; removed when every value it leaves is absent.
      if (change.before === ABSENT && change.after.some((v) => v !== ABSENT)) {
        added++
        // A removal of a folded reaction takes a key, but shows no emoji.
        if (change.after.some((v) => v !== ABSENT && !isReactionRemoval(v))) additions.push(parsed)
      } else if (change.before !== ABSENT && change.after.every((v) => v === ABSENT)) {
        if (parsed.user === this.actor) removed++
        const users = emojiOf(parsed.message).get(parsed.emoji)
        users?.delete(parsed.user)
        if (users?.size === 0) emojiOf(parsed.message).delete(parsed.emoji)
      }
    }
    if (added === 0) return
    const reactions = index.reactionsOf(this.actor!) + added - removed
    for (const { message, emoji } of additions) {
      const byEmoji = emojiOf(message)
      const present = index.reactions.get(message)?.has(emoji) === true
      if (!byEmoji.has(emoji)) byEmoji.set(emoji, new Set())
      byEmoji.get(emoji)!.add(this.actor!)
      assert(canAddReaction(present, byEmoji.size, reactions))
    }
  }

  /**
   * Unpins: of a live sticky message, as oneself, by its author or a manager,
   * once (never rewritten); removed only with the message.
   */
  private checkUnpins(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      if (!isMessageId(change.key)) refuse(Rule.schema, "unpin key invalid")
      const id = change.key as MessageId
      for (const after of change.after) {
        if (this.isRelay) continue
        if (after === ABSENT) {
          const author = this.deletedAuthor(id)
          if (author === undefined) refuse(Rule.immutable, "an unpin stays until its message is deleted")
          assert(canDeleteMessage(this.actor!, this.role, author!))
          continue
        }
        if (change.before !== ABSENT) refuse(Rule.immutable, "a message is unpinned once")
        schema(checkUnpinRecord(after))
        // Unpinned and deleted in one update (offline work sent at once) is as good as either alone.
        const record =
          this.liveMessage(id) ??
          this.pinnedCopy(id) ??
          this.deletedRecords.get(id) ??
          (this.sealedDeletion(id)?.record as MessageRecord | undefined)
        if (!record || isDeletedRecord(record))
          refuse(Rule.immutable, `message ${id} does not exist or is deleted`)
        if (record!.priority !== "sticky") refuse(Rule.schema, `message ${id} is not pinned`)
        assert(canUnpinMessage(this.actor!, this.role, record!.author))
        if ((after as UnpinRecord).by !== this.actor)
          refuse(Rule.selfOnly, "a message is unpinned as oneself")
      }
    }
  }

  /** The relay's copy of a sealed sticky message, while the message is not deleted. */
  private pinnedCopy(id: MessageId): MessageRecord | undefined {
    if (this.sealedDeletion(id) || typesOf(this.doc).tombstones.has(id)) return undefined
    return decodePin(typesOf(this.doc).pins.get(id))?.record as MessageRecord | undefined
  }

  /** Copies of sealed sticky messages: the relay's; others only remove one with its deletion or unpinning. */
  private checkPins(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      if (this.isRelay) continue
      for (const after of change.after) {
        if (after !== ABSENT) refuse(Rule.relayOnly, "pinned copies are written by the relay")
        const id = change.key as MessageId
        const copy = decodePin(change.before)?.record
        const author = this.deletedAuthor(id) ?? copy?.author
        if (author === undefined) refuse(Rule.schema, "pin invalid")
        if (this.deletedAuthor(id) !== undefined) assert(canDeleteMessage(this.actor!, this.role, author!))
        else if (this.unpinnedNow(id)) assert(canUnpinMessage(this.actor!, this.role, author!))
        else refuse(Rule.immutable, "a pinned copy goes with its message's deletion or unpinning")
      }
    }
  }

  /** Whether `id` is unpinned before or by this update. */
  private unpinnedNow(id: MessageId): boolean {
    return typesOf(this.doc).unpinned.has(id) || this.surelyWrites(TopLevel.unpinned, id)
  }

  /** Whether the update surely leaves `root[key]` holding a value it wrote (see {@link KeyChange.held}). */
  private surelyWrites(root: string, key: string): boolean {
    this.keyChanges ??= new Map(this.changes.map((c) => [`${c.root}\u0000${c.key}`, c]))
    return this.keyChanges.get(`${root}\u0000${key}`)?.held === true
  }

  /**
   * A removal of a participant's record that another write replaced after the
   * sender's replica last saw it (a concurrent role change, a removal and
   * re-adding) deletes nothing in Yjs: the record stays, and the sender would
   * be told "saved" for a removal that never happened (an owner's removal of
   * an admin who demoted herself meanwhile left her reading on). Refused
   * (`concurrent-change`), so the sender rebuilds and decides again. A delete
   * set re-sent (on reconnect, in a resend) names every entry its replica ever
   * saw removed: only the removal of what the replica last saw as the record,
   * with the record's current value unseen, is one (see `ReplicaView`).
   */
  private checkStaleRemovals(): void {
    const seen = this.input.seen
    if (!seen || this.isRelay || this.read.redeleted.length === 0) return
    const participants = typesOf(this.doc).participants as unknown
    // Only what the replica's state vector covers: not every record its user wrote (another device's
    // change swallowed the removal all the same, and the removed admin kept reading: an outside probe).
    // The SDK's resends carry its view, which covers what it wrote itself.
    const had = (item: Y.Item) => replicaHad(seen, item)
    // Each key once (a re-sent delete set may name every record a key ever held: one walk of its items,
    // not one per record named).
    const removedByKey = new Map<string, Set<Y.Item>>()
    for (const removed of this.read.redeleted) {
      if ((removed.parent as unknown) !== participants) continue
      const key = removed.parentSub!
      const items = removedByKey.get(key) ?? new Set<Y.Item>()
      items.add(removed)
      removedByKey.set(key, items)
    }
    if (removedByKey.size === 0) return
    // Written by the update as well: judged as a write of the key (mapChanges).
    const written = new Set<string>()
    for (const n of this.read.items)
      if (n.location.root === TopLevel.participants && n.location.key !== null) written.add(n.location.key)
    for (const [key, removed] of removedByKey) {
      const current = currentMapItem(this.doc, TopLevel.participants, key)
      if (!current || current.deleted || removed.has(current) || written.has(key)) continue
      // What the replica last saw under the key: a removal of it is one; an older record it names is
      // a removal re-sent.
      let lastSeen: Y.Item | null = current
      while (lastSeen !== null && !removed.has(lastSeen) && !had(lastSeen)) lastSeen = lastSeen.left
      if (lastSeen === null || !removed.has(lastSeen) || had(current)) continue
      // The user was removed and added again since that record: the removal happened, and this one is
      // re-sent. Refused, every member who came back online after a removal and re-adding had their
      // offline work refused (an outside probe).
      if (readdedSince(lastSeen, current)) continue
      refuse(
        Rule.concurrentChange,
        `participant ${key}'s record changed after this replica last saw it: the removal would remove nothing, and ${key} is still a participant`,
      )
    }
  }

  /** Own markers, forward only, never past the last sequence number. */
  private checkMarkers(changes: readonly KeyChange[]): void {
    const last = messageIndex(this.doc).lastSequence()
    for (const change of changes) {
      if (!isUserId(change.key)) refuse(Rule.schema, "marker key invalid")
      for (const after of change.after) {
        if (after === ABSENT) {
          if (!this.isRelay && !(change.key === this.actor && this.deletedOnArrival(change)))
            refuse(Rule.markerForwardOnly, "markers are never removed")
          continue
        }
        schema(checkMarker(after))
        if ((after as number) > last) refuse(Rule.schema, "a marker cannot pass the last sequence number")
        if (this.isRelay) continue
        // The value it holds written again (two devices at one read position): by its user only.
        const before =
          change.before === ABSENT || sameValue(after, change.before) ? undefined : (change.before as number)
        // A lower marker of the user's own that Yjs places before the key's value and deletes on arrival
        // (a second device read less, offline, and loses the merge): it moves nothing. Refused, its
        // device rebuilt and reported an error for an ordinary offline read.
        if (
          before !== undefined &&
          change.key === this.actor &&
          (after as number) < before &&
          this.losesToCurrent(change.root, change.key)
        )
          continue
        assert(canMoveMarker(this.actor!, this.role, change.key as UserId, before, after as number))
      }
    }
  }

  /**
   * Whether every entry the update writes under the key is one the update
   * deletes itself, empty or holding no more than the key's current value,
   * which stays: the entry lost a merge in the sender's replica (another tab of the
   * user marked read at the same moment, and this tab forwards what it took
   * from it), and nothing is removed or moved. Judged a removal, it was
   * refused and both tabs rebuilt (an outside probe).
   */
  private deletedOnArrival(change: KeyChange): boolean {
    const current = currentMapItem(this.doc, change.root, change.key)
    if (!current || current.deleted || change.before === ABSENT) return false
    if (this.read.deletes(current.id.client, current.id.clock + current.length - 1)) return false
    const entries = this.read.items.filter(
      (n) => n.location.root === change.root && n.location.key === change.key,
    )
    return (
      entries.length > 0 &&
      entries.every(
        ({ item }) =>
          this.read.deletes(item.id.client, item.id.clock + item.length - 1) &&
          // Encoded from a replica that deleted it, an entry travels empty (ContentDeleted).
          (item.content instanceof Y.ContentDeleted ||
            (item.content instanceof Y.ContentAny &&
              typeof mapItemValue(item) === "number" &&
              (mapItemValue(item) as number) <= (change.before as number))),
      )
    )
  }

  /**
   * Whether the update's one entry under `root[key]` lands before the key's
   * current value and is deleted on arrival, changing nothing: written over
   * the same earlier entry as the current value (or both on nothing), under a
   * lower client id (Yjs orders such siblings by client id, the highest
   * last), and the current value kept.
   */
  private losesToCurrent(root: string, key: string): boolean {
    const current = currentMapItem(this.doc, root, key)
    if (!current || current.deleted) return false
    if (this.read.deletes(current.id.client, current.id.clock + current.length - 1)) return false
    const entries = this.read.items.filter((n) => n.location.root === root && n.location.key === key)
    if (entries.length !== 1) return false
    const { item } = entries[0]!
    const sameOrigin =
      item.origin === null
        ? current.origin === null
        : current.origin !== null &&
          item.origin.client === current.origin.client &&
          item.origin.clock === current.origin.clock
    return sameOrigin && item.rightOrigin === null && item.id.client < current.id.client
  }

  /** Profiles: each participant sets or removes only their own entry, well-formed and bounded. */
  private checkProfiles(changes: readonly KeyChange[]): void {
    for (const change of changes) {
      if (!isUserId(change.key)) refuse(Rule.schema, "profile key invalid")
      for (const after of change.after) {
        // The relay removes an erased user's entry (eraseAuthor).
        if (this.isRelay) continue
        if (after !== ABSENT) schema(checkProfileRecord(after))
        assert(canSetProfile(this.actor!, this.role, change.key as UserId))
      }
    }
  }
}

/**
 * True when one of `items` is sure to become the key's value over `current`:
 * map entries written on replicas that had no value for the key (origin null)
 * are ordered by client id, the highest last, so a live one of a higher client
 * id than an origin-null current lands after it (entries with a right origin,
 * which land before it, are refused in `mapChanges`). A replica that merged such a
 * concurrent write (two creations of one direct conversation) deletes the
 * entry it beat, and that deletion is no removal of the key.
 */
function outranks(items: readonly NewItem[], current: Y.Item, stateOf: (item: Y.Item) => Value): boolean {
  if (current.origin !== null) return false
  return items.some(
    ({ item }) => item.origin === null && item.id.client > current.id.client && stateOf(item) !== ABSENT,
  )
}

/** A key that held nothing, written by items that hold nothing (see `mapChanges`). */
const emptyWrite = (change: KeyChange): boolean =>
  change.before === ABSENT && change.after.length === 1 && change.after[0] === ABSENT

const sameValue = (a: Value, b: Value): boolean => (a === ABSENT || b === ABSENT ? a === b : sameJson(a, b))

/** Maps whose keys are message ids (reactions' keys hold one): the rules look them up in sealed history. */
const KEYED_BY_MESSAGE: ReadonlySet<string> = new Set([
  TopLevel.edits,
  TopLevel.tombstones,
  TopLevel.unpinned,
  TopLevel.pins,
  TopLevel.reactions,
])

/**
 * The message ids `update` names that the rules may look for in sealed
 * history because the live document does not hold them: the messages it
 * edits, reacts to, deletes (tombstones, placeholders), unpins, or whose
 * pinned copy it removes, written or removed. A superset of what the rules
 * ask `SealedHistory.entry` about, from the same reading of the update, so
 * that the update path reads only the segments that may hold these (and not
 * the conversation's whole history) before it asks the rules again. Empty
 * for an update the rules could not read.
 */
export function sealedIdsNamed(doc: Y.Doc, update: Uint8Array): MessageId[] {
  let read: ReadUpdate
  try {
    read = readUpdate(doc, update, rootKind, Rule.schema, 10_000 + 64 * update.length)
  } catch {
    return []
  }
  const index = messageIndex(doc)
  const ids = new Set<MessageId>()
  const name = (id: string | undefined) => {
    if (id !== undefined && isMessageId(id) && !index.records.has(id) && !index.deleted.has(id)) ids.add(id)
  }
  const keyed = (root: string, key: string | null) => {
    if (key === null || !KEYED_BY_MESSAGE.has(root)) return
    name(root === TopLevel.reactions ? parseReactionKey(key)?.message : key)
  }
  for (const n of read.items) {
    keyed(n.location.root, n.location.key)
    if (n.location.root !== TopLevel.messages || !(n.item.content instanceof Y.ContentAny)) continue
    for (const value of n.item.content.getContent()) {
      const record = decodeStoredRecord(value)
      if (record && isDeletedRecord(record)) name(record.id)
    }
  }
  for (const d of read.deleted) keyed(d.location.root, d.location.key)
  return [...ids]
}

/**
 * Whether a record after `from` under its key (up to `to`) starts another
 * membership (who added the user, or when, differs: kept for deleted records,
 * see `RELAY_DOC_OPTIONS`) and was written by a replica that had `from`: the
 * membership of `from` ended by a removal, the user was added again. A
 * record of another membership placed without having `from` (a direct
 * conversation's creation restated by the other user, offline) is a
 * concurrent write, not a re-adding (an outside probe's leave was
 * acknowledged and lost so).
 */
function readdedSince(from: Y.Item, to: Y.Item): boolean {
  const was = membershipOf(from)
  if (was === undefined) return false
  const chain: Y.Item[] = [from]
  for (let item = from.right; item !== null; item = item.right) {
    chain.push(item)
    if (item === to) break
  }
  const inChain = (id: Y.ID | null) =>
    id !== null &&
    chain.some((i) => i.id.client === id.client && id.clock >= i.id.clock && id.clock < i.id.clock + i.length)
  return chain.some((item, i) => {
    if (i === 0) return false
    const now = membershipOf(item)
    return now !== undefined && now !== was && inChain(item.origin)
  })
}
