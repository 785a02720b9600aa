import type Database from "better-sqlite3"
import { eventSerializer } from "./event-log.js"
import type { HookEvent } from "./events.js"
import {
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  matchesFilter,
  type Outbox,
  type OutboxBatch,
} from "./outbox.js"
import { SqliteEventLog } from "./sqlite-event-log.js"

const SCHEMA = `
CREATE TABLE IF NOT EXISTS hook_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  document TEXT NOT NULL,
  payload TEXT NOT NULL
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
  target: string
  attempts: number
  next_at: number
  last_error: string | null
  dead_at: number | null
}

const SELECT = `SELECT d.seq, e.document, e.payload, d.target, d.attempts, d.next_at, d.last_error, d.dead_at
  FROM hook_deliveries d JOIN hook_events e ON e.seq = d.seq`

/**
 * The durable outbox of the SQLite backend: tables `hook_*` in the relay's
 * database (WAL mode). Its commits run with `synchronous=NORMAL`: every
 * commit survives a crash of the relay process, and costs no fsync on the
 * event loop (the next fsync'd commit of the documents carries it to disk
 * too). A power loss may lose the newest commits, but events and the
 * document's watermark are written in one transaction, so a lost tail only
 * moves the watermark back, and the relay re-derives those events from the
 * storage log (which is fsync'd). Compaction needs no flush first: it is a
 * later commit to the same write-ahead log, which SQLite replays in order, so
 * no compaction survives a power loss that the events before it did not.
 */
export class SqliteOutbox implements Outbox {
  private readonly statements
  private readonly markDelivered: (marks: readonly { seq: number; target: string }[]) => void
  private deliveredMarks: {
    seq: number
    target: string
    resolve: () => void
    reject: (error: unknown) => void
  }[] = []

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
    this.statements = {
      insertEvent: this.db.prepare<[string, string], unknown>(
        "INSERT INTO hook_events (document, payload) VALUES (?, ?)",
      ),
      insertDelivery: this.db.prepare<[number | bigint, string], unknown>(
        "INSERT INTO hook_deliveries (seq, target) VALUES (?, ?)",
      ),
      setWatermark: this.db.prepare<[string, number], unknown>(
        "INSERT INTO hook_watermarks (document, through) VALUES (?, ?) ON CONFLICT(document) DO UPDATE SET through = MAX(through, excluded.through)",
      ),
      watermark: this.db.prepare<[string], { through: number }>(
        "SELECT through FROM hook_watermarks WHERE document = ?",
      ),
      pending: this.db.prepare<[], DeliveryRow>(`${SELECT} WHERE d.dead_at IS NULL ORDER BY d.seq, d.target`),
      dead: this.db.prepare<[], DeliveryRow>(
        `${SELECT} WHERE d.dead_at IS NOT NULL ORDER BY d.seq, d.target`,
      ),
      remove: this.db.prepare<[number, string], unknown>(
        "DELETE FROM hook_deliveries WHERE seq = ? AND target = ?",
      ),
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
    this.markDelivered = this.relaxed(
      this.db.transaction((marks: readonly { seq: number; target: string }[]) => {
        for (const { seq, target } of marks) {
          this.statements.remove.run(seq, target)
          this.statements.removeEventIfDone.run(seq, seq)
        }
      }),
    )
  }

  /**
   * `write` committed without an fsync of its own, on a connection the
   * documents share with `synchronous=FULL` (the pragma is the connection's,
   * and nothing else runs between the two switches: SQLite calls are synchronous).
   */
  private relaxed<A extends unknown[], T>(write: (...args: A) => T): (...args: A) => T {
    return (...args) => {
      const before = this.db.pragma("synchronous", { simple: true }) as number
      this.db.pragma("synchronous = NORMAL")
      try {
        return write(...args)
      } finally {
        this.db.pragma(`synchronous = ${before}`)
      }
    }
  }

  private assertOpen(): void {
    if (this.closed || !this.db.open) throw new Error("the hook outbox is closed")
  }

  async enqueue(batch: OutboxBatch): Promise<Delivery[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    const run = this.relaxedTransaction((b: OutboxBatch) => {
      const out: Delivery[] = []
      // Each event serialized once for the log and the outbox, its conversation once per change.
      const json = eventSerializer()
      const logged = this.events.record(
        b.events.map((e) => e.event),
        json,
      )
      for (const { event, targets } of b.events) {
        if (targets.length === 0) continue
        const seq = Number(this.statements.insertEvent.run(b.document, json(event)).lastInsertRowid)
        for (const target of targets) {
          this.statements.insertDelivery.run(seq, target)
          out.push({ seq, document: b.document, target, event, attempts: 0, nextAttemptAt: 0 })
        }
      }
      if (b.through !== undefined) this.statements.setWatermark.run(b.document, b.through)
      return { out, logged }
    })
    const { out, logged } = run(batch)
    this.events.published(logged)
    return out
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

  async pending(): Promise<Delivery[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    return this.statements.pending.all().map(toDelivery)
  }

  /**
   * Records a delivery as done. Deliveries finishing together (the lanes a
   * storage commit released, say) share one transaction: a commit costs far
   * more than the two statements, and a mark lost to a crash only means one
   * more delivery, which at-least-once allows. The marks are written in a
   * microtask, not a later tick: a lane waits for its mark before its next
   * delivery, so waiting a tick each would bound a busy lane (one
   * conversation's backlog) to one delivery per turn of the event loop.
   */
  delivered(seq: number, target: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.deliveredMarks.push({ seq, target, resolve, reject })
      if (this.deliveredMarks.length === 1) queueMicrotask(() => this.writeDeliveredMarks())
    })
  }

  /** Writes the waiting delivered marks; every other method calls it first so that it sees them. */
  private writeDeliveredMarks(): void {
    const marks = this.deliveredMarks
    if (marks.length === 0) return
    this.deliveredMarks = []
    try {
      this.assertOpen()
      this.markDelivered(marks)
      for (const mark of marks) mark.resolve()
    } catch (error) {
      for (const mark of marks) mark.reject(error)
    }
  }

  async retryLater(seq: number, target: string, attempts: number, nextAttemptAt: number, error: string) {
    this.writeDeliveredMarks()
    this.assertOpen()
    this.relaxed(() => this.statements.retry.run(attempts, nextAttemptAt, error, seq, target))()
  }

  async deadLetter(seq: number, target: string, attempts: number, error: string, at: number) {
    this.writeDeliveredMarks()
    this.assertOpen()
    this.relaxed(() => this.statements.kill.run(attempts, error, at, seq, target))()
  }

  async deadLetters(): Promise<DeadLetter[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    return this.statements.dead.all().map((row) => ({
      ...toDelivery(row),
      lastError: row.last_error ?? "",
      deadAt: row.dead_at ?? 0,
    }))
  }

  async replay(filter: DeadLetterFilter = {}): Promise<Delivery[]> {
    this.writeDeliveredMarks()
    this.assertOpen()
    return this.relaxedTransaction(() => {
      const chosen = this.statements.dead
        .all()
        .map(toDelivery)
        .filter((d) => matchesFilter(d, filter))
      for (const d of chosen) this.statements.revive.run(d.seq, d.target)
      return chosen.map((d) => ({ ...d, attempts: 0, nextAttemptAt: 0 }))
    })()
  }

  /** Writes the waiting delivered marks; the backend closes the database. */
  async close(): Promise<void> {
    this.writeDeliveredMarks()
    this.closed = true
  }

  private relaxedTransaction<A extends unknown[], T>(write: (...args: A) => T): (...args: A) => T {
    return this.relaxed(this.db.transaction(write) as unknown as (...args: A) => T)
  }
}

function toDelivery(row: DeliveryRow): Delivery {
  return {
    seq: row.seq,
    document: row.document,
    target: row.target,
    event: JSON.parse(row.payload) as HookEvent,
    attempts: row.attempts,
    nextAttemptAt: row.next_at,
    ...(row.last_error !== null ? { lastError: row.last_error } : {}),
  }
}
