import type { UserId } from "@parley/shared"
import type Database from "better-sqlite3"
import {
  asSeenBy,
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
  membershipChanges,
  messageColumnUpgrade,
  messageOf,
  PRUNE_BATCH,
  parseEventId,
  withoutRecorded,
} from "./event-log.js"
import { type HookEvent, loggedForm } from "./events.js"
import { rehydrate, SqliteMemberLists, type StoredEvent, storedEventSerializer } from "./member-lists.js"

/** Conversations whose open memberships the log keeps in memory. */
const MEMBER_CACHE_SIZE = 10_000
/** Events one INSERT statement records (7 parameters each, far under SQLite's limit of 32,766). */
const RECORD_CHUNK = 100

const SCHEMA = `
CREATE TABLE IF NOT EXISTS event_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  conversation TEXT NOT NULL,
  type TEXT NOT NULL,
  at INTEGER NOT NULL,
  payload TEXT NOT NULL,
  message TEXT,
  event_id TEXT
);
CREATE INDEX IF NOT EXISTS event_log_by_conversation ON event_log (conversation, id);
CREATE INDEX IF NOT EXISTS event_log_by_time ON event_log (at);
CREATE TABLE IF NOT EXISTS event_log_members (
  conversation TEXT NOT NULL,
  user_id TEXT NOT NULL,
  from_id INTEGER NOT NULL,
  to_id INTEGER,
  PRIMARY KEY (conversation, user_id, from_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_log_state (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
`

/**
 * Gives an older database's `event_log` its `message` column (see
 * `messageOf`) and fills it, and rewrites the `document.updated` rows it holds
 * whole into the lean form, so that no row outside a message's own events
 * holds its content; then indexes the column. Once: a new table has the
 * column from the start.
 */
function adoptMessageColumn(db: Database.Database): void {
  const columns = db.prepare("PRAGMA table_info(event_log)").all() as { name: string }[]
  if (!columns.some((c) => c.name === "message"))
    db.transaction(() => {
      db.exec("ALTER TABLE event_log ADD COLUMN message TEXT")
      // In batches of ids: a log of millions of rows is never in memory at once.
      const batch = db.prepare<[number], { id: number; type: string; payload: string }>(
        `SELECT id, type, payload FROM event_log
         WHERE id > ? AND (type IN ('message.sent', 'message.edited')
                           OR (type = 'document.updated' AND instr(payload, '"body"') > 0))
         ORDER BY id LIMIT 1000`,
      )
      const setMessage = db.prepare("UPDATE event_log SET message = ? WHERE id = ?")
      const setPayload = db.prepare("UPDATE event_log SET payload = ? WHERE id = ?")
      for (let after = 0; ; ) {
        const rows = batch.all(after)
        if (rows.length === 0) break
        for (const row of rows) {
          const upgrade = messageColumnUpgrade(row.type, row.payload)
          if (upgrade && "payload" in upgrade) setPayload.run(upgrade.payload, row.id)
          else if (upgrade) setMessage.run(upgrade.message, row.id)
        }
        after = rows.at(-1)!.id
      }
    })()
  db.exec(
    "CREATE INDEX IF NOT EXISTS event_log_by_message ON event_log (conversation, message) WHERE message IS NOT NULL",
  )
}

/**
 * Gives an older database's `event_log` its `event_id` column, and indexes
 * it unique per conversation: an event id is recorded once (see
 * `withoutRecorded`). The rows already there keep a NULL column (their ids
 * were random, never derived again), which the partial index leaves out.
 */
function adoptEventIdColumn(db: Database.Database): void {
  const columns = db.prepare("PRAGMA table_info(event_log)").all() as { name: string }[]
  if (!columns.some((c) => c.name === "event_id")) db.exec("ALTER TABLE event_log ADD COLUMN event_id TEXT")
  db.exec(
    "CREATE UNIQUE INDEX IF NOT EXISTS event_log_by_event ON event_log (conversation, event_id) WHERE event_id IS NOT NULL",
  )
}

/**
 * The event log of the SQLite backend: tables `event_log*` in the relay's
 * database. `SqliteOutbox` writes it inside its enqueue transaction (so its
 * commits have the outbox's durability: they survive a crash of the relay
 * process; after a power loss the events of the lost tail are derived again
 * from the fsync'd storage log, with new ids). Ids are SQLite's
 * AUTOINCREMENT: never reused, even after pruning.
 */
export class SqliteEventLog implements EventLog {
  private readonly listeners = new EventLogListeners()
  private readonly statements
  private readonly queries = new Map<
    string,
    Database.Statement<unknown[], { id: number; payload: string; members: string | null }>
  >()
  /** INSERT statements of `n` rows, by `n`: a large batch is one statement run per chunk, not per event. */
  private readonly inserts = new Map<number, Database.Statement<unknown[], unknown>>()
  private closed = false
  /**
   * Each conversation's open memberships as written, so that recording an
   * event needs no query (one per change otherwise). Must be forgotten when a
   * transaction that recorded events rolls back ({@link forgetMembers}).
   */
  private readonly members = new Map<string, Set<UserId>>()

  /**
   * The conversations' member lists, stored once per membership change and
   * referenced by the events (`event_log.members`) in place of their
   * `conversation.participants`; shared with the outbox.
   */
  readonly memberLists: SqliteMemberLists

  /** `db` is the backend's connection; the log creates its tables in it. */
  constructor(private readonly db: Database.Database) {
    this.db.exec(SCHEMA)
    adoptMessageColumn(this.db)
    adoptEventIdColumn(this.db)
    this.memberLists = new SqliteMemberLists(db)
    this.memberLists.adopt("event_log")
    this.statements = {
      recorded: this.db
        .prepare<[string, string], string>(
          "SELECT event_id FROM event_log WHERE conversation = ? AND event_id IN (SELECT value FROM json_each(?))",
        )
        .pluck(),
      openMembers: this.db.prepare<[string], { user_id: string }>(
        "SELECT user_id FROM event_log_members WHERE conversation = ? AND to_id IS NULL",
      ),
      open: this.db.prepare<[string, string, number], unknown>(
        "INSERT OR IGNORE INTO event_log_members (conversation, user_id, from_id) VALUES (?, ?, ?)",
      ),
      close: this.db.prepare<[number, string, string], unknown>(
        "UPDATE event_log_members SET to_id = ? WHERE conversation = ? AND user_id = ? AND to_id IS NULL",
      ),
      witness: this.db.prepare<[string, string, number, number], unknown>(
        "INSERT OR IGNORE INTO event_log_members (conversation, user_id, from_id, to_id) VALUES (?, ?, ?, ?)",
      ),
      latest: this.db.prepare<[], { latest: number | null }>(
        `SELECT MAX(COALESCE((SELECT MAX(id) FROM event_log), 0),
                    COALESCE((SELECT value FROM event_log_state WHERE name = 'pruned_through'), 0)) AS latest`,
      ),
      prunedThrough: this.db.prepare<[], { value: number }>(
        "SELECT value FROM event_log_state WHERE name = 'pruned_through'",
      ),
      lastBefore: this.db.prepare<[number], { id: number | null }>(
        "SELECT MAX(id) AS id FROM event_log WHERE at < ?",
      ),
      oldestIds: this.db.prepare<[number, number], { id: number }>(
        "SELECT id FROM event_log WHERE id <= ? ORDER BY id LIMIT ?",
      ),
      removeEvents: this.db.prepare<[number], unknown>("DELETE FROM event_log WHERE id <= ?"),
      removeMembers: this.db.prepare<[number], unknown>(
        "DELETE FROM event_log_members WHERE to_id IS NOT NULL AND to_id <= ?",
      ),
      setPruned: this.db.prepare<[number], unknown>(
        `INSERT INTO event_log_state (name, value) VALUES ('pruned_through', ?)
         ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)`,
      ),
    }
  }

  private assertOpen(): void {
    if (this.closed || !this.db.open) throw new Error("the event log is closed")
  }

  /**
   * `batch` without the events whose id this log holds already for their
   * conversation, or that repeat one earlier in `batch` (see
   * `withoutRecorded`): call inside the outbox's transaction, before
   * {@link record}; the outbox records and delivers only those.
   */
  unrecorded<E extends { readonly event: HookEvent }>(batch: readonly E[]): E[] {
    const known = new Map<string, Set<string>>()
    for (const [conversation, ids] of idsByConversation(batch))
      known.set(conversation, new Set(this.statements.recorded.all(conversation, JSON.stringify(ids))))
    return withoutRecorded(batch, known)
  }

  /**
   * Records `events` (those the log keeps): call inside the outbox's
   * transaction, then {@link published} with the result once it committed.
   * `ensured`: member lists already written in this transaction (see `SqliteMemberLists.ensure`).
   */
  record(
    events: readonly HookEvent[],
    json: (event: HookEvent) => StoredEvent = storedEventSerializer(),
    ensured?: Set<string>,
  ): EventLogEntry[] {
    const recorded: { id: number; event: HookEvent }[] = []
    const kept = events.filter(isLogged).map(loggedForm)
    this.memberLists.ensure(kept.map(json), ensured)
    for (let start = 0; start < kept.length; start += RECORD_CHUNK) {
      const chunk = kept.slice(start, start + RECORD_CHUNK)
      const args: unknown[] = []
      for (const event of chunk) {
        const stored = json(event)
        args.push(
          event.event.conversationId,
          event.event.type,
          event.event.time,
          stored.payload,
          stored.members?.ref ?? null,
          messageOf(event),
          event.event.id,
        )
      }
      const { lastInsertRowid } = this.insertStatement(chunk.length).run(...args)
      // One statement on the only writer: AUTOINCREMENT gives its rows consecutive ids, in order.
      const first = Number(lastInsertRowid) - chunk.length + 1
      for (const [i, event] of chunk.entries()) recorded.push({ id: first + i, event })
    }
    // Each list's newest event, for the sweep (ids ascend: the last one seen); a change's events share one.
    const newest = new Map<string, number>()
    for (const { id, event } of recorded) {
      const ref = json(event).members?.ref
      if (ref !== undefined) newest.set(ref, id)
    }
    for (const [ref, id] of newest) this.memberLists.used(ref, id)
    const open = new Map<string, Set<UserId>>()
    for (const { event } of recorded) {
      const conversation = event.event.conversationId
      if (open.has(conversation)) continue
      let members = this.members.get(conversation)
      if (!members) {
        members = new Set(this.statements.openMembers.all(conversation).map((r) => r.user_id as UserId))
        // Only a cache: a conversation forgotten is read again on its next event.
        if (this.members.size >= MEMBER_CACHE_SIZE) this.members.clear()
        this.members.set(conversation, members)
      }
      open.set(conversation, members)
    }
    // `membershipChanges` updates the sets it is given: the cache follows what is written.
    const { opened, closed, witnessed } = membershipChanges(open, recorded)
    for (const { conversation, user, to } of closed) this.statements.close.run(to, conversation, user)
    for (const { conversation, user, from } of opened) this.statements.open.run(conversation, user, from)
    for (const { conversation, user, at } of witnessed)
      this.statements.witness.run(conversation, user, at, at)
    return recorded.map(({ id, event }) => ({ id: String(id), event }))
  }

  /** Drops the cache of open memberships (after a transaction that recorded events rolled back). */
  forgetMembers(): void {
    this.members.clear()
  }

  private insertStatement(rows: number): Database.Statement<unknown[], unknown> {
    let statement = this.inserts.get(rows)
    if (!statement) {
      statement = this.db.prepare<unknown[], unknown>(
        `INSERT INTO event_log (conversation, type, at, payload, members, message, event_id) VALUES ${Array.from({ length: rows }, () => "(?, ?, ?, ?, ?, ?, ?)").join(", ")}`,
      )
      this.inserts.set(rows, statement)
    }
    return statement
  }

  /** Tells the listeners of entries {@link record} returned, after their transaction committed. */
  published(entries: readonly EventLogEntry[]): void {
    this.listeners.emit(entries)
  }

  async read(query: EventLogQuery): Promise<EventLogEntry[]> {
    this.assertOpen()
    const after = parseEventId(query.after)
    const limit = checkLimit(query.limit)
    const types = checkTypes(query.types)
    const snapshot = this.db.transaction(() => {
      if (query.after !== undefined)
        checkAfter(
          after,
          this.statements.prunedThrough.get()?.value ?? 0,
          this.statements.latest.get()?.latest ?? 0,
        )
      const args: unknown[] = []
      let sql: string
      if (query.user !== undefined) {
        // In id order, each event checked against the user's membership (a primary-key lookup): a page
        // stops after `limit` matches, so catching up costs one pass over the log, not one sort per page.
        sql = `SELECT e.id, e.payload, e.members FROM event_log e WHERE e.id > ? AND EXISTS (
          SELECT 1 FROM event_log_members m WHERE m.conversation = e.conversation AND m.user_id = ?
            AND m.from_id <= e.id AND (m.to_id IS NULL OR m.to_id >= e.id))`
        args.push(after, query.user)
      } else {
        sql = "SELECT e.id, e.payload, e.members FROM event_log e WHERE e.id > ?"
        args.push(after)
      }
      if (query.conversation !== undefined) {
        sql += " AND e.conversation = ?"
        args.push(query.conversation)
      }
      if (types.length > 0) {
        sql += ` AND e.type IN (${types.map(() => "?").join(", ")})`
        args.push(...types)
      }
      sql += " ORDER BY e.id LIMIT ?"
      args.push(limit)
      let statement = this.queries.get(sql)
      if (!statement) {
        statement = this.db.prepare<unknown[], { id: number; payload: string; members: string | null }>(sql)
        this.queries.set(sql, statement)
      }
      const rows = statement.all(...args)
      return { rows, lists: this.memberLists.load(rows.map((row) => row.members)) }
    })
    const { rows, lists } = snapshot()
    return rows.map((row) =>
      asSeenBy(query.user, { id: String(row.id), event: rehydrate(row.payload, row.members, lists) }),
    )
  }

  async latest(): Promise<string> {
    this.assertOpen()
    return String(this.statements.latest.get()?.latest ?? 0)
  }

  subscribe(listener: EventLogListener): () => void {
    return this.listeners.subscribe(listener)
  }

  /**
   * Deletes in batches of {@link PRUNE_BATCH} events, one transaction each
   * and a turn of the event loop between them: a large backlog never blocks
   * the relay for long. Then deletes the member lists no stored event (of the
   * log or the outbox) references any more.
   */
  async prune(retention: EventRetention, now: number = Date.now(), signal?: AbortSignal): Promise<number> {
    const pruned = await this.pruneEvents(retention, now, signal)
    if (!this.closed && this.db.open && !signal?.aborted) this.memberLists.sweep()
    return pruned
  }

  private async pruneEvents(retention: EventRetention, now: number, signal?: AbortSignal): Promise<number> {
    this.assertOpen()
    const latest = this.statements.latest.get()?.latest ?? 0
    const through = Math.max(
      this.statements.lastBefore.get(now - retention.maxAgeMs)?.id ?? 0,
      latest - retention.maxEvents,
    )
    if (through <= (this.statements.prunedThrough.get()?.value ?? 0)) return 0
    let pruned = 0
    for (;;) {
      if (this.closed || !this.db.open || signal?.aborted) return pruned
      const ids = this.statements.oldestIds.all(through, PRUNE_BATCH)
      const step = ids.at(-1)?.id ?? through
      const removed = this.db.transaction(() => {
        this.statements.removeMembers.run(step)
        const { changes } = this.statements.removeEvents.run(step)
        this.statements.setPruned.run(step)
        return changes
      })()
      pruned += removed
      if (step >= through) return pruned
      await new Promise((resolve) => setImmediate(resolve))
    }
  }

  async close(): Promise<void> {
    this.closed = true
  }
}
