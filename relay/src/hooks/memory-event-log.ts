import type { UserId } from "@parley/shared"
import {
  asSeenBy,
  audienceOf,
  checkAfter,
  checkLimit,
  checkTypes,
  type EventLog,
  type EventLogEntry,
  type EventLogListener,
  EventLogListeners,
  type EventLogQuery,
  type EventRetention,
  idsByConversation,
  isLogged,
  messageOf,
  parseEventId,
  withoutRecorded,
  witnessesOf,
} from "./event-log.js"
import { type HookEvent, loggedForm } from "./events.js"

interface Row {
  readonly id: number
  readonly event: HookEvent
  readonly audience: ReadonlySet<UserId>
}

/** An event log in memory, written by `MemoryOutbox`: for tests and `--storage memory`; gone with the process. */
export class MemoryEventLog implements EventLog {
  private rows: Row[] = []
  private last = 0
  private prunedThrough = 0
  private readonly listeners = new EventLogListeners()
  /** The event ids each conversation's retained rows hold: an id is recorded once (see `withoutRecorded`). */
  private readonly ids = new Map<string, Set<string>>()

  /**
   * `batch` without the events whose id this log holds already for their
   * conversation, or that repeat one earlier in `batch`: the outbox records
   * and delivers only those.
   */
  unrecorded<E extends { readonly event: HookEvent }>(batch: readonly E[]): E[] {
    const known = new Map<string, Set<string>>()
    for (const [conversation, ids] of idsByConversation(batch)) {
      const held = this.ids.get(conversation)
      known.set(conversation, new Set(held ? ids.filter((id) => held.has(id)) : []))
    }
    return withoutRecorded(batch, known)
  }

  /** Records `events` (those the log keeps) and tells the listeners; the outbox calls it inside its enqueue. */
  record(events: readonly HookEvent[]): EventLogEntry[] {
    const entries: EventLogEntry[] = []
    for (const original of events) {
      if (!isLogged(original)) continue
      const event = loggedForm(original)
      const id = ++this.last
      this.rows.push({ id, event, audience: new Set([...audienceOf(event), ...witnessesOf(event)]) })
      let held = this.ids.get(event.event.conversationId)
      if (!held) {
        held = new Set()
        this.ids.set(event.event.conversationId, held)
      }
      held.add(event.event.id)
      entries.push({ id: String(id), event })
    }
    return entries
  }

  /**
   * Rewrites the logged events of conversation `conversationId` with `rewrite`
   * (a purge's redaction); only the events about one of `messages` when given
   * (a message's content is logged in its own events only, see `messageOf`).
   */
  rewriteEvents(
    conversationId: string,
    rewrite: (event: HookEvent) => HookEvent,
    messages?: ReadonlySet<string>,
  ): void {
    for (let i = 0; i < this.rows.length; i++) {
      const row = this.rows[i]!
      if (row.event.event.conversationId !== conversationId) continue
      if (messages && !messages.has(messageOf(row.event) ?? "")) continue
      this.rows[i] = { ...row, event: rewrite(row.event) }
    }
  }

  /** Tells the listeners of entries `record` returned, once their enqueue is complete. */
  published(entries: readonly EventLogEntry[]): void {
    this.listeners.emit(entries)
  }

  async read(query: EventLogQuery): Promise<EventLogEntry[]> {
    const after = parseEventId(query.after)
    const limit = checkLimit(query.limit)
    if (query.after !== undefined) checkAfter(after, this.prunedThrough, this.last)
    const checked = checkTypes(query.types)
    const types = checked.length > 0 ? new Set<string>(checked) : undefined
    const out: EventLogEntry[] = []
    for (const row of this.rows) {
      if (row.id <= after) continue
      if (query.conversation !== undefined && row.event.event.conversationId !== query.conversation) continue
      if (query.user !== undefined && !row.audience.has(query.user)) continue
      if (types && !types.has(row.event.event.type)) continue
      out.push(asSeenBy(query.user, { id: String(row.id), event: row.event }))
      if (out.length === limit) break
    }
    return out
  }

  async latest(): Promise<string> {
    return String(this.last)
  }

  subscribe(listener: EventLogListener): () => void {
    return this.listeners.subscribe(listener)
  }

  async prune(retention: EventRetention, now: number = Date.now(), _signal?: AbortSignal): Promise<number> {
    const cutoff = now - retention.maxAgeMs
    let through = this.last - retention.maxEvents
    for (const row of this.rows) if (row.event.event.time < cutoff) through = Math.max(through, row.id)
    const before = this.rows.length
    for (const row of this.rows)
      if (row.id <= through) this.ids.get(row.event.event.conversationId)?.delete(row.event.event.id)
    this.rows = this.rows.filter((row) => row.id > through)
    this.prunedThrough = Math.max(this.prunedThrough, through)
    return before - this.rows.length
  }

  async close(): Promise<void> {}
}
