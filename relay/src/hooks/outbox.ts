import type { HookEvent } from "./events.js"
import { MemoryEventLog } from "./memory-event-log.js"

/** One event owed to one target (a hook module or a webhook URL). */
export interface Delivery {
  /** Outbox order: increases with every enqueued event. */
  readonly seq: number
  readonly document: string
  readonly target: string
  readonly event: HookEvent
  /** Failed attempts so far. */
  readonly attempts: number
  /** Not before this time (ms since epoch); 0 = now. */
  readonly nextAttemptAt: number
  readonly lastError?: string
}

/** A delivery that failed too often (or permanently) and waits for an operator. */
export interface DeadLetter extends Delivery {
  readonly lastError: string
  readonly deadAt: number
}

/** A dead letter as operators see it (admin endpoint, CLI): plain JSON without the event body. */
export function describeDeadLetter(d: DeadLetter) {
  return {
    eventId: d.event.event.id,
    type: d.event.event.type,
    document: d.document,
    target: d.target,
    attempts: d.attempts,
    lastError: d.lastError,
    deadAt: new Date(d.deadAt).toISOString(),
  }
}

/** Which dead letters to replay: all, or those matching every given field. */
export interface DeadLetterFilter {
  readonly eventId?: string
  readonly target?: string
  readonly document?: string
}

/** The deliveries of one target for one document: delivered in order, one at a time. */
export interface OutboxLane {
  readonly document: string
  readonly target: string
}

/**
 * Events to record for one document, each with the targets that must receive
 * it (none: the event goes to the event log only).
 */
export interface OutboxBatch {
  readonly document: string
  readonly events: readonly { readonly event: HookEvent; readonly targets: readonly string[] }[]
  /**
   * The storage log position through which this document's events are now
   * recorded; saved in the same transaction as the events. Only ever moves forward.
   */
  readonly through?: number
}

/**
 * The durable queue between saved changes and their hooks. `enqueue` is atomic:
 * the events (in the backend's event log, see `EventLog`), their deliveries
 * and the document's watermark are recorded together or not at all. A part of every backend (memory, SQLite, PostgreSQL); all pass
 * `relay/test/conformance/backend.ts`.
 */
export interface Outbox {
  /**
   * True when enqueues made one after another without waiting are recorded
   * in the order they were made (and resolve in it): the caller may then
   * start the next before the last one is committed, and the outbox writes
   * those of one tick together.
   */
  readonly ordersEnqueues?: boolean
  /**
   * Records `batch` (see the interface) and resolves with the deliveries it
   * added. An event whose id the event log holds already for its
   * conversation (or that repeats one earlier in the batch) is skipped:
   * neither logged nor owed again, checked in the same transaction. Event ids
   * are stable (`stableEventId`), so a backlog recorded twice (two relays, a
   * retry after a commit whose outcome was unknown) adds nothing the second
   * time; the watermark still moves. Only ids the log still holds count: an
   * event pruned from it (see `EventRetention`) would be taken again.
   */
  enqueue(batch: OutboxBatch): Promise<Delivery[]>
  /** Log position through which `document`'s events are recorded; undefined when never set. */
  watermark(document: string): Promise<number | undefined>
  /**
   * Documents whose stored log holds an entry past their watermark: changes
   * saved whose events a crash kept from being recorded (and, with them, any
   * message saved but not yet numbered: the update path stores a message and
   * its number in one commit, so such a message is always past the watermark).
   * Sorted by name. Documents without a watermark (never loaded with hooks)
   * are not listed. Only the log counts, not a snapshot: loading a document
   * derives events from log entries past the watermark, and a snapshot past
   * it (an operator's restore) holds no entries to derive them from.
   */
  behind(): Promise<string[]>
  /** Deliveries still owed, in `seq` order; only `document`'s when given (a relay taking a document over). */
  pending(document?: string): Promise<Delivery[]>
  /**
   * The documents with at least one delivery still owed (dead letters do not
   * count), sorted by name: what {@link pending} would list, without loading
   * the deliveries and their events (a cluster asks every few seconds).
   */
  pendingDocuments(): Promise<string[]>
  /**
   * The lanes (document and target) with at least one delivery still owed,
   * sorted by document then target; only `document`'s when given. What a
   * dispatcher pages its backlog by, without loading the deliveries.
   */
  pendingLanes(document?: string): Promise<OutboxLane[]>
  /**
   * Deliveries still owed to `target` for `document` whose `seq` is greater
   * than `after`, in `seq` order, at most `limit`: one page of a lane's
   * backlog (a dispatcher holds only a bounded window of it in memory).
   */
  pendingPage(document: string, target: string, after: number, limit: number): Promise<Delivery[]>
  /** Removes a delivery that succeeded. */
  delivered(seq: number, target: string): Promise<void>
  /** Records a failed attempt and when to try again. */
  retryLater(
    seq: number,
    target: string,
    attempts: number,
    nextAttemptAt: number,
    error: string,
  ): Promise<void>
  /** Moves a delivery to the dead letters. */
  deadLetter(seq: number, target: string, attempts: number, error: string, at: number): Promise<void>
  deadLetters(): Promise<DeadLetter[]>
  /** Moves matching dead letters back to pending with a fresh attempt count; returns them. */
  replay(filter?: DeadLetterFilter): Promise<Delivery[]>
  close(): Promise<void>
}

type Row = { -readonly [K in keyof DeadLetter]?: DeadLetter[K] } & Delivery & { dead: boolean }

/** True when `delivery` is one `filter` picks (every given field matches). */
export const matchesFilter = (d: Delivery, f: DeadLetterFilter): boolean =>
  (f.eventId === undefined || d.event.event.id === f.eventId) &&
  (f.target === undefined || d.target === f.target) &&
  (f.document === undefined || d.document === f.document)

const key = (seq: number, target: string) => `${seq}\u0000${target}`

/** An outbox in memory: for tests and `--storage memory`; gone with the process. */
export class MemoryOutbox implements Outbox {
  private readonly rows = new Map<string, Row>()
  private readonly marks = new Map<string, number>()
  private seq = 0

  /**
   * `events`: the log `enqueue` records every event in (the backend's).
   * `lastLogPosition`: the highest log entry stored of a document (the
   * backend's documents), for {@link behind}; without it no document is behind.
   */
  constructor(
    readonly events: MemoryEventLog = new MemoryEventLog(),
    private readonly lastLogPosition: (document: string) => number | undefined = () => undefined,
  ) {}

  async enqueue(batch: OutboxBatch): Promise<Delivery[]> {
    const out: Delivery[] = []
    // An event recorded already (the same id: a backlog another relay recorded) is neither logged nor owed again.
    const fresh = this.events.unrecorded(batch.events)
    const logged = this.events.record(fresh.map((e) => e.event))
    for (const { event, targets } of fresh) {
      if (targets.length === 0) continue
      const seq = ++this.seq
      for (const target of targets) {
        const row: Row = {
          seq,
          document: batch.document,
          target,
          event,
          attempts: 0,
          nextAttemptAt: 0,
          dead: false,
        }
        this.rows.set(key(seq, target), row)
        out.push(strip(row))
      }
    }
    if (batch.through !== undefined)
      this.marks.set(batch.document, Math.max(batch.through, this.marks.get(batch.document) ?? 0))
    this.events.published(logged)
    return out
  }

  async watermark(document: string): Promise<number | undefined> {
    return this.marks.get(document)
  }

  async behind(): Promise<string[]> {
    return [...this.marks]
      .filter(([document, through]) => (this.lastLogPosition(document) ?? 0) > through)
      .map(([document]) => document)
      .sort()
  }

  async pending(document?: string): Promise<Delivery[]> {
    return [...this.rows.values()]
      .filter((r) => !r.dead && (document === undefined || r.document === document))
      .sort(bySeq)
      .map(strip)
  }

  async pendingDocuments(): Promise<string[]> {
    const documents = new Set<string>()
    for (const row of this.rows.values()) if (!row.dead) documents.add(row.document)
    return [...documents].sort()
  }

  async pendingLanes(document?: string): Promise<OutboxLane[]> {
    const lanes = new Map<string, OutboxLane>()
    for (const row of this.rows.values())
      if (!row.dead && (document === undefined || row.document === document))
        lanes.set(`${row.document}\u0000${row.target}`, { document: row.document, target: row.target })
    return [...lanes.values()].sort(byLane)
  }

  async pendingPage(document: string, target: string, after: number, limit: number): Promise<Delivery[]> {
    return [...this.rows.values()]
      .filter((r) => !r.dead && r.document === document && r.target === target && r.seq > after)
      .sort(bySeq)
      .slice(0, limit)
      .map(strip)
  }

  async delivered(seq: number, target: string): Promise<void> {
    this.rows.delete(key(seq, target))
  }

  /** Rewrites the events of `document` still held (pending or dead) with `rewrite` (a purge's redaction). */
  rewriteEvents(document: string, rewrite: (event: HookEvent) => HookEvent): void {
    for (const [k, row] of this.rows)
      if (row.document === document) this.rows.set(k, { ...row, event: rewrite(row.event) })
  }

  async retryLater(seq: number, target: string, attempts: number, nextAttemptAt: number, error: string) {
    const row = this.rows.get(key(seq, target))
    if (row) this.rows.set(key(seq, target), { ...row, attempts, nextAttemptAt, lastError: error })
  }

  async deadLetter(seq: number, target: string, attempts: number, error: string, at: number) {
    const row = this.rows.get(key(seq, target))
    if (row) this.rows.set(key(seq, target), { ...row, attempts, lastError: error, deadAt: at, dead: true })
  }

  async deadLetters(): Promise<DeadLetter[]> {
    return [...this.rows.values()]
      .filter((r) => r.dead)
      .sort(bySeq)
      .map((r) => ({ ...strip(r), lastError: r.lastError ?? "", deadAt: r.deadAt ?? 0 }))
  }

  async replay(filter: DeadLetterFilter = {}): Promise<Delivery[]> {
    const out: Delivery[] = []
    for (const [k, row] of this.rows) {
      if (!row.dead || !matchesFilter(row, filter)) continue
      const fresh: Row = { ...strip(row), attempts: 0, nextAttemptAt: 0, dead: false }
      this.rows.set(k, fresh)
      out.push(strip(fresh))
    }
    return out.sort(bySeq)
  }

  async close(): Promise<void> {}
}

/** Document, then target, by code unit (as SQLite and PostgreSQL's `COLLATE "C"` sort). */
export const byLane = (a: OutboxLane, b: OutboxLane): number =>
  a.document < b.document
    ? -1
    : a.document > b.document
      ? 1
      : a.target < b.target
        ? -1
        : a.target > b.target
          ? 1
          : 0

const bySeq = (a: Delivery, b: Delivery) => a.seq - b.seq || (a.target < b.target ? -1 : 1)

function strip(row: Row): Delivery {
  return {
    seq: row.seq,
    document: row.document,
    target: row.target,
    event: row.event,
    attempts: row.attempts,
    nextAttemptAt: row.nextAttemptAt,
    ...(row.lastError !== undefined ? { lastError: row.lastError } : {}),
  }
}

/**
 * The rule of an outbox's refusal to record a document's events for a relay
 * that no longer orders it (a cluster: another relay claimed the document
 * since). Not retried: the document's new owner derives those events from
 * the stored log past the watermark, which the refused record did not move.
 */
export const NOT_RECORDER = "not-recorder"
