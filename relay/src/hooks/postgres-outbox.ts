import type { Participant } from "@parley/shared"
import type pg from "pg"
import { inTransaction } from "../pg-transaction.js"
import { isLogged } from "./event-log.js"
import {
  ensurePostgresLists,
  loadPostgresLists,
  POSTGRES_OUTBOX_MEMBERS_SCHEMA,
  rehydrate,
  storedEventSerializer,
} from "./member-lists.js"
import {
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  matchesFilter,
  type Outbox,
  type OutboxBatch,
  type OutboxLane,
} from "./outbox.js"
import { lockEventLog, PostgresEventLog } from "./postgres-event-log.js"

// The payload is the event's JSON as text, not JSONB: JSONB would reorder keys and refuse `\u0000` in
// strings (a message body may hold one), and the outbox only ever reads the whole event back.
/** The outbox's tables (see {@link PostgresOutbox}), created by the backend. */
export const OUTBOX_SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_hook_events (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  document TEXT NOT NULL,
  payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS parley_hook_deliveries (
  seq BIGINT NOT NULL REFERENCES parley_hook_events(seq),
  target TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_at BIGINT NOT NULL DEFAULT 0,
  last_error TEXT,
  dead_at BIGINT,
  PRIMARY KEY (seq, target)
);
-- A lane's next page (\`pendingPage\`) seeks its document's events from its cursor instead of walking
-- every document's deliveries after it.
CREATE INDEX IF NOT EXISTS parley_hook_events_by_document ON parley_hook_events (document, seq);
CREATE TABLE IF NOT EXISTS parley_hook_watermarks (
  document TEXT PRIMARY KEY,
  through BIGINT NOT NULL
);
${POSTGRES_OUTBOX_MEMBERS_SCHEMA}`

// An enqueue takes the two-key advisory lock (DOCUMENT_LOCK, hashtext(document)): a key space apart from
// the one-key locks `PostgresStorage` takes per document, so outbox and storage never wait on each
// other. The value is arbitrary ("Prly"); table setup has its own class (`openPool`).
const DOCUMENT_LOCK = 0x50726c79

/**
 * Run in every enqueue's transaction, under the document's lock, before anything is written: throws
 * to refuse the record (a clustered relay that no longer orders the document, see `recordingFence`).
 */
export type RecordFence = (client: pg.PoolClient, document: string) => Promise<void>

/** {@link PostgresOutbox.watermark} read from `pool` (a clustered relay's claim reads it too). */
export async function hookWatermark(pool: pg.Pool, document: string): Promise<number | undefined> {
  const { rows } = await pool.query<{ through: string }>(
    "SELECT through FROM parley_hook_watermarks WHERE document = $1",
    [document],
  )
  return rows[0] ? Number(rows[0].through) : undefined
}

/**
 * This relay's enqueues that take the event log's lock, let on one at a time from before each takes a
 * pool connection until it holds the lock. Records commit one at a time under the lock anyway; what
 * the turns bound is how many connections wait for it: while another relay holds it (stalled, until
 * the server ends its session) one, instead of one per document written to, which left the appends
 * queued behind them for a connection.
 */
class LogTurns {
  private last: Promise<void> = Promise.resolve()

  /** Resolves once it is the caller's turn; `done` (idempotent) lets the next one on. */
  async next(): Promise<{ done: () => void }> {
    let done!: () => void
    const previous = this.last
    this.last = new Promise<void>((resolve) => {
      done = resolve
    })
    await previous
    return { done }
  }
}

/** Events one INSERT statement records: keeps a statement's parameters to a few MB. */
const RECORD_CHUNK = 500

interface DeliveryRow {
  seq: string
  document: string
  payload: string
  members: string | null
  target: string
  attempts: number
  next_at: string
  last_error: string | null
  dead_at: string | null
}

const SELECT = `SELECT d.seq, e.document, e.payload, e.members, d.target, d.attempts, d.next_at, d.last_error, d.dead_at
  FROM parley_hook_deliveries d JOIN parley_hook_events e ON e.seq = d.seq`
// `COLLATE "C"`: targets in code point order like the SQLite and memory outboxes, whatever the locale.
const ORDER = `ORDER BY d.seq, d.target COLLATE "C"`

/**
 * PostgreSQL refuses NUL in text; an error message from a handler may hold one. Without this the failed
 * attempt could not be recorded and the dispatcher would retry the delivery at once, forever.
 */
const storable = (text: string): string => text.replaceAll("\u0000", "\uFFFD")

/**
 * The durable outbox of a relay on PostgreSQL storage: tables
 * `parley_hook_events`, `parley_hook_deliveries` and `parley_hook_watermarks`
 * in the storage's database (the connection string's schema, by default
 * `public`). As with the SQLite outbox, an enqueue records the events, their
 * deliveries and the document's watermark in one transaction.
 *
 * Every commit returns once PostgreSQL has flushed its WAL (the default
 * `synchronous_commit = on`, which `PostgresStorage` relies on too), so what
 * an operation recorded survives a crash of the relay and of the database
 * server.
 *
 * The tables hold one queue per database (or schema): a relay resumes every
 * pending delivery in them when it starts, and dead-letters those whose target
 * it does not have. Relays sharing a database should run the same hooks.
 */
export class PostgresOutbox implements Outbox {
  private closed = false
  private readonly logTurns = new LogTurns()

  /**
   * `pool` is the backend's, with {@link OUTBOX_SCHEMA} created; `events` is
   * the log every enqueue records its events in, in the same transaction.
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly events: PostgresEventLog = new PostgresEventLog(pool),
    private readonly options: { readonly fence?: RecordFence } = {},
  ) {}

  private assertOpen(): void {
    if (this.closed) throw new Error("the hook outbox is closed")
  }

  async enqueue(batch: OutboxBatch): Promise<Delivery[]> {
    this.assertOpen()
    if (batch.events.length === 0 && batch.through === undefined) return []
    // Every relay's records take the log's lock (the member lists' too, the same one), so it is taken
    // before the fence row: the document's lock, the log's, then the row. A record that took the row first
    // and then waited for the log's lock, held by another relay stalled mid-record (its PostgreSQL link
    // black-holed until the server ended its session), held the row that this relay's appends of its own
    // conversation lock: its users' messages waited a second at a time, or were refused, as long as the
    // other relay's stall (an outside probe, KA K7). And one of this relay's records at a time waits for
    // the log's lock (see `LogTurns`): one per conversation written to took the connections appends need.
    const locksLog = batch.events.some((e) => isLogged(e.event) || e.targets.length > 0)
    const turn = locksLog ? await this.logTurns.next() : undefined
    const { out, logged } = await inTransaction(this.pool, async (client) => {
      // One enqueue of a document at a time (across relays too): sequence numbers are drawn inside the
      // transaction, so without the lock a later seq could commit first and be delivered ahead.
      await client.query("SELECT pg_advisory_xact_lock($1, hashtext($2))", [DOCUMENT_LOCK, batch.document])
      if (turn) {
        await lockEventLog(client)
        turn.done()
      }
      await this.options.fence?.(client, batch.document)
      const out: Delivery[] = []
      // Each event serialized once for the log and the outbox, its conversation once per change.
      const json = storedEventSerializer()
      // An event recorded already (the same id: a backlog another relay recorded, a record tried again)
      // is neither logged nor owed again; under the document's lock, so no other enqueue of it runs meanwhile.
      const fresh = await this.events.unrecorded(client, batch.events)
      const logged = await this.events.record(
        client,
        fresh.map((e) => e.event),
        json,
      )
      // One statement for the events with targets and one for their deliveries, not two per event: a
      // round trip each would cost a large frame's events seconds. Identities are drawn in the ORDER BY's
      // order (under the document's lock), so the sorted seqs match the events.
      const targeted = fresh.filter((e) => e.targets.length > 0)
      // Member lists (stored once per membership change) before the events that reference them.
      await ensurePostgresLists(
        client,
        targeted.map((e) => json(e.event)),
      )
      for (let start = 0; start < targeted.length; start += RECORD_CHUNK) {
        const chunk = targeted.slice(start, start + RECORD_CHUNK)
        const { rows } = await client.query<{ seq: string }>(
          `INSERT INTO parley_hook_events (document, payload, members)
           SELECT $1, p, m FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS x(p, m, n) ORDER BY n RETURNING seq`,
          [
            batch.document,
            chunk.map((e) => json(e.event).payload),
            chunk.map((e) => json(e.event).members?.ref ?? null),
          ],
        )
        const seqs = rows.map((r) => Number(r.seq)).sort((a, b) => a - b)
        const pairs = chunk.flatMap(({ targets }, i) => targets.map((target) => [seqs[i]!, target] as const))
        await client.query(
          "INSERT INTO parley_hook_deliveries (seq, target) SELECT * FROM unnest($1::bigint[], $2::text[])",
          [pairs.map((p) => p[0]), pairs.map((p) => p[1])],
        )
        chunk.forEach(({ event, targets }, i) => {
          for (const target of targets)
            out.push({
              seq: seqs[i]!,
              document: batch.document,
              target,
              event,
              attempts: 0,
              nextAttemptAt: 0,
            })
        })
      }
      if (batch.through !== undefined)
        await client.query(
          `INSERT INTO parley_hook_watermarks (document, through) VALUES ($1, $2)
           ON CONFLICT (document) DO UPDATE
             SET through = GREATEST(parley_hook_watermarks.through, EXCLUDED.through)`,
          [batch.document, batch.through],
        )
      return { out, logged }
    }).finally(() => turn?.done())
    this.events.published(logged)
    return out
  }

  async watermark(document: string): Promise<number | undefined> {
    this.assertOpen()
    return hookWatermark(this.pool, document)
  }

  async behind(): Promise<string[]> {
    this.assertOpen()
    // One index seek per watermark in `parley_updates` (primary key doc, position), the documents' table.
    const { rows } = await this.pool.query<{ document: string }>(
      `SELECT w.document FROM parley_hook_watermarks w
        WHERE EXISTS (SELECT 1 FROM parley_updates u WHERE u.doc = w.document AND u.position > w.through)
        ORDER BY w.document COLLATE "C"`,
    )
    return rows.map((row) => row.document)
  }

  async pending(document?: string): Promise<Delivery[]> {
    this.assertOpen()
    // One snapshot for the rows and their member lists: a list is swept only once no row references it.
    return inTransaction(
      this.pool,
      async (client) => {
        const { rows } =
          document === undefined
            ? await client.query<DeliveryRow>(`${SELECT} WHERE d.dead_at IS NULL ${ORDER}`)
            : await client.query<DeliveryRow>(
                `${SELECT} WHERE d.dead_at IS NULL AND e.document = $1 ${ORDER}`,
                [document],
              )
        const lists = await loadPostgresLists(
          client,
          rows.map((row) => row.members),
        )
        return rows.map((row) => toDelivery(row, lists))
      },
      SNAPSHOT,
    )
  }

  async pendingDocuments(): Promise<string[]> {
    this.assertOpen()
    const { rows } = await this.pool.query<{ document: string }>(
      `SELECT e.document FROM parley_hook_deliveries d JOIN parley_hook_events e ON e.seq = d.seq
        WHERE d.dead_at IS NULL GROUP BY e.document ORDER BY e.document COLLATE "C"`,
    )
    return rows.map((row) => row.document)
  }

  async pendingLanes(document?: string): Promise<OutboxLane[]> {
    this.assertOpen()
    const { rows } = await this.pool.query<OutboxLane>(
      `SELECT e.document, d.target FROM parley_hook_deliveries d JOIN parley_hook_events e ON e.seq = d.seq
        WHERE d.dead_at IS NULL ${document === undefined ? "" : "AND e.document = $1"}
        GROUP BY e.document, d.target ORDER BY e.document COLLATE "C", d.target COLLATE "C"`,
      document === undefined ? [] : [document],
    )
    return rows.map((row) => ({ document: row.document, target: row.target }))
  }

  async pendingPage(document: string, target: string, after: number, limit: number): Promise<Delivery[]> {
    this.assertOpen()
    // One snapshot for the rows and their member lists, as in {@link pending}.
    return inTransaction(
      this.pool,
      async (client) => {
        const { rows } = await client.query<DeliveryRow>(
          `${SELECT} WHERE d.dead_at IS NULL AND e.document = $1 AND d.target = $2 AND d.seq > $3 ORDER BY d.seq LIMIT $4`,
          [document, target, after, limit],
        )
        const lists = await loadPostgresLists(
          client,
          rows.map((row) => row.members),
        )
        return rows.map((row) => toDelivery(row, lists))
      },
      SNAPSHOT,
    )
  }

  async delivered(seq: number, target: string): Promise<void> {
    this.assertOpen()
    await inTransaction(this.pool, (client) => this.deliveredIn(client, seq, target))
  }

  /**
   * {@link delivered} inside the caller's transaction: a cluster records a
   * delivery's outcome only while its fencing token holds (`cluster/delivery-fence.ts`).
   */
  async deliveredIn(client: pg.ClientBase, seq: number, target: string): Promise<void> {
    this.assertOpen()
    // Locking the event first serialises the deliveries of one event: without it, two targets finishing
    // together would each still see the other's row and neither would remove the event.
    await client.query("SELECT 1 FROM parley_hook_events WHERE seq = $1 FOR UPDATE", [seq])
    await client.query("DELETE FROM parley_hook_deliveries WHERE seq = $1 AND target = $2", [seq, target])
    await client.query(
      "DELETE FROM parley_hook_events WHERE seq = $1 AND NOT EXISTS (SELECT 1 FROM parley_hook_deliveries WHERE seq = $1)",
      [seq],
    )
  }

  async retryLater(seq: number, target: string, attempts: number, nextAttemptAt: number, error: string) {
    await this.retryLaterIn(this.pool, seq, target, attempts, nextAttemptAt, error)
  }

  /** {@link retryLater} on the caller's connection (in its transaction). */
  async retryLaterIn(
    client: pg.ClientBase | pg.Pool,
    seq: number,
    target: string,
    attempts: number,
    nextAttemptAt: number,
    error: string,
  ): Promise<void> {
    this.assertOpen()
    await client.query(
      "UPDATE parley_hook_deliveries SET attempts = $1, next_at = $2, last_error = $3 WHERE seq = $4 AND target = $5",
      [attempts, nextAttemptAt, storable(error), seq, target],
    )
  }

  async deadLetter(seq: number, target: string, attempts: number, error: string, at: number) {
    await this.deadLetterIn(this.pool, seq, target, attempts, error, at)
  }

  /** {@link deadLetter} on the caller's connection (in its transaction). */
  async deadLetterIn(
    client: pg.ClientBase | pg.Pool,
    seq: number,
    target: string,
    attempts: number,
    error: string,
    at: number,
  ): Promise<void> {
    this.assertOpen()
    await client.query(
      "UPDATE parley_hook_deliveries SET attempts = $1, last_error = $2, dead_at = $3 WHERE seq = $4 AND target = $5",
      [attempts, storable(error), at, seq, target],
    )
  }

  async deadLetters(): Promise<DeadLetter[]> {
    this.assertOpen()
    const { rows, lists } = await inTransaction(
      this.pool,
      async (client) => {
        const { rows } = await client.query<DeliveryRow>(`${SELECT} WHERE d.dead_at IS NOT NULL ${ORDER}`)
        return {
          rows,
          lists: await loadPostgresLists(
            client,
            rows.map((row) => row.members),
          ),
        }
      },
      SNAPSHOT,
    )
    return rows.map((row) => ({
      ...toDelivery(row, lists),
      lastError: row.last_error ?? "",
      deadAt: row.dead_at === null ? 0 : Number(row.dead_at),
    }))
  }

  async replay(filter: DeadLetterFilter = {}): Promise<Delivery[]> {
    this.assertOpen()
    return inTransaction(this.pool, async (client) => {
      // FOR UPDATE: a concurrent replay (admin endpoint and CLI) waits instead of reviving the same rows twice.
      const { rows } = await client.query<DeliveryRow>(
        `${SELECT} WHERE d.dead_at IS NOT NULL ${ORDER} FOR UPDATE OF d`,
      )
      // The events of locked dead deliveries stay, and so do the lists they reference.
      const lists = await loadPostgresLists(
        client,
        rows.map((row) => row.members),
      )
      const chosen = rows.map((row) => toDelivery(row, lists)).filter((d) => matchesFilter(d, filter))
      if (chosen.length > 0)
        await client.query(
          `UPDATE parley_hook_deliveries d SET attempts = 0, next_at = 0, dead_at = NULL
           FROM unnest($1::bigint[], $2::text[]) AS c(seq, target)
           WHERE d.seq = c.seq AND d.target = c.target`,
          [chosen.map((d) => d.seq), chosen.map((d) => d.target)],
        )
      return chosen.map((d) => ({ ...d, attempts: 0, nextAttemptAt: 0 }))
    })
  }

  /** Refuses further calls; the backend ends the pool. */
  async close(): Promise<void> {
    this.closed = true
  }
}

/** Reads rows and the member lists they reference in one snapshot. */
const SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

function toDelivery(row: DeliveryRow, lists: ReadonlyMap<string, readonly Participant[]>): Delivery {
  return {
    seq: Number(row.seq),
    document: row.document,
    target: row.target,
    event: rehydrate(row.payload, row.members, lists),
    attempts: row.attempts,
    nextAttemptAt: Number(row.next_at),
    ...(row.last_error !== null ? { lastError: row.last_error } : {}),
  }
}
