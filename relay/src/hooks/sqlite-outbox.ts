import type { Participant } from "@parley/shared"
import type Database from "better-sqlite3"
import { withoutSync } from "../storage/wal-sync.js"
import type { EventLogEntry } from "./event-log.js"
import { rehydrate, storedEventSerializer } from "./member-lists.js"
import {
  byLane,
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  matchesFilter,
  type Outbox,
  type OutboxBatch,
  type OutboxLane,
} from "./outbox.js"
import { SqliteEventLog } from "./sqlite-event-log.js"

type WriteRows = (
  enqueues: readonly PendingEnqueue[],
  marks: readonly { seq: number; target: string }[],
) => { deliveries: Delivery[][]; logged: EventLogEntry[] }

/** An enqueue waiting for the outbox's next write. */
interface PendingEnqueue {
  readonly batch: OutboxBatch
  readonly resolve: (deliveries: Delivery[]) => void
  readonly reject: (error: unknown) => void
}

/** Longest enqueues wait for a documents' commit to ride in (see `SqliteOutbox.scheduleFlush`). */
const ENQUEUE_WAIT_MS = 10

/** Longest delivered marks alone wait for a documents' commit to ride in. */
const MARKS_WAIT_MS = 200

/** Enqueues or marks written at the end of the turn without waiting longer (a dispatcher lane stops at 256 unwritten marks). */
const ROWS_AT_ONCE = 128

/** Events whose rows ride in one documents' commit at most (more when one change alone has more). */
const EVENTS_PER_RIDE = 1_000

const SCHEMA = `
CREATE TABLE IF NOT EXISTS hook_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  document TEXT NOT NULL,
  payload TEXT NOT NULL,
  owed TEXT
);
CREATE TABLE IF NOT EXISTS hook_deliveries (
  seq INTEGER NOT NULL REFERENCES hook_events(seq),
  target TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_at INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  dead_at INTEGER,
  PRIMARY KEY (seq, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hook_watermarks (
  document TEXT PRIMARY KEY,
  through INTEGER NOT NULL
) WITHOUT ROWID;
`

interface DeliveryRow {
  seq: number
  document: string
  payload: string
  members: string | null
  target: string
  attempts: number
  next_at: number
  last_error: string | null
  dead_at: number | null
}

const SELECT = `SELECT d.seq, e.document, e.payload, e.members, d.target, d.attempts, d.next_at, d.last_error, d.dead_at
  FROM hook_deliveries d JOIN hook_events e ON e.seq = d.seq`

/** An event still owed to targets never tried (its `owed` column). */
interface OwedRow {
  seq: number
  document: string
  payload: string
  members: string | null
  owed: string
}

const SELECT_OWED = "SELECT seq, document, payload, members, owed FROM hook_events WHERE owed IS NOT NULL"

/** The targets an `owed` column holds (NULL: none). */
const parseOwed = (owed: string | null | undefined): readonly string[] =>
  owed == null ? [] : (JSON.parse(owed) as string[])

/** The `owed` column for `targets` (none: NULL, so that `owed IS NOT NULL` lists exactly the events owed). */
const owedColumn = (targets: readonly string[]): string | null =>
  targets.length === 0 ? null : JSON.stringify(targets)

/**
 * The durable outbox of the SQLite backend: tables `hook_*` in the relay's
 * database (WAL mode). An event's row holds the targets still owed it that
 * were never tried (`owed`, a JSON array): one row written and one deleted
 * per event when its deliveries succeed at the first attempt, the common
 * case. A delivery that failed (retried, dead) moves to a row of its own in
 * `hook_deliveries`, which keeps its attempts and error; rows of earlier
 * versions (every target a delivery row, `owed` NULL) read the same way. Its commits run with `synchronous=NORMAL`: every
 * commit survives a crash of the relay process, and costs no fsync on the
 * event loop (the next fsync'd commit of the documents carries it to disk
 * too). A power loss may lose the newest commits, but events and the
 * document's watermark are written in one transaction, so a lost tail only
 * moves the watermark back, and the relay re-derives those events from the
 * storage log (which is fsync'd). Compaction needs no flush first: it is a
 * later commit to the same write-ahead log, which SQLite replays in order, so
 * no compaction survives a power loss that the events before it did not.
 *
 * Writes are batched: enqueues and delivered marks of one tick share one
 * transaction, and when the documents' storage has an append due (a busy
 * relay: nearly always), they ride in that append's transaction instead of
 * committing on their own ({@link ride}; fsync'd with it, at no extra cost).
 */
export class SqliteOutbox implements Outbox {
  private readonly statements
  private readonly writeBatch: WriteRows
  /** The same, without a commit of its own: a savepoint inside the documents' append transaction. */
  private readonly writeRows: WriteRows
  private commitDue: () => boolean = () => false
  private deliveredMarks: {
    seq: number
    target: string
    resolve: () => void
    reject: (error: unknown) => void
  }[] = []
  private enqueues: PendingEnqueue[] = []
  private flushScheduled = false
  /** Set while pending rows wait for a ride (see {@link scheduleFlush}), and when it fires. */
  private waitTimer: NodeJS.Timeout | undefined
  private waitDue = 0

  /**
   * The `owed` column of events this outbox wrote (or updated) since the last
   * rollback, by seq: spares reading it back for each delivered mark. Only
   * this outbox writes `owed` (the dead-letter CLI and the purge touch
   * delivery rows and payloads); a missing entry is read from the table.
   * Cleared whenever a write rolls back, since it may then be ahead of the table.
   */
  private readonly owed = new Map<number, readonly string[]>()

  /** Enqueues not awaited one by one are recorded in call order (see {@link Outbox.ordersEnqueues}). */
  readonly ordersEnqueues = true

  private closed = false

  /**
   * `db` is the backend's connection (WAL mode); the outbox creates its tables
   * in it. `events`, on the same connection, is the log every enqueue records its events in.
   */
  constructor(
    private readonly db: Database.Database,
    private readonly events: SqliteEventLog = new SqliteEventLog(db),
  ) {
    this.db.exec(SCHEMA)
    // A database of an earlier version: its events' targets are all delivery rows (`owed` NULL).
    const columns = this.db.prepare("PRAGMA table_info(hook_events)").all() as { name: string }[]
    if (!columns.some((c) => c.name === "owed")) this.db.exec("ALTER TABLE hook_events ADD COLUMN owed TEXT")
    // A lane's next page (`pendingPage`) seeks its document's owed events from its cursor, instead of
    // reading every document's events after it. Partial: an event leaves it once every target has it.
    this.db.exec(
      "CREATE INDEX IF NOT EXISTS hook_events_owed_by_document ON hook_events (document, seq) WHERE owed IS NOT NULL",
    )
    this.events.memberLists.adopt("hook_events")
    this.statements = {
      insertEvent: this.db.prepare<[string, string, string | null, string | null], unknown>(
        "INSERT INTO hook_events (document, payload, members, owed) VALUES (?, ?, ?, ?)",
      ),
      insertDelivery: this.db.prepare<[number | bigint, string], unknown>(
        "INSERT OR IGNORE INTO hook_deliveries (seq, target) VALUES (?, ?)",
      ),
      owedOf: this.db.prepare<[number], string | null>("SELECT owed FROM hook_events WHERE seq = ?").pluck(),
      setOwed: this.db.prepare<[string | null, number], unknown>(
        "UPDATE hook_events SET owed = ? WHERE seq = ?",
      ),
      owed: this.db.prepare<[], OwedRow>(SELECT_OWED),
      owedOfDocument: this.db.prepare<[string], OwedRow>(`${SELECT_OWED} AND document = ?`),
      setWatermark: this.db.prepare<[string, number], unknown>(
        "INSERT INTO hook_watermarks (document, through) VALUES (?, ?) ON CONFLICT(document) DO UPDATE SET through = MAX(through, excluded.through)",
      ),
      watermark: this.db.prepare<[string], { through: number }>(
        "SELECT through FROM hook_watermarks WHERE document = ?",
      ),
      pending: this.db.prepare<[], DeliveryRow>(`${SELECT} WHERE d.dead_at IS NULL ORDER BY d.seq, d.target`),
      pendingOf: this.db.prepare<[string], DeliveryRow>(
        `${SELECT} WHERE d.dead_at IS NULL AND e.document = ? ORDER BY d.seq, d.target`,
      ),
      dead: this.db.prepare<[], DeliveryRow>(
        `${SELECT} WHERE d.dead_at IS NOT NULL ORDER BY d.seq, d.target`,
      ),
      remove: this.db.prepare<[number, string], unknown>(
        "DELETE FROM hook_deliveries WHERE seq = ? AND target = ?",
      ),
      /** Run only once the event owes no never-tried target (`owed` empty or about to be): it does not look at `owed`. */
      removeEventIfDone: this.db.prepare<[number, number], unknown>(
        "DELETE FROM hook_events WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM hook_deliveries WHERE seq = ?)",
      ),
      retry: this.db.prepare<[number, number, string, number, string], unknown>(
        "UPDATE hook_deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ? AND target = ?",
      ),
      kill: this.db.prepare<[number, string, number, number, string], unknown>(
        "UPDATE hook_deliveries SET attempts = ?, last_error = ?, dead_at = ? WHERE seq = ? AND target = ?",
      ),
      revive: this.db.prepare<[number, string], unknown>(
        "UPDATE hook_deliveries SET attempts = 0, next_at = 0, dead_at = NULL WHERE seq = ? AND target = ?",
      ),
    }
    this.writeRows = this.db.transaction(
      (enqueues: readonly PendingEnqueue[], marks: readonly { seq: number; target: string }[]) => {
        // An event with several targets (hooks, push) is looked at once, with all its marks:
        // the common case (every target owed on the event's row has it) is one DELETE.
        const marked = new Map<number, string[]>()
        for (const { seq, target } of marks) {
          const targets = marked.get(seq)
          if (targets) targets.push(target)
          else marked.set(seq, [target])
        }
        for (const [seq, targets] of marked) this.markDelivered(seq, targets)
        const deliveries: Delivery[][] = []
        const logged: EventLogEntry[] = []
        // Each event serialized once for the log and the outbox, its conversation once per change.
        const json = storedEventSerializer()
        // Member lists written (or found) in this transaction: looked up once each.
        const ensured = new Set<string>()
        const watermarks = new Map<string, number>()
        for (const { batch } of enqueues) {
          const out: Delivery[] = []
          // An event recorded already (the same id: a backlog derived again) is neither logged nor owed
          // again. Checked in this transaction, on the only writer.
          const fresh = this.events.unrecorded(batch.events)
          // Member lists (stored once per membership change) before the events that reference them.
          this.events.memberLists.ensure(
            fresh.filter((e) => e.targets.length > 0).map((e) => json(e.event)),
            ensured,
          )
          logged.push(
            ...this.events.record(
              fresh.map((e) => e.event),
              json,
              ensured,
            ),
          )
          for (const { event, targets } of fresh) {
            if (targets.length === 0) continue
            const stored = json(event)
            // The targets are owed on the event's row: no row per delivery unless one fails.
            const seq = Number(
              this.statements.insertEvent.run(
                batch.document,
                stored.payload,
                stored.members?.ref ?? null,
                owedColumn(targets),
              ).lastInsertRowid,
            )
            this.owed.set(seq, targets)
            for (const target of targets)
              out.push({ seq, document: batch.document, target, event, attempts: 0, nextAttemptAt: 0 })
          }
          if (batch.through !== undefined)
            watermarks.set(batch.document, Math.max(batch.through, watermarks.get(batch.document) ?? 0))
          deliveries.push(out)
        }
        // One upsert per document, of its highest position (the column only moves forward anyway).
        for (const [document, through] of watermarks) this.statements.setWatermark.run(document, through)
        return { deliveries, logged }
      },
    )
    this.writeBatch = this.relaxed(this.writeRows)
  }

  /**
   * `write` committed without an fsync of its own, on a connection the
   * documents share with `synchronous=FULL` (the pragma is the connection's,
   * and nothing else runs between the two switches: SQLite calls are synchronous).
   */
  private relaxed<A extends unknown[], T>(write: (...args: A) => T): (...args: A) => T {
    return (...args) => withoutSync(this.db, () => write(...args))
  }

  /** After a rollback: the in-memory views (open memberships, owed targets) may be ahead of the tables. */
  private forget(): void {
    this.events.forgetMembers()
    this.owed.clear()
  }

  /** The never-tried targets `seq` owes (none when the event is gone). */
  private owedTargets(seq: number): readonly string[] {
    const known = this.owed.get(seq)
    if (known) return known
    return parseOwed(this.statements.owedOf.get(seq))
  }

  /**
   * Records that `targets` have event `seq` (inside a transaction): each is
   * taken off the event's owed targets, or its delivery row (a retried one)
   * is deleted; the event goes once it owes nothing.
   */
  private markDelivered(seq: number, targets: readonly string[]): void {
    const owed = this.owedTargets(seq)
    const left = owed.filter((target) => !targets.includes(target))
    for (const target of targets) if (!owed.includes(target)) this.statements.remove.run(seq, target)
    if (left.length === 0) {
      this.owed.delete(seq)
      // Still there (a retried target's row is left): keep it, owing no never-tried target.
      if (this.statements.removeEventIfDone.run(seq, seq).changes === 0 && owed.length > 0)
        this.statements.setOwed.run(null, seq)
    } else if (left.length < owed.length) {
      this.statements.setOwed.run(owedColumn(left), seq)
      this.owed.set(seq, left)
    }
  }

  /**
   * Gives `target` of event `seq` a delivery row of its own when it is still
   * owed on the event's row (its first failure), so that its attempts and
   * error can be kept (inside a transaction).
   */
  private ownRow(seq: number, target: string): void {
    const owed = this.owedTargets(seq)
    if (!owed.includes(target)) return
    const left = owed.filter((t) => t !== target)
    this.statements.setOwed.run(owedColumn(left), seq)
    if (left.length > 0) this.owed.set(seq, left)
    else this.owed.delete(seq)
    this.statements.insertDelivery.run(seq, target)
  }

  private assertOpen(): void {
    if (this.closed || !this.db.open) throw new Error("the hook outbox is closed")
  }

  /**
   * Records `batch`. Enqueues and delivered marks arriving in the same tick
   * share one transaction (on a busy relay, many changes' events): a commit
   * costs far more than the rows. Resolves once committed, in call order.
   */
  enqueue(batch: OutboxBatch): Promise<Delivery[]> {
    try {
      this.assertOpen()
    } catch (error) {
      return Promise.reject(error)
    }
    return new Promise((resolve, reject) => {
      this.enqueues.push({ batch, resolve, reject })
      this.scheduleFlush()
    })
  }

  async watermark(document: string): Promise<number | undefined> {
    this.writeDeliveredMarks()
    this.assertOpen()
    return this.statements.watermark.get(document)?.through
  }

  /** Prepared on first use: the documents' table `updates` is the backend's, not the outbox's. */
  private behindStatement: Database.Statement<[], { document: string }> | undefined

  async behind(): Promise<string[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    // One index seek per watermark in `updates` (primary key doc, position).
    this.behindStatement ??= this.db.prepare<[], { document: string }>(
      "SELECT w.document FROM hook_watermarks w WHERE EXISTS (SELECT 1 FROM updates u WHERE u.doc = w.document AND u.position > w.through) ORDER BY w.document",
    )
    return this.behindStatement.all().map((row) => row.document)
  }

  async pending(document?: string): Promise<Delivery[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    const rows =
      document === undefined ? this.statements.pending.all() : this.statements.pendingOf.all(document)
    const owed =
      document === undefined ? this.statements.owed.all() : this.statements.owedOfDocument.all(document)
    // Never-tried targets owed on the events' rows, as delivery rows of no attempt.
    for (const event of owed)
      for (const target of parseOwed(event.owed))
        rows.push({
          ...event,
          target,
          attempts: 0,
          next_at: 0,
          last_error: null,
          dead_at: null,
        })
    rows.sort((a, b) => a.seq - b.seq || (a.target < b.target ? -1 : a.target > b.target ? 1 : 0))
    return this.deliveriesOf(rows)
  }

  /** Prepared on first use, like {@link behind}'s. */
  private pendingDocumentsStatement: Database.Statement<[], { document: string }> | undefined

  async pendingDocuments(): Promise<string[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    this.pendingDocumentsStatement ??= this.db.prepare<[], { document: string }>(
      "SELECT e.document FROM hook_deliveries d JOIN hook_events e ON e.seq = d.seq WHERE d.dead_at IS NULL UNION SELECT document FROM hook_events WHERE owed IS NOT NULL ORDER BY 1",
    )
    return this.pendingDocumentsStatement.all().map((row) => row.document)
  }

  /** Prepared on first use, like {@link behind}'s. */
  private laneStatements:
    | {
        rows: Database.Statement<[], OutboxLane>
        rowsOf: Database.Statement<[string], OutboxLane>
        owed: Database.Statement<[], { document: string; owed: string }>
        owedOf: Database.Statement<[string], { document: string; owed: string }>
        page: Database.Statement<[string, string, number, number], DeliveryRow>
        owedPage: Database.Statement<[string, number], OwedRow>
      }
    | undefined

  private lanes() {
    this.laneStatements ??= {
      rows: this.db.prepare<[], OutboxLane>(
        "SELECT DISTINCT e.document, d.target FROM hook_deliveries d JOIN hook_events e ON e.seq = d.seq WHERE d.dead_at IS NULL",
      ),
      rowsOf: this.db.prepare<[string], OutboxLane>(
        "SELECT DISTINCT e.document, d.target FROM hook_deliveries d JOIN hook_events e ON e.seq = d.seq WHERE d.dead_at IS NULL AND e.document = ?",
      ),
      owed: this.db.prepare<[], { document: string; owed: string }>(
        "SELECT DISTINCT document, owed FROM hook_events WHERE owed IS NOT NULL",
      ),
      owedOf: this.db.prepare<[string], { document: string; owed: string }>(
        "SELECT DISTINCT document, owed FROM hook_events WHERE owed IS NOT NULL AND document = ?",
      ),
      page: this.db.prepare<[string, string, number, number], DeliveryRow>(
        `${SELECT} WHERE d.dead_at IS NULL AND e.document = ? AND d.target = ? AND d.seq > ? ORDER BY d.seq LIMIT ?`,
      ),
      owedPage: this.db.prepare<[string, number], OwedRow>(
        `${SELECT_OWED} AND document = ? AND seq > ? ORDER BY seq`,
      ),
    }
    return this.laneStatements
  }

  async pendingLanes(document?: string): Promise<OutboxLane[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    const statements = this.lanes()
    const lanes = new Map<string, OutboxLane>()
    const rows = document === undefined ? statements.rows.all() : statements.rowsOf.all(document)
    for (const lane of rows) lanes.set(`${lane.document}\u0000${lane.target}`, lane)
    // Distinct `owed` columns are few (one per set of targets an event was enqueued for).
    const owed = document === undefined ? statements.owed.all() : statements.owedOf.all(document)
    for (const row of owed)
      for (const target of parseOwed(row.owed))
        lanes.set(`${row.document}\u0000${target}`, { document: row.document, target })
    return [...lanes.values()].sort(byLane)
  }

  async pendingPage(document: string, target: string, after: number, limit: number): Promise<Delivery[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    const statements = this.lanes()
    const rows = statements.page.all(document, target, after, limit)
    // Never-tried deliveries are owed on their events' rows: read in order until `limit` owe `target`.
    let found = 0
    for (const event of statements.owedPage.iterate(document, after)) {
      if (!parseOwed(event.owed).includes(target)) continue
      rows.push({ ...event, target, attempts: 0, next_at: 0, last_error: null, dead_at: null })
      if (++found >= limit) break
    }
    rows.sort((a, b) => a.seq - b.seq)
    return this.deliveriesOf(rows.slice(0, limit))
  }

  /**
   * Records a delivery as done. Deliveries finishing in one turn of the event
   * loop share one transaction, written at the end of the turn (or inside a
   * documents' commit due then): a commit costs far more than the two
   * statements, and a mark lost to a crash only means one more delivery,
   * which at-least-once allows. The dispatcher's lanes do not wait for their
   * marks before their next delivery (up to a bound), so a busy lane (one
   * conversation's backlog) writes one transaction per turn, not per delivery.
   */
  delivered(seq: number, target: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.deliveredMarks.push({ seq, target, resolve, reject })
      this.scheduleFlush()
    })
  }

  /**
   * `due` tells whether the documents' storage has an append transaction
   * scheduled: pending rows then wait for it and are written inside it
   * ({@link ride}), instead of committing on their own.
   */
  rideWith(due: () => boolean): void {
    this.commitDue = due
  }

  /**
   * Writes the pending rows inside the caller's transaction (the documents'
   * append, see `SqliteStorage.carry`), as a savepoint: a failure here rolls
   * back these rows only and never the appends. Returns what the caller calls
   * once its transaction committed or rolled back (rows then pending again).
   * Never throws.
   */
  ride(): ((committed: boolean) => void) | undefined {
    const marks = this.deliveredMarks
    if ((marks.length === 0 && this.enqueues.length === 0) || this.closed) return undefined
    this.deliveredMarks = []
    // About one at-cap change's events per ride: the rows of several large changes (a thousand events
    // each) written in one documents' commit held the event loop for a quarter of a second. The rest
    // are written in a later turn, on their own or in the next commit, in their order.
    const enqueues = this.takeEnqueues(EVENTS_PER_RIDE)
    // Rows pending after this wait their own time from their arrival, not from these rows'.
    this.stopWaiting()
    if (this.enqueues.length > 0) this.flushThisTurn()
    let written: { deliveries: Delivery[][]; logged: EventLogEntry[] }
    try {
      written = this.writeRows(enqueues, marks)
    } catch (error) {
      this.forget()
      for (const mark of marks) mark.reject(error)
      for (const enqueue of enqueues) enqueue.reject(error)
      return undefined
    }
    return (committed) => {
      if (committed) return this.settle(marks, enqueues, written)
      // Rolled back with the appends: pending again, in their order, before anything newer.
      this.forget()
      this.deliveredMarks = [...marks, ...this.deliveredMarks]
      this.enqueues = [...enqueues, ...this.enqueues]
      this.scheduleFlush()
    }
  }

  /**
   * Pending rows wait for a documents' commit to ride in (on a busy relay one
   * comes every few milliseconds; a transaction of their own cost more than
   * their rows): enqueues up to {@link ENQUEUE_WAIT_MS} (their deliveries
   * wait for the commit; a relay that crashes before it re-derives the events
   * from the documents' log, see the class's comment), delivered marks alone
   * up to {@link MARKS_WAIT_MS} (a mark only spares a delivery after a crash).
   * Past that, or with many rows waiting, they commit on their own at the end
   * of the turn, unless a documents' commit is due in it.
   */
  private scheduleFlush(): void {
    if (this.enqueues.length >= ROWS_AT_ONCE || this.deliveredMarks.length >= ROWS_AT_ONCE) {
      this.flushThisTurn()
      return
    }
    const wait =
      this.enqueues.length > 0 ? ENQUEUE_WAIT_MS : this.deliveredMarks.length > 0 ? MARKS_WAIT_MS : undefined
    if (wait === undefined || this.flushScheduled) return
    const due = performance.now() + wait
    if (this.waitTimer && this.waitDue <= due) return
    clearTimeout(this.waitTimer)
    this.waitDue = due
    // Not unref'd: callers await these rows' commit, and a process with nothing else to do (a script
    // using the backend, a CLI) would otherwise exit in the middle of the await, with code 13.
    this.waitTimer = setTimeout(() => {
      this.waitTimer = undefined
      this.flushThisTurn()
    }, wait)
  }

  private stopWaiting(): void {
    clearTimeout(this.waitTimer)
    this.waitTimer = undefined
  }

  /** Writes the pending rows at the end of this turn: in a documents' commit due then, or on their own. */
  private flushThisTurn(): void {
    if (this.flushScheduled) return
    this.flushScheduled = true
    setImmediate(() => {
      this.flushScheduled = false
      // A commit of the documents due later in this turn takes the rows along.
      if (this.commitDue()) this.flushThisTurn()
      else {
        // On their own as in a ride: about one at-cap change's events a turn.
        this.writeDeliveredMarks(EVENTS_PER_RIDE)
        if (this.enqueues.length > 0) this.flushThisTurn()
      }
    })
  }

  /** The first pending enqueues, up to about `events` events (one at least), taken off the queue. */
  private takeEnqueues(events = Number.POSITIVE_INFINITY): PendingEnqueue[] {
    if (events === Number.POSITIVE_INFINITY) {
      const all = this.enqueues
      this.enqueues = []
      return all
    }
    let counted = 0
    let taken = 0
    while (taken < this.enqueues.length && (taken === 0 || counted < events))
      counted += this.enqueues[taken++]!.batch.events.length
    const enqueues = this.enqueues.slice(0, taken)
    this.enqueues = this.enqueues.slice(taken)
    return enqueues
  }

  private settle(
    marks: readonly { resolve: () => void }[],
    enqueues: readonly PendingEnqueue[],
    written: { deliveries: Delivery[][]; logged: EventLogEntry[] },
  ): void {
    this.events.published(written.logged)
    for (const mark of marks) mark.resolve()
    for (const [i, enqueue] of enqueues.entries()) enqueue.resolve(written.deliveries[i]!)
  }

  /**
   * Writes the waiting enqueues (about `events` events' worth when given, the
   * rest left waiting in order) and delivered marks, in one transaction; every
   * other method calls it first, without a bound, so that it sees them.
   */
  private writeDeliveredMarks(events?: number): void {
    const marks = this.deliveredMarks
    if (marks.length === 0 && this.enqueues.length === 0) return
    this.deliveredMarks = []
    const enqueues = this.takeEnqueues(events)
    this.stopWaiting()
    let written: { deliveries: Delivery[][]; logged: EventLogEntry[] }
    try {
      this.assertOpen()
      written = this.writeBatch(enqueues, marks)
    } catch (error) {
      for (const mark of marks) mark.reject(error)
      for (const enqueue of enqueues) enqueue.reject(error)
      // The event log's in-memory view of open memberships may be ahead of what was rolled back.
      this.forget()
      return
    }
    this.settle(marks, enqueues, written)
  }

  async retryLater(seq: number, target: string, attempts: number, nextAttemptAt: number, error: string) {
    this.writeDeliveredMarks()
    this.assertOpen()
    this.relaxedTransaction(() => {
      this.ownRow(seq, target)
      this.statements.retry.run(attempts, nextAttemptAt, error, seq, target)
    })()
  }

  async deadLetter(seq: number, target: string, attempts: number, error: string, at: number) {
    this.writeDeliveredMarks()
    this.assertOpen()
    this.relaxedTransaction(() => {
      this.ownRow(seq, target)
      this.statements.kill.run(attempts, error, at, seq, target)
    })()
  }

  async deadLetters(): Promise<DeadLetter[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    const rows = this.statements.dead.all()
    const lists = this.listsOf(rows)
    return rows.map((row) => ({
      ...toDelivery(row, lists),
      lastError: row.last_error ?? "",
      deadAt: row.dead_at ?? 0,
    }))
  }

  async replay(filter: DeadLetterFilter = {}): Promise<Delivery[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    return this.relaxedTransaction(() => {
      const chosen = this.deliveriesOf(this.statements.dead.all()).filter((d) => matchesFilter(d, filter))
      for (const d of chosen) this.statements.revive.run(d.seq, d.target)
      return chosen.map((d) => ({ ...d, attempts: 0, nextAttemptAt: 0 }))
    })()
  }

  /** Writes the waiting delivered marks; the backend closes the database. */
  async close(): Promise<void> {
    this.writeDeliveredMarks()
    this.stopWaiting()
    this.closed = true
  }

  /** The stored member lists `rows` reference. */
  private listsOf(rows: readonly DeliveryRow[]): Map<string, readonly Participant[]> {
    return this.events.memberLists.load(rows.map((row) => row.members))
  }

  private deliveriesOf(rows: readonly DeliveryRow[]): Delivery[] {
    const lists = this.listsOf(rows)
    return rows.map((row) => toDelivery(row, lists))
  }

  /** `write` in a transaction of its own, committed without an fsync (see {@link relaxed}). */
  private relaxedTransaction<A extends unknown[], T>(write: (...args: A) => T): (...args: A) => T {
    const run = this.relaxed(this.db.transaction(write) as unknown as (...args: A) => T)
    return (...args) => {
      try {
        return run(...args)
      } catch (error) {
        // Rolled back: the owed targets kept in memory may be ahead of the table.
        this.owed.clear()
        throw error
      }
    }
  }
}

function toDelivery(row: DeliveryRow, lists: ReadonlyMap<string, readonly Participant[]>): Delivery {
  return {
    seq: row.seq,
    document: row.document,
    target: row.target,
    event: rehydrate(row.payload, row.members, lists),
    attempts: row.attempts,
    nextAttemptAt: row.next_at,
    ...(row.last_error !== null ? { lastError: row.last_error } : {}),
  }
}
