import { type ConversationId, ErrorCode, ParleyError, type UserId } from "@parley/shared"
import { HANDLER_NAMES, type HookEvent, type HookEventType, loggedForm } from "./events.js"

/**
 * One recorded event. `id` is the log's position as a decimal string: it
 * increases with every event the log records (across restarts, never reused),
 * so it serves as an SSE `id:` and as `after` of the next {@link EventLogQuery}.
 */
export interface EventLogEntry {
  readonly id: string
  readonly event: HookEvent
}

/** What {@link EventLogReader.read} returns: entries strictly after `after`, oldest first. */
export interface EventLogQuery {
  /** An entry's `id`: only later entries. Absent: from the oldest retained entry. */
  readonly after?: string
  /** Only this conversation's events. */
  readonly conversation?: ConversationId
  /**
   * Only events of conversations `user` took part in when the event happened
   * (the conversation's participants right after the change). A user who was
   * never a participant gets nothing of that conversation; one removed sees
   * the `participants.removed` that removed them and nothing else after.
   */
  readonly user?: UserId
  /** Only events of these types (empty or absent: every type). */
  readonly types?: readonly HookEventType[]
  /** At most this many entries (1 to {@link MAX_EVENT_LOG_READ}). */
  readonly limit: number
}

/** Largest `limit` of one {@link EventLogReader.read}. */
export const MAX_EVENT_LOG_READ = 1000

/** How long the log keeps events. Both bounds apply: the older goes first. */
export interface EventRetention {
  /** Events older than this (by their `event.time`) are pruned. Default 7 days. */
  readonly maxAgeMs: number
  /** At most this many events are kept; the oldest beyond it are pruned. Default 1,000,000. */
  readonly maxEvents: number
}

/** The documented default retention: 7 days, at most a million events. */
export const DEFAULT_EVENT_RETENTION: EventRetention = {
  maxAgeMs: 7 * 24 * 60 * 60 * 1000,
  maxEvents: 1_000_000,
}

/** How often the relay prunes the log in the background. */
export const EVENT_LOG_PRUNE_INTERVAL_MS = 60_000

/** Called with the entries of every batch the log records in this process, in id order, after they commit. */
export type EventLogListener = (entries: readonly EventLogEntry[]) => void

/**
 * What readers of the event log (the HTTP API's `/v1/events`) may do: read
 * in order with filters, and hear of new entries as they are recorded.
 */
export interface EventLogReader {
  /**
   * Entries after `query.after` matching the filters, oldest first. Rejects
   * with EVENTS_EXPIRED when `after` is older than what the log still holds
   * (events after it were pruned: the reader missed some), and with
   * INVALID_ARGUMENT when `after` is not an id of this log (not a
   * non-negative integer, or beyond the newest id).
   */
  read(query: EventLogQuery): Promise<EventLogEntry[]>
  /** The newest id recorded, or "0" when none ever was: a stream "from now" starts after it. */
  latest(): Promise<string>
  /**
   * Hears of every entry this process records from now on (entries recorded by
   * other relays sharing the database are seen by `read` only). Returns the
   * unsubscribe function. A listener that throws is ignored.
   */
  subscribe(listener: EventLogListener): () => void
}

/**
 * The durable log of hook events behind `GET /v1/events`. The outbox writes
 * to it: `Outbox.enqueue` records every event of its batch here in the same
 * transaction as the deliveries and the watermark, so a restart neither loses
 * nor repeats an event. Part of every backend (memory, SQLite, PostgreSQL);
 * all pass `relay/test/conformance/event-log.ts`.
 *
 * `typing.started` is not recorded (it is not durable anywhere).
 */
export interface EventLog extends EventLogReader {
  /**
   * Drops the oldest entries beyond `retention` as of `now` (always a prefix:
   * every entry after the newest dropped one stays); returns how many. An
   * aborted `signal` stops it between two batches (what was dropped stays dropped).
   */
  prune(retention: EventRetention, now?: number, signal?: AbortSignal): Promise<number>
  close(): Promise<void>
}

/** The error of a read whose `after` lies before the retained entries. */
export const eventsExpired = (after: string, oldest: string): ParleyError =>
  new ParleyError(
    ErrorCode.EVENTS_EXPIRED,
    `events after ${after} are no longer kept (the log holds those after ${oldest}); start again from the latest`,
  )

/**
 * Checks a read's `after` (already parsed) against the log: EVENTS_EXPIRED
 * before `prunedThrough` (the newest id pruned), INVALID_ARGUMENT beyond `latest`.
 */
export function checkAfter(after: number, prunedThrough: number, latest: number): void {
  if (after < prunedThrough) throw eventsExpired(String(after), String(prunedThrough))
  if (after > latest)
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `unknown event id ${after}: the newest is ${latest}`)
}

/** Parses a query's `after`: a non-negative integer id, else INVALID_ARGUMENT. */
export function parseEventId(after: string | undefined): number {
  if (after === undefined) return 0
  if (!/^(0|[1-9][0-9]{0,15})$/.test(after) || !Number.isSafeInteger(Number(after)))
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `not an event id: ${JSON.stringify(after.slice(0, 40))}`,
    )
  return Number(after)
}

/** Checks a query's `limit`, else INVALID_ARGUMENT. */
export function checkLimit(limit: number): number {
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_EVENT_LOG_READ)
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `limit must be 1 to ${MAX_EVENT_LOG_READ}`)
  return limit
}

/** Events one prune deletes per transaction. */
export const PRUNE_BATCH = 5000

const EVENT_TYPES = new Set<string>(Object.keys(HANDLER_NAMES))

/** Checks a query's `types` (each a known event type), else INVALID_ARGUMENT; returns them without repeats. */
export function checkTypes(types: readonly string[] | undefined): HookEventType[] {
  const unique = [...new Set(types ?? [])]
  for (const type of unique)
    if (!EVENT_TYPES.has(type))
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `not an event type: ${JSON.stringify(type.slice(0, 40))}`,
      )
  return unique as HookEventType[]
}

/** Who may see `event` through a user filter: the conversation's participants right after it. */
export const audienceOf = (event: HookEvent): UserId[] => [
  ...new Set(event.conversation.participants.map((p) => p.user)),
]

/**
 * The users a `participants.removed` event removed: they see that event (a
 * backend mirroring a user's conversations through `user=` learns they left),
 * and nothing of the conversation after it.
 */
export const witnessesOf = (event: HookEvent): UserId[] => {
  if (event.event.type !== "participants.removed") return []
  const audience = new Set(audienceOf(event))
  return (event.subject as { users: readonly UserId[] }).users.filter((user) => !audience.has(user))
}

/**
 * `entry` as a reader filtering by `user` gets it: the event of their own
 * removal without the conversation as the change left it (its title,
 * metadata and members are no longer theirs to see: an owner removing them
 * and renaming it in one change showed them the new title), only its id,
 * kind, creator and creation time.
 */
export function asSeenBy(user: UserId | undefined, entry: EventLogEntry): EventLogEntry {
  if (user === undefined || !witnessesOf(entry.event).includes(user)) return entry
  const { id, kind, createdBy, createdAt } = entry.event.conversation
  const conversation = { id, kind, createdBy, createdAt, title: "", metadata: {}, participants: [] }
  return { ...entry, event: { ...entry.event, conversation } as HookEvent }
}

/** Where a user's membership of a conversation starts or ends, in the log's ids. */
export interface MembershipChanges {
  /** From this id on (inclusive) the user sees the conversation's events. */
  readonly opened: { readonly conversation: string; readonly user: UserId; readonly from: number }[]
  /** Up to this id (inclusive) the user saw them; nothing after. */
  readonly closed: { readonly conversation: string; readonly user: UserId; readonly to: number }[]
  /** The user sees this one event of the conversation (their removal: see {@link witnessesOf}). */
  readonly witnessed: { readonly conversation: string; readonly user: UserId; readonly at: number }[]
}

/**
 * The participants list (by identity: `participantsOf` keeps one per
 * conversation until its participants change) each open-members set was last
 * made equal to: a message in a big room then costs no pass over its members.
 * Keyed by the set, so a set read again from storage starts afresh.
 */
const appliedAudience = new WeakMap<Set<UserId>, readonly unknown[]>()

/**
 * The membership intervals a batch of newly recorded events opens and
 * closes. Each event's audience is its conversation's participants right
 * after it; storing the intervals instead of one row per event and
 * participant keeps a large group's message one row, not hundreds.
 * `open` holds each conversation's currently open members (loaded by the
 * caller for every conversation in `entries`) and is updated in place.
 */
export function membershipChanges(
  open: Map<string, Set<UserId>>,
  entries: readonly { readonly id: number; readonly event: HookEvent }[],
): MembershipChanges {
  const opened: MembershipChanges["opened"] = []
  const closed: MembershipChanges["closed"] = []
  const witnessed: MembershipChanges["witnessed"] = []
  // The events of one change share one conversation object: its audience is applied once, not per event.
  const applied = new Map<string, HookEvent["conversation"]>()
  for (const { id, event } of entries) {
    const conversation = event.event.conversationId
    for (const user of witnessesOf(event)) witnessed.push({ conversation, user, at: id })
    if (applied.get(conversation) === event.conversation && open.has(conversation)) continue
    applied.set(conversation, event.conversation)
    const members = open.get(conversation) ?? new Set<UserId>()
    open.set(conversation, members)
    // The same participants list as last applied to this set (unchanged since): nothing opens or closes.
    if (appliedAudience.get(members) === event.conversation.participants) continue
    appliedAudience.set(members, event.conversation.participants)
    const now = new Set(audienceOf(event))
    for (const user of members)
      if (!now.has(user)) {
        closed.push({ conversation, user, to: id - 1 })
        members.delete(user)
      }
    for (const user of now)
      if (!members.has(user)) {
        opened.push({ conversation, user, from: id })
        members.add(user)
      }
  }
  return { opened, closed, witnessed }
}

/**
 * The ids of `events` (those the log keeps) by conversation, for a store to
 * look up which it holds already (see {@link withoutRecorded}).
 */
export function idsByConversation(events: readonly { readonly event: HookEvent }[]): Map<string, string[]> {
  const byConversation = new Map<string, string[]>()
  for (const { event } of events) {
    if (!isLogged(event)) continue
    const conversation = event.event.conversationId as string
    const ids = byConversation.get(conversation)
    if (ids) ids.push(event.event.id)
    else byConversation.set(conversation, [event.event.id])
  }
  return byConversation
}

/**
 * `events` without those whose id `known` (by conversation, from
 * {@link idsByConversation}) says the log holds already, nor a repeat of an
 * id earlier in `events`. Event ids are stable (`stableEventId`): a backlog
 * that two relays derived, or a record tried again after a commit whose
 * outcome was unknown, names the same events with the same ids, and each is
 * recorded, and delivered, once. Events the log does not keep
 * (`typing.started`) are never dropped. `known`'s sets are added to. A
 * repeat within `events` itself is an id collision, not a copy: it is
 * dropped all the same, with a process warning (`PARLEY_EVENT_ID_REPEAT`).
 */
export function withoutRecorded<E extends { readonly event: HookEvent }>(
  events: readonly E[],
  known: ReadonlyMap<string, Set<string>>,
): E[] {
  const inBatch = new Set<string>()
  return events.filter(({ event }) => {
    if (!isLogged(event)) return true
    let ids = known.get(event.event.conversationId)
    if (!ids) {
      ids = new Set()
      ;(known as Map<string, Set<string>>).set(event.event.conversationId, ids)
    }
    if (ids.has(event.event.id)) {
      // Two events of one batch under one id are two different events (a batch derives each once): an id
      // collision, which once dropped a change's 31st event quietly. Still recorded once; said aloud.
      // (An id names its conversation already: `stableEventId`.)
      if (inBatch.has(event.event.id)) warnRepeat(event)
      return false
    }
    ids.add(event.event.id)
    inBatch.add(event.event.id)
    return true
  })
}

function warnRepeat(event: HookEvent): void {
  process.emitWarning(
    `hook event ${event.event.id} (${event.event.type}) of conversation ${event.event.conversationId} repeats an id earlier in the same batch: only the first is recorded`,
    { code: "PARLEY_EVENT_ID_REPEAT" },
  )
}

/** True for events the log records (all but the ephemeral `typing.started`). */
export const isLogged = (event: HookEvent): boolean => event.event.type !== "typing.started"

/**
 * The message whose content a logged event holds (`message.sent`,
 * `message.edited`), or null: the logs' `message` column, indexed with the
 * conversation. A message's content is logged in its own events only (the
 * log's `document.updated` names messages without their content, see
 * `loggedForm`), so purging a deleted message reads only its rows, however
 * long the conversation's log is.
 */
export function messageOf(event: HookEvent): string | null {
  if (event.event.type !== "message.sent" && event.event.type !== "message.edited") return null
  const subject = event.subject as { message?: { id?: unknown }; messageId?: unknown }
  const id = subject.message?.id ?? subject.messageId
  return typeof id === "string" ? id : null
}

/**
 * What an older log's row needs for the `message` column (see `messageOf`):
 * its message, or, for a `document.updated` an earlier relay logged whole,
 * its lean payload; undefined for a payload that is not JSON (left alone).
 */
export function messageColumnUpgrade(
  type: string,
  payload: string,
): { readonly payload: string } | { readonly message: string | null } | undefined {
  let event: HookEvent
  try {
    event = JSON.parse(payload) as HookEvent
  } catch {
    return undefined
  }
  return type === "document.updated"
    ? { payload: JSON.stringify(loggedForm(event)) }
    : { message: messageOf(event) }
}

/** The listeners of one log, each called in turn; one that throws does not stop the others. */
export class EventLogListeners {
  private readonly listeners = new Set<EventLogListener>()

  subscribe(listener: EventLogListener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  emit(entries: readonly EventLogEntry[]): void {
    if (entries.length === 0) return
    for (const listener of this.listeners) {
      try {
        listener(entries)
      } catch {
        // A reader's bug must not stop the writer or the other readers.
      }
    }
  }
}
