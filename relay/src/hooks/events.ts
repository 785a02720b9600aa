import { createHash, randomFillSync } from "node:crypto"
import {
  type ChangeEvent,
  type ConversationId,
  type ConversationKind,
  displayNameOf,
  getConversation,
  getMessage,
  listParticipants,
  type MessageId,
  type MessageView,
  type Metadata,
  type Participant,
  type Role,
  typesOf,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"

/**
 * Who made a change. `bot` is a write a hook made through its context (as
 * `user`, from the hook module `hook`); `relay` is the relay's own bookkeeping;
 * `unknown` marks events re-derived after a crash for changes whose writer the
 * log does not record (see HOOKS.md, "Delivery guarantees"). `name` is the
 * acting user's display name from their profile in the conversation, as it is
 * right after the change (absent when they set none).
 */
export type HookActor =
  | { readonly kind: "user"; readonly user: UserId; readonly name?: string }
  | { readonly kind: "bot"; readonly user: UserId; readonly hook: string; readonly name?: string }
  /** An API key's service; `user` is the participant it wrote as (its own `service.<name>`, or a user it acts for). */
  | { readonly kind: "service"; readonly subject: string; readonly user?: UserId; readonly name?: string }
  | { readonly kind: "relay" }
  | { readonly kind: "unknown" }

/** The conversation as it is right after the change. */
export interface HookConversation {
  readonly id: ConversationId
  readonly kind: ConversationKind
  readonly title: string
  readonly metadata: Metadata
  readonly createdBy: UserId
  readonly createdAt: number
  readonly deletedAt?: number
  readonly participants: readonly Participant[]
}

/** What each event type is about. */
export interface HookSubjects {
  "conversation.created": { readonly createdBy: UserId; readonly participants: readonly Participant[] }
  "conversation.updated": { readonly fields: readonly ("title" | "metadata" | "fleetingSeconds")[] }
  "conversation.deleted": { readonly deletedBy: UserId }
  /** A deleted direct conversation was reopened by one of its two users: empty, written to again. */
  "conversation.reopened": { readonly reopenedBy: UserId }
  "participants.added": { readonly participants: readonly Participant[] }
  "participants.removed": { readonly users: readonly UserId[] }
  "participants.roleChanged": {
    readonly changes: readonly { readonly user: UserId; readonly from: Role; readonly to: Role }[]
  }
  /** `message.seq` is set once the relay has sequenced it, which it does in the same saved change. */
  "message.sent": { readonly message: HookMessage }
  "message.edited": {
    readonly messageId: MessageId
    readonly body: string
    readonly editedAt: number
    readonly message?: HookMessage
    /** Set when the message was deleted and purged before this event was delivered: `body` is empty. */
    readonly purged?: true
  }
  "message.deleted": { readonly messageId: MessageId; readonly author: UserId; readonly deletedBy: UserId }
  "reaction.added": { readonly messageId: MessageId; readonly user: UserId; readonly emoji: string }
  "reaction.removed": { readonly messageId: MessageId; readonly user: UserId; readonly emoji: string }
  "messages.read": { readonly user: UserId; readonly upTo: number }
  /** A user's devices received the conversation up to `upTo` (delivered marker, a sequence number). */
  "messages.delivered": { readonly user: UserId; readonly upTo: number }
  "typing.started": { readonly user: UserId }
  /** Every saved change, raw: the document-level change events (sequencing and delivery markers included). */
  "document.updated": { readonly changes: readonly ChangeEvent[]; readonly positions: readonly number[] }
}

/** Type of a hook event. */
export type HookEventType = keyof HookSubjects

/** The envelope every payload carries. */
export interface HookEventHeader<T extends HookEventType = HookEventType> {
  /**
   * The de-duplication key: the same on every retry, after restarts, and
   * whichever relay derives the event (live, or from the stored log after a
   * crash or a takeover: see {@link stableEventId}). Opaque: compare it, do
   * not parse or order by it.
   */
  readonly id: string
  readonly type: T
  /**
   * When the relay derived the event (ms since the epoch). The log does not
   * store when a change was saved: an event derived again from it (after a
   * crash, by a relay taking the conversation over) carries the time it was
   * derived then, so two copies of one event (same `id`) may differ here.
   */
  readonly time: number
  readonly conversationId: ConversationId
  readonly actor: HookActor
}

/**
 * A message as hook events carry it. `purged` is set when the message was
 * deleted and purged (relay README, "Deletion and erasure") before the event
 * was delivered: what its author wrote (body, attachments, metadata) is gone
 * from the event, so a handler must not act on it as sent.
 */
export type HookMessage = MessageView & { readonly purged?: true }

/** One hook event: plain JSON, the same object handlers and webhooks receive. */
export type HookEvent<T extends HookEventType = HookEventType> = {
  [K in T]: {
    readonly event: HookEventHeader<K>
    readonly subject: HookSubjects[K]
    readonly conversation: HookConversation
  }
}[T]

/** Handler name for each event type. */
export const HANDLER_NAMES = {
  "conversation.created": "onConversationCreated",
  "conversation.updated": "onConversationUpdated",
  "conversation.deleted": "onConversationDeleted",
  "conversation.reopened": "onConversationReopened",
  "participants.added": "onParticipantsAdded",
  "participants.removed": "onParticipantsRemoved",
  "participants.roleChanged": "onParticipantRoleChanged",
  "message.sent": "onMessageSent",
  "message.edited": "onMessageEdited",
  "message.deleted": "onMessageDeleted",
  "reaction.added": "onReactionAdded",
  "reaction.removed": "onReactionRemoved",
  "messages.read": "onMessagesRead",
  "messages.delivered": "onMessagesDelivered",
  "typing.started": "onTypingStarted",
  "document.updated": "onDocumentUpdated",
} as const satisfies Record<HookEventType, string>

/** Random bytes drawn from the system in blocks: one `getRandomValues` per id was a visible cost per event. */
const randomPool = { bytes: new Uint8Array(4096), used: 4096 }

/** The characters of an event id's random part (those of `randomId`), by the low 6 bits of a byte. */
const ID_CODES = Array.from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", (c) =>
  c.charCodeAt(0),
)

/** The time prefix of the last event id made, and its time: the events of one change share it. */
const lastPrefix = { at: -1, prefix: "" }

/**
 * A new random event id, for events of nothing stored (`typing.started`, a
 * change with no log position): time-ordered prefix, 12 random characters (72 bits). Made
 * from the pool's bytes in place (a frame of 2,000 messages makes 2,001 ids:
 * an array, a view and 16 one-character strings each cost 2–3 ms per frame).
 */
export function newEventId(now: number = Date.now()): string {
  if (randomPool.used + 12 > randomPool.bytes.length) {
    randomFillSync(randomPool.bytes)
    randomPool.used = 0
  }
  const b = randomPool.bytes
  const i = randomPool.used
  randomPool.used = i + 12
  if (lastPrefix.at !== now) {
    lastPrefix.at = now
    lastPrefix.prefix = `evt_${now.toString(36).padStart(9, "0")}`
  }
  const c = ID_CODES
  return (
    lastPrefix.prefix +
    String.fromCharCode(
      c[b[i]! & 63]!,
      c[b[i + 1]! & 63]!,
      c[b[i + 2]! & 63]!,
      c[b[i + 3]! & 63]!,
      c[b[i + 4]! & 63]!,
      c[b[i + 5]! & 63]!,
      c[b[i + 6]! & 63]!,
      c[b[i + 7]! & 63]!,
      c[b[i + 8]! & 63]!,
      c[b[i + 9]! & 63]!,
      c[b[i + 10]! & 63]!,
      c[b[i + 11]! & 63]!,
    )
  )
}

/**
 * The id of a stored change's event: a pure function of what the event is
 * about, so that every relay deriving it, live or from the stored log after
 * a crash or a takeover, and however often, gives the same event the same id
 * (the outboxes and event logs take an id once per document, and receivers
 * de-duplicate on it). `position` is the storage log position of the entry
 * whose change the event reports; `slot` the event's index among the
 * semantic events of that entry (see {@link deriveHookEvents}), or `"u"` for
 * the `document.updated` of a change that starts at `position`.
 *
 * Log positions never repeat within a document: they increase across
 * compaction, fresh epochs, purges and an operator's restore (storage keeps
 * the highest a document ever had), and a document is never dropped. The
 * conversation part is a hash (96 bits of SHA-256) so that ids have one
 * length and alphabet whatever the conversation id; the position and slot
 * are plain (base 36): they say how many changes the conversation had, not
 * what any of them was. Form: `evt_` + 16 characters + `_<position>_<index>`,
 * and `_<position>u` for `document.updated` (no second underscore, so no
 * index can take it).
 */
export function stableEventId(conversationId: string, position: number, slot: number | "u"): string {
  // `document.updated` has no second part: "u" after an underscore was also the 31st event's index
  // (30 in base 36), and two events of one change took one id, one of them dropped as a repeat.
  const at = position.toString(36)
  return `${conversationIdPrefix(conversationId)}${typeof slot === "number" ? `${at}_${slot.toString(36)}` : `${at}${slot}`}`
}

/**
 * The log position of the change whose event `id` is, when `id` is a stable
 * id of conversation `conversationId` ({@link stableEventId}); undefined for
 * any other id (a random one: an event of nothing stored). Relay-internal:
 * receivers are told to treat ids as opaque.
 */
export function eventLogPosition(conversationId: string, id: string): number | undefined {
  const prefix = conversationIdPrefix(conversationId)
  if (!id.startsWith(prefix)) return undefined
  const match = STABLE_TAIL.exec(id.slice(prefix.length))
  return match ? Number.parseInt(match[1]!, 36) : undefined
}

/** What follows the conversation's prefix in a stable id: the position, then `_<slot>` or `u`. */
const STABLE_TAIL = /^([0-9a-z]+)(?:_[0-9a-z]+|u)$/

/**
 * Conversations' id prefixes, by id: the fan-out interleaves many
 * conversations, and one cached prefix was hashed again for nearly every
 * event. Bounded: emptied when full (a prefix is only a hash, computed again).
 */
const prefixes = new Map<string, string>()
const PREFIX_CACHE_SIZE = 4096

function conversationIdPrefix(conversationId: string): string {
  let prefix = prefixes.get(conversationId)
  if (prefix === undefined) {
    const hash = createHash("sha256").update(`parley-event\u0000${conversationId}`).digest("base64url")
    prefix = `evt_${hash.slice(0, 16)}_`
    if (prefixes.size >= PREFIX_CACHE_SIZE) prefixes.clear()
    prefixes.set(conversationId, prefix)
  }
  return prefix
}

/** Each conversation's payload part, by its meta map, until the meta map or the participants change. */
const conversationParts = new WeakMap<object, HookConversation>()
/** Meta maps whose changes drop their cached conversation. */
const watchedMeta = new WeakSet<object>()

/**
 * The conversation part of a payload, read from the document now; undefined
 * before it is created. Frozen, and the same object until the conversation's
 * fields or participants change: every event of every message carries it, and
 * reading it anew per change (and serializing it for the stores, see
 * `storedEventSerializer`) was a visible part of a message's cost.
 */
export function conversationOf(doc: Y.Doc): HookConversation | undefined {
  const meta = typesOf(doc).meta
  // Inside a transaction the maps may have changed without their observers having run yet.
  const cacheable = (doc as unknown as { _transaction: unknown })._transaction === null
  const participants = participantsOf(doc)
  if (cacheable) {
    const cached = conversationParts.get(meta)
    if (cached !== undefined && cached.participants === participants) return cached
  }
  const info = getConversation(doc)
  if (!info) return undefined
  const conversation: HookConversation = Object.freeze({
    id: info.id,
    kind: info.kind,
    title: info.title,
    metadata: info.metadata,
    createdBy: info.createdBy,
    createdAt: info.createdAt,
    ...(info.deletedAt !== undefined ? { deletedAt: info.deletedAt } : {}),
    participants,
  })
  if (cacheable) {
    if (!watchedMeta.has(meta)) {
      watchedMeta.add(meta)
      meta.observe(() => conversationParts.delete(meta))
    }
    conversationParts.set(meta, conversation)
  }
  return conversation
}

/** Each conversation's participants as payloads list them, until they next change (by its participants map). */
const participantLists = new WeakMap<object, readonly Participant[]>()
/** The JSON of each cached list, made once: a big room's message would serialize every member per event. */
const participantListJson = new WeakMap<readonly Participant[], string>()
/** Participants maps whose changes drop their cached list. */
const watched = new WeakSet<object>()

/**
 * `doc`'s participants, sorted as `listParticipants` sorts them, frozen and
 * the same array until the participants change: every event of a 1,000-member
 * room lists them, and copying and sorting them per message was most of what
 * a message cost beyond its storage.
 */
export function participantsOf(doc: Y.Doc): readonly Participant[] {
  const map = typesOf(doc).participants
  // Inside a transaction the map may have changed without its observers having run yet.
  if ((doc as unknown as { _transaction: unknown })._transaction !== null)
    return Object.freeze(listParticipants(doc).map((p) => Object.freeze(p)))
  let list = participantLists.get(map)
  if (list === undefined) {
    if (!watched.has(map)) {
      watched.add(map)
      map.observe(() => participantLists.delete(map))
    }
    list = Object.freeze(listParticipants(doc).map((p) => Object.freeze(p)))
    participantLists.set(map, list)
  }
  return list
}

/** `list` as JSON, made once per list {@link participantsOf} returned (others each time). */
export function participantsJson(list: readonly Participant[]): string {
  let json = participantListJson.get(list)
  if (json === undefined) {
    json = JSON.stringify(list)
    if (Object.isFrozen(list)) participantListJson.set(list, json)
  }
  return json
}

/** Inputs of {@link deriveHookEvents}. */
export interface DeriveInput {
  readonly conversationId: ConversationId
  readonly doc: Y.Doc
  readonly actor: HookActor
  readonly changes: readonly ChangeEvent[]
  /** Log positions of the stored entries the change is made of, in order. */
  readonly positions: readonly number[]
  /**
   * How many of `changes` each entry of `positions` brought, in order (the
   * update path's batches store several entries per change). Absent, or not
   * adding up to `changes.length`: all of them belong to the first entry.
   */
  readonly counts?: readonly number[]
  /** When the relay derives the events: their `time`. */
  readonly now: number
  /** Ids of events of a change stored nowhere (no positions): random by default. */
  readonly newId?: (now: number) => string
}

/**
 * The hook events of one saved change: one per semantic change event, in the
 * order `observeChanges` gives them, then one `document.updated`. Reads the
 * document as it is now (after the change and its sequencing), so call it
 * before the document moves on.
 *
 * Ids are stable ({@link stableEventId}): each semantic event is keyed by the
 * log position of the entry holding its change and its index among that
 * entry's events, so that the live derivation of a change stored as several
 * entries and a recovery that derives them from the log one by one give the
 * same ids; `document.updated` by the change's first position. A change with
 * no positions (nothing stored) gets random ids.
 */
export function deriveHookEvents(input: DeriveInput): HookEvent[] {
  const conversation = conversationOf(input.doc)
  if (!conversation) return []
  const newId = input.newId ?? newEventId
  const out: HookEvent[] = []
  const named = withName(input.actor, input.doc)
  // The changes of each stored entry: `[position, first change, end]`; one run when not told.
  const counts = input.counts
  const split =
    counts !== undefined &&
    counts.length === input.positions.length &&
    counts.reduce((a, b) => a + b, 0) === input.changes.length
  const runs: [position: number | undefined, from: number, to: number][] = []
  if (split)
    for (let k = 0, from = 0; k < counts.length; from += counts[k]!, k++)
      runs.push([input.positions[k], from, from + counts[k]!])
  else runs.push([input.positions[0], 0, input.changes.length])
  let position: number | undefined
  let slot = 0
  const push = <T extends HookEventType>(type: T, subject: HookSubjects[T], id?: string) => {
    const event: HookEventHeader<T> = {
      id:
        id ??
        (position === undefined ? newId(input.now) : stableEventId(input.conversationId, position, slot++)),
      type,
      time: input.now,
      conversationId: input.conversationId,
      actor: named,
    }
    out.push({ event, subject, conversation } as unknown as HookEvent)
  }
  for (const [at, from, to] of runs) {
    position = at
    slot = 0
    // Numbered per entry, as a recovery derives them from the log one entry at a time.
    derivePerChange(input, conversation, from, to, push)
  }
  const first = input.positions[0]
  push(
    "document.updated",
    documentUpdated(input.changes, input.positions),
    first === undefined ? newId(input.now) : stableEventId(input.conversationId, first, "u"),
  )
  return out
}

/** The semantic events of `input.changes[from, to)`, one stored entry's, given to `push` in order. */
function derivePerChange(
  input: DeriveInput,
  conversation: HookConversation,
  from: number,
  to: number,
  push: <T extends HookEventType>(type: T, subject: HookSubjects[T]) => void,
): void {
  // The initial participants belong to the creation, not to a participants.added of their own.
  let creation = false
  for (let k = from; k < to; k++) if (input.changes[k]!.type === "conversation.created") creation = true
  for (let k = from; k < to; k++) {
    const change = input.changes[k]!
    switch (change.type) {
      case "conversation.created":
        push(change.type, {
          createdBy: change.conversation.createdBy,
          participants: conversation.participants,
        })
        break
      case "conversation.updated":
        push(change.type, { fields: change.fields })
        break
      case "conversation.deleted":
        push(change.type, { deletedBy: change.deletedBy })
        break
      case "conversation.reopened":
        push(change.type, { reopenedBy: change.reopenedBy })
        break
      case "participants.added":
        if (!creation) push(change.type, { participants: change.participants })
        break
      case "participants.removed":
        push(change.type, { users: change.users })
        break
      case "participants.roleChanged":
        push(change.type, { changes: change.changes })
        break
      case "message.sent": {
        const view = getMessage(input.doc, change.message.id) ?? viewOf(change.message)
        push(change.type, { message: view })
        break
      }
      case "message.edited": {
        const message = getMessage(input.doc, change.messageId)
        push(change.type, {
          messageId: change.messageId,
          body: change.body,
          editedAt: change.editedAt,
          ...(message ? { message } : {}),
        })
        break
      }
      case "message.deleted":
        push(change.type, { messageId: change.messageId, author: change.author, deletedBy: change.deletedBy })
        break
      case "reaction.added":
      case "reaction.removed":
        push(change.type, { messageId: change.messageId, user: change.user, emoji: change.emoji })
        break
      case "messages.read":
      case "messages.delivered":
        push(change.type, { user: change.user, upTo: change.upTo })
        break
      case "messages.sequenced":
      case "profile.updated":
        break
    }
  }
}

/** `actor` with the display name its user has in `doc`, when there is a user and they set one. */
export function withName(actor: HookActor, doc: Y.Doc): HookActor {
  if (actor.kind === "relay" || actor.kind === "unknown" || actor.user === undefined) return actor
  const name = displayNameOf(doc, actor.user)
  return name === undefined ? actor : { ...actor, name }
}

/**
 * JSON of event subjects, made once for `storedEventSerializer` (which
 * otherwise serializes each subject itself); a function, so that JSON no
 * store asks for is never made.
 */
export const serializedSubjects = new WeakMap<object, () => string>()

/**
 * The form of each `document.updated` subject the event log keeps (see
 * {@link loggedForm}), by the subject handlers receive.
 */
const loggedSubjects = new WeakMap<object, LoggedSubject>()

/** A logged `document.updated` subject. */
type LoggedSubject = { readonly changes: readonly LoggedChange[]; readonly positions: readonly number[] }

/**
 * The subject of `document.updated`: every change of the saved change, as
 * plain JSON. The plain copy handlers see is made (through JSON: change
 * events hold values read from Yjs) only when something reads it (most
 * relays have no handler for this event), and is then an ordinary data
 * property; its JSON for the outbox only when a target wants the event. The
 * event log's lean form (a 2,000-message frame's changes are hundreds of KB,
 * a frame of long bodies a MB) is made and serialized here, once.
 */
function documentUpdated(
  changes: readonly ChangeEvent[],
  positions: readonly number[],
): HookSubjects["document.updated"] {
  let json: string | undefined
  const full = () => {
    json ??= `{"changes":${JSON.stringify(changes)},"positions":${JSON.stringify(positions)}}`
    return json
  }
  const subject = {} as { changes: readonly ChangeEvent[]; positions: readonly number[] }
  parsedOnFirstRead(subject, () => (JSON.parse(full()) as { changes: ChangeEvent[] }).changes)
  subject.positions = positions
  serializedSubjects.set(subject, full)
  const lean = { changes: changes.map(leanChange), positions }
  const leanJson = JSON.stringify(lean)
  // Parsed back, when first read: the log's readers and listeners see plain JSON, as the stored row
  // reads; the log itself only stores `leanJson` (a relay whose log has no listener never parses it).
  const logged = {} as { changes: readonly LoggedChange[]; positions: readonly number[] }
  parsedOnFirstRead(logged, () => (JSON.parse(leanJson) as LoggedSubject).changes)
  // After `changes`: the keys in the order of the stored JSON.
  logged.positions = [...positions]
  serializedSubjects.set(logged, () => leanJson)
  loggedSubjects.set(subject, logged)
  return subject
}

/**
 * A change as the event log's `document.updated` keeps it: a message's
 * content is not repeated, its own event of the same change (`message.sent`,
 * `message.edited`) carries it; the change names the message.
 */
function leanChange(change: ChangeEvent): LoggedChange {
  switch (change.type) {
    case "message.sent":
      return { type: change.type, message: { id: change.message.id } }
    case "message.edited":
      return { type: change.type, messageId: change.messageId, editedAt: change.editedAt }
    default:
      return change
  }
}

/** A change of a logged `document.updated` (see {@link loggedForm}). */
export type LoggedChange =
  | Exclude<ChangeEvent, { type: "message.sent" | "message.edited" }>
  | { readonly type: "message.sent"; readonly message: { readonly id: MessageId } }
  | { readonly type: "message.edited"; readonly messageId: MessageId; readonly editedAt: number }

/**
 * `event` as the event log records it (relay README, "Event log"): the same,
 * except `document.updated`, whose `message.sent` changes hold the message's
 * `id` only and whose `message.edited` changes hold no `body` — the
 * `message.sent` / `message.edited` events of the same change, recorded just
 * before it, carry the content. Hook handlers and the outbox get every change
 * whole.
 */
export function loggedForm(event: HookEvent): HookEvent {
  if (event.event.type !== "document.updated") return event
  let logged = loggedSubjects.get(event.subject)
  if (logged === undefined) {
    // An event not derived here (a test's, one recovered): made lean the same way, when it has changes.
    const subject = event.subject as Partial<HookSubjects["document.updated"]>
    if (!Array.isArray(subject.changes)) return event
    logged = { ...subject, changes: subject.changes.map(leanChange) } as LoggedSubject
  }
  // The log's type is the handlers' (HookEvent): a logged `document.updated` holds LoggedChange entries.
  return { event: event.event, subject: logged, conversation: event.conversation } as unknown as HookEvent
}

/**
 * The writer a change names, for events re-derived from the log, where the
 * session that wrote it is not known. Undefined when the change does not say.
 */
export function writerNamedBy(event: HookEvent): UserId | undefined {
  switch (event.event.type) {
    case "conversation.created":
      return (event.subject as HookSubjects["conversation.created"]).createdBy
    case "conversation.deleted":
      return (event.subject as HookSubjects["conversation.deleted"]).deletedBy
    case "conversation.reopened":
      return (event.subject as HookSubjects["conversation.reopened"]).reopenedBy
    case "message.sent":
      return (event.subject as HookSubjects["message.sent"]).message.author
    case "message.edited":
      return (event.subject as HookSubjects["message.edited"]).message?.author
    case "message.deleted":
      return (event.subject as HookSubjects["message.deleted"]).deletedBy
    case "reaction.added":
    case "reaction.removed":
      return (event.subject as HookSubjects["reaction.added"]).user
    case "messages.read":
    case "messages.delivered":
      return (event.subject as HookSubjects["messages.read"]).user
    default:
      return undefined
  }
}

function viewOf(record: Extract<ChangeEvent, { type: "message.sent" }>["message"]): MessageView {
  return {
    id: record.id,
    author: record.author,
    body: record.body,
    type: record.type ?? "text",
    createdAt: record.createdAt,
    priority: record.priority ?? "normal",
    attachments: record.attachments ?? [],
    metadata: record.metadata ?? {},
    reactions: {},
    ...(record.replyTo !== undefined ? { replyTo: record.replyTo } : {}),
  }
}

/**
 * Gives `target` an enumerable `changes` that `parse` makes on first read and
 * that is then a plain property (as if it had been assigned).
 */
function parsedOnFirstRead<T>(target: { changes: T }, parse: () => T): void {
  Object.defineProperty(target, "changes", {
    enumerable: true,
    configurable: true,
    get() {
      const value = parse()
      Object.defineProperty(target, "changes", {
        value,
        enumerable: true,
        configurable: true,
        writable: true,
      })
      return value
    },
  })
}
