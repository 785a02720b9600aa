import type { UserId } from "@parley/shared"
import type pg from "pg"
import { inTransaction } from "../pg-transaction.js"
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
import {
  addPostgresColumn,
  ensurePostgresLists,
  loadPostgresLists,
  MEMBER_LIST_LOCK,
  POSTGRES_MEMBER_LISTS_SCHEMA,
  rehydrate,
  type StoredEvent,
  storedEventSerializer,
  sweepPostgresLists,
} from "./member-lists.js"

// The payload is the event's JSON as text, as in the outbox (JSONB would reorder keys and refuse `\u0000`).
/** The event log's tables (see {@link PostgresEventLog}), created by the backend. */
export const EVENT_LOG_SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_event_log (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  conversation TEXT NOT NULL,
  type TEXT NOT NULL,
  at BIGINT NOT NULL,
  payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS parley_event_log_by_conversation ON parley_event_log (conversation, id);
CREATE INDEX IF NOT EXISTS parley_event_log_by_time ON parley_event_log (at);
CREATE TABLE IF NOT EXISTS parley_event_log_members (
  conversation TEXT NOT NULL,
  user_id TEXT NOT NULL,
  from_id BIGINT NOT NULL,
  to_id BIGINT,
  PRIMARY KEY (conversation, user_id, from_id)
);
CREATE TABLE IF NOT EXISTS parley_event_log_state (
  name TEXT PRIMARY KEY,
  value BIGINT NOT NULL
);
${POSTGRES_MEMBER_LISTS_SCHEMA}
${addPostgresColumn("parley_event_log", "message")}
-- An event id is recorded once per conversation (see \`withoutRecorded\`). Rows written before the column
-- keep it NULL (their ids were random, never derived again): the partial index leaves them out.
${addPostgresColumn("parley_event_log", "event_id")}
CREATE UNIQUE INDEX IF NOT EXISTS parley_event_log_by_event ON parley_event_log (conversation, event_id)
  WHERE event_id IS NOT NULL;`

// Taken by every transaction that records events, until it commits: ids are drawn from the identity
// inside it, so without the lock a relay sharing the database could commit id 7 before another's 6,
// and a reader past 7 would never see 6. Two-key (LOG_LOCK, the schema): apart from the storage's one-key locks.
const LOG_LOCK = MEMBER_LIST_LOCK

/**
 * Takes the log's lock (see `LOG_LOCK`) in `client`'s transaction, until it ends. Every relay's
 * records wait for it: take it before any lock a relay's own writes wait for (a document's fence row),
 * so that a record waiting here, behind a relay stalled while holding it, holds none of those.
 */
export async function lockEventLog(client: pg.ClientBase): Promise<void> {
  await client.query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", [LOG_LOCK])
}

/** Events one INSERT statement records. */
const RECORD_CHUNK = 500

const LATEST = `SELECT GREATEST(COALESCE((SELECT MAX(id) FROM parley_event_log), 0),
  COALESCE((SELECT value FROM parley_event_log_state WHERE name = 'pruned_through'), 0)) AS latest`
const PRUNED = "SELECT value FROM parley_event_log_state WHERE name = 'pruned_through'"

/**
 * Fills the `message` column (see `messageOf`) of the rows an older relay
 * wrote, and rewrites the `document.updated` rows it logged whole into the
 * lean form, so that no row outside a message's own events holds its content.
 * Once per database (marked in `parley_event_log_state`), under the log's
 * lock; call after {@link EVENT_LOG_SCHEMA} is created.
 */
export async function adoptMessageColumn(pool: pg.Pool): Promise<void> {
  await inTransaction(pool, async (client) => {
    await client.query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", [LOG_LOCK])
    const done = await client.query("SELECT 1 FROM parley_event_log_state WHERE name = 'message_column'")
    if (done.rowCount) return
    // Once, however long the log: the pool's statement timeout is for the relay's own statements.
    await client.query("SET LOCAL statement_timeout = 0")
    for (let after = "0"; ; ) {
      const rows = await client.query<{ id: string; type: string; payload: string }>(
        `SELECT id, type, payload FROM parley_event_log
         WHERE id > $1 AND ((message IS NULL AND type IN ('message.sent', 'message.edited'))
                            OR (type = 'document.updated' AND strpos(payload, '"body"') > 0))
         ORDER BY id LIMIT 1000`,
        [after],
      )
      if (rows.rows.length === 0) break
      for (const row of rows.rows) {
        const upgrade = messageColumnUpgrade(row.type, row.payload)
        if (upgrade && "payload" in upgrade)
          await client.query("UPDATE parley_event_log SET payload = $1 WHERE id = $2", [
            upgrade.payload,
            row.id,
          ])
        else if (upgrade)
          await client.query("UPDATE parley_event_log SET message = $1 WHERE id = $2", [
            upgrade.message,
            row.id,
          ])
      }
      after = rows.rows.at(-1)!.id
    }
    await client.query(
      "CREATE INDEX IF NOT EXISTS parley_event_log_by_message ON parley_event_log (conversation, message) WHERE message IS NOT NULL",
    )
    await client.query(
      "INSERT INTO parley_event_log_state (name, value) VALUES ('message_column', 1) ON CONFLICT (name) DO NOTHING",
    )
  })
}

/**
 * The event log of a relay on PostgreSQL: tables `parley_event_log*` in the
 * storage's database. `PostgresOutbox` writes it inside its enqueue
 * transaction; commits wait for the WAL flush, so a recorded event survives a
 * crash of the relay and of the server. Relays sharing the database share
 * one log: ids are committed in increasing order across them (an advisory
 * lock), and each relay's `subscribe` hears only its own writes.
 */
export class PostgresEventLog implements EventLog {
  private readonly listeners = new EventLogListeners()
  private closed = false

  /** `pool` is the backend's, with {@link EVENT_LOG_SCHEMA} created. */
  constructor(private readonly pool: pg.Pool) {}

  private assertOpen(): void {
    if (this.closed) throw new Error("the event log is closed")
  }

  /**
   * `batch` without the events whose id this log holds already for their
   * conversation, or that repeat one earlier in `batch` (see
   * `withoutRecorded`): call in the outbox's transaction on `client`, under
   * its document's lock (relays enqueue a document one at a time), before
   * {@link record}. The unique index is the net under it.
   */
  async unrecorded<E extends { readonly event: HookEvent }>(
    client: pg.PoolClient,
    batch: readonly E[],
  ): Promise<E[]> {
    const known = new Map<string, Set<string>>()
    for (const [conversation, ids] of idsByConversation(batch)) {
      const { rows } = await client.query<{ event_id: string }>(
        "SELECT event_id FROM parley_event_log WHERE conversation = $1 AND event_id = ANY($2::text[])",
        [conversation, ids],
      )
      known.set(conversation, new Set(rows.map((r) => r.event_id)))
    }
    return withoutRecorded(batch, known)
  }

  /**
   * Records `events` (those the log keeps) in the outbox's transaction on
   * `client`; call {@link published} with the result once it committed.
   */
  async record(
    client: pg.PoolClient,
    events: readonly HookEvent[],
    json: (event: HookEvent) => StoredEvent = storedEventSerializer(),
  ): Promise<EventLogEntry[]> {
    const kept = events.filter(isLogged).map(loggedForm)
    if (kept.length === 0) return []
    await lockEventLog(client)
    await ensurePostgresLists(client, kept.map(json))
    // A statement per chunk of the batch: identities are drawn in the ORDER BY's order, so sorted ids match
    // the events. Chunks keep one statement's parameters to a few MB however large the frame was.
    const rows: { id: string }[] = []
    for (let start = 0; start < kept.length; start += RECORD_CHUNK) {
      const chunk = kept.slice(start, start + RECORD_CHUNK)
      const inserted = await client.query<{ id: string }>(
        `INSERT INTO parley_event_log (conversation, type, at, payload, members, message, event_id)
         SELECT c, t, a, p, m, g, i FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
           WITH ORDINALITY AS x(c, t, a, p, m, g, i, n)
         ORDER BY n
         RETURNING id`,
        [
          chunk.map((e) => e.event.conversationId),
          chunk.map((e) => e.event.type),
          chunk.map((e) => e.event.time),
          chunk.map((e) => json(e).payload),
          chunk.map((e) => json(e).members?.ref ?? null),
          chunk.map(messageOf),
          chunk.map((e) => e.event.id),
        ],
      )
      rows.push(...inserted.rows)
    }
    const ids = rows.map((r) => Number(r.id)).sort((a, b) => a - b)
    const recorded = kept.map((event, i) => ({ id: ids[i]!, event }))
    const conversations = [...new Set(kept.map((e) => e.event.conversationId as string))]
    const { rows: members } = await client.query<{ conversation: string; user_id: string }>(
      "SELECT conversation, user_id FROM parley_event_log_members WHERE conversation = ANY($1::text[]) AND to_id IS NULL",
      [conversations],
    )
    const open = new Map<string, Set<UserId>>(conversations.map((c) => [c, new Set<UserId>()]))
    for (const m of members) open.get(m.conversation)!.add(m.user_id as UserId)
    const { opened, closed, witnessed } = membershipChanges(open, recorded)
    if (closed.length > 0)
      await client.query(
        `UPDATE parley_event_log_members m SET to_id = c.to_id
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(conversation, user_id, to_id)
         WHERE m.conversation = c.conversation AND m.user_id = c.user_id AND m.to_id IS NULL`,
        [closed.map((c) => c.conversation), closed.map((c) => c.user), closed.map((c) => c.to)],
      )
    if (opened.length > 0)
      await client.query(
        `INSERT INTO parley_event_log_members (conversation, user_id, from_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT DO NOTHING`,
        [opened.map((o) => o.conversation), opened.map((o) => o.user), opened.map((o) => o.from)],
      )
    if (witnessed.length > 0)
      await client.query(
        `INSERT INTO parley_event_log_members (conversation, user_id, from_id, to_id)
         SELECT c, u, a, a FROM unnest($1::text[], $2::text[], $3::bigint[]) AS w(c, u, a) ON CONFLICT DO NOTHING`,
        [witnessed.map((w) => w.conversation), witnessed.map((w) => w.user), witnessed.map((w) => w.at)],
      )
    return recorded.map(({ id, event }) => ({ id: String(id), event }))
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
    const args: unknown[] = [after]
    let sql: string
    if (query.user !== undefined) {
      args.push(query.user)
      // In id order, each event checked against the user's membership (see the SQLite log).
      sql = `SELECT e.id, e.payload, e.members FROM parley_event_log e WHERE e.id > $1 AND EXISTS (
        SELECT 1 FROM parley_event_log_members m WHERE m.conversation = e.conversation AND m.user_id = $2
          AND m.from_id <= e.id AND (m.to_id IS NULL OR m.to_id >= e.id))`
    } else sql = "SELECT e.id, e.payload, e.members FROM parley_event_log e WHERE e.id > $1"
    if (query.conversation !== undefined) {
      args.push(query.conversation)
      sql += ` AND e.conversation = $${args.length}`
    }
    if (types.length > 0) {
      args.push(types)
      sql += ` AND e.type = ANY($${args.length}::text[])`
    }
    args.push(limit)
    sql += ` ORDER BY e.id LIMIT $${args.length}`
    // One snapshot: a prune between the check and the read would otherwise drop events silently.
    const rows = await inTransaction(
      this.pool,
      async (client) => {
        const [pruned, latest] = await Promise.all([
          client.query<{ value: string }>(PRUNED),
          client.query<{ latest: string }>(LATEST),
        ])
        if (query.after !== undefined)
          checkAfter(after, Number(pruned.rows[0]?.value ?? 0), Number(latest.rows[0]?.latest ?? 0))
        const { rows } = await client.query<{ id: string; payload: string; members: string | null }>(
          sql,
          args,
        )
        // In the same snapshot: a list its rows reference cannot have been swept from it.
        return {
          rows,
          lists: await loadPostgresLists(
            client,
            rows.map((row) => row.members),
          ),
        }
      },
      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    return rows.rows.map((row) =>
      asSeenBy(query.user, { id: row.id, event: rehydrate(row.payload, row.members, rows.lists) }),
    )
  }

  async latest(): Promise<string> {
    this.assertOpen()
    const { rows } = await this.pool.query<{ latest: string }>(LATEST)
    return String(rows[0]?.latest ?? 0)
  }

  subscribe(listener: EventLogListener): () => void {
    return this.listeners.subscribe(listener)
  }

  /**
   * Deletes in batches of {@link PRUNE_BATCH} events, one transaction each;
   * then the member lists no stored event (of the log or the outbox) references.
   */
  async prune(retention: EventRetention, now: number = Date.now(), signal?: AbortSignal): Promise<number> {
    const pruned = await this.pruneEvents(retention, now, signal)
    if (!this.closed && !signal?.aborted) await inTransaction(this.pool, sweepPostgresLists)
    return pruned
  }

  private async pruneEvents(retention: EventRetention, now: number, signal?: AbortSignal): Promise<number> {
    this.assertOpen()
    const [{ rows: latest }, { rows: before }, { rows: pruned }] = await Promise.all([
      this.pool.query<{ latest: string }>(LATEST),
      this.pool.query<{ id: string | null }>("SELECT MAX(id) AS id FROM parley_event_log WHERE at < $1", [
        now - retention.maxAgeMs,
      ]),
      this.pool.query<{ value: string }>(PRUNED),
    ])
    const through = Math.max(Number(before[0]?.id ?? 0), Number(latest[0]?.latest ?? 0) - retention.maxEvents)
    if (through <= Number(pruned[0]?.value ?? 0)) return 0
    let total = 0
    for (;;) {
      if (this.closed || signal?.aborted) return total
      const { step, removed } = await inTransaction(this.pool, async (client) => {
        const { rows } = await client.query<{ id: string | null }>(
          "SELECT MAX(id) AS id FROM (SELECT id FROM parley_event_log WHERE id <= $1 ORDER BY id LIMIT $2) AS b",
          [through, PRUNE_BATCH],
        )
        const step = rows[0]?.id === null || rows[0] === undefined ? through : Number(rows[0].id)
        await client.query("DELETE FROM parley_event_log_members WHERE to_id IS NOT NULL AND to_id <= $1", [
          step,
        ])
        const { rowCount } = await client.query("DELETE FROM parley_event_log WHERE id <= $1", [step])
        await client.query(
          `INSERT INTO parley_event_log_state (name, value) VALUES ('pruned_through', $1)
           ON CONFLICT (name) DO UPDATE SET value = GREATEST(parley_event_log_state.value, EXCLUDED.value)`,
          [step],
        )
        return { step, removed: rowCount ?? 0 }
      })
      total += removed
      if (step >= through) return total
    }
  }

  /** Refuses further calls; the backend ends the pool. */
  async close(): Promise<void> {
    this.closed = true
  }
}
