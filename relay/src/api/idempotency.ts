import type Database from "better-sqlite3"
import type pg from "pg"

/**
 * What the relay keeps of an idempotent send (`POST .../messages` with an
 * `Idempotency-Key` or a message `id`): under the conversation and the
 * message id, where the message is in the conversation's order. No content:
 * a replay is judged against the message itself, read at its number.
 */
export interface IdempotencyRecord {
  /**
   * The conversation's last sequence number before the message could have
   * been stored: if an attempt stored it, it is numbered above this.
   */
  readonly since: number
  /** The message's sequence number, once an attempt saw it stored. */
  readonly seq?: number
}

/**
 * The HTTP API's idempotency records, one per (conversation, message id), in
 * the relay's backend: a sealed message is not in the live document any
 * more, and finding it by id would mean reading the whole sealed history, so
 * a replay finds its number here and reads the one segment that holds it.
 * Records last as long as the backend; they hold no content. Every backend's
 * store passes `relay/test/conformance/idempotency.ts`.
 */
export interface IdempotencyStore {
  /**
   * Begins a send of `messageId` in `conversation`, unless one began before:
   * resolves undefined when this call created the record (with `since`), else
   * the record as it stands. Of racing calls exactly one creates it.
   */
  begin(
    conversation: string,
    messageId: string,
    since: number,
    now: number,
  ): Promise<IdempotencyRecord | undefined>
  /** Records the sequence number the message got. */
  complete(conversation: string, messageId: string, seq: number): Promise<void>
  /**
   * Moves the `since` of a record without a number forward to `since` (an
   * attempt that failed after seeing the message absent through it).
   */
  advance(conversation: string, messageId: string, since: number): Promise<void>
}

/** Records in process memory (the memory backend: nothing survives a restart). */
export class MemoryIdempotencyStore implements IdempotencyStore {
  private readonly records = new Map<string, { since: number; seq?: number }>()

  async begin(
    conversation: string,
    messageId: string,
    since: number,
  ): Promise<IdempotencyRecord | undefined> {
    const key = `${conversation}\u0000${messageId}`
    const found = this.records.get(key)
    if (found) return { ...found }
    this.records.set(key, { since })
    return undefined
  }

  async complete(conversation: string, messageId: string, seq: number): Promise<void> {
    const found = this.records.get(`${conversation}\u0000${messageId}`)
    if (found) found.seq = seq
  }

  async advance(conversation: string, messageId: string, since: number): Promise<void> {
    const found = this.records.get(`${conversation}\u0000${messageId}`)
    if (found && found.seq === undefined && found.since < since) found.since = since
  }
}

/** The records' table, in SQLite and PostgreSQL alike. */
export const IDEMPOTENCY_SCHEMA = `CREATE TABLE IF NOT EXISTS parley_api_sends (
  doc TEXT NOT NULL,
  message_id TEXT NOT NULL,
  since BIGINT NOT NULL,
  seq BIGINT,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (doc, message_id)
);`

interface RecordRow {
  since: number | string
  seq: number | string | null
}

const recordOfRow = (row: RecordRow): IdempotencyRecord => ({
  since: Number(row.since),
  ...(row.seq !== null ? { seq: Number(row.seq) } : {}),
})

/** Records in the relay's SQLite database (`synchronous=FULL`: durable when a call resolves). */
export class SqliteIdempotencyStore implements IdempotencyStore {
  private readonly statements

  constructor(db: Database.Database) {
    db.exec(IDEMPOTENCY_SCHEMA)
    this.statements = {
      insert: db.prepare(
        "INSERT INTO parley_api_sends (doc, message_id, since, seq, created_at) VALUES (?, ?, ?, NULL, ?) ON CONFLICT DO NOTHING",
      ),
      get: db.prepare<[string, string], RecordRow>(
        "SELECT since, seq FROM parley_api_sends WHERE doc = ? AND message_id = ?",
      ),
      complete: db.prepare("UPDATE parley_api_sends SET seq = ? WHERE doc = ? AND message_id = ?"),
      advance: db.prepare(
        "UPDATE parley_api_sends SET since = ? WHERE doc = ? AND message_id = ? AND seq IS NULL AND since < ?",
      ),
    }
  }

  async begin(
    conversation: string,
    messageId: string,
    since: number,
    now: number,
  ): Promise<IdempotencyRecord | undefined> {
    if (this.statements.insert.run(conversation, messageId, since, now).changes > 0) return undefined
    const row = this.statements.get.get(conversation, messageId)
    if (!row) throw new Error(`the idempotency record of ${messageId} in ${conversation} vanished`)
    return recordOfRow(row)
  }

  async complete(conversation: string, messageId: string, seq: number): Promise<void> {
    this.statements.complete.run(seq, conversation, messageId)
  }

  async advance(conversation: string, messageId: string, since: number): Promise<void> {
    this.statements.advance.run(since, conversation, messageId, since)
  }
}

/** Records in PostgreSQL, table `parley_api_sends` of the backend's schema (shared by a cluster's relays). */
export class PostgresIdempotencyStore implements IdempotencyStore {
  /** `pool` is the backend's, with {@link IDEMPOTENCY_SCHEMA} created. */
  constructor(private readonly pool: pg.Pool) {}

  async begin(
    conversation: string,
    messageId: string,
    since: number,
    now: number,
  ): Promise<IdempotencyRecord | undefined> {
    // A conflicting insert not yet committed makes this one wait for its outcome: the row read after a
    // conflict is committed.
    const inserted = await this.pool.query(
      `INSERT INTO parley_api_sends (doc, message_id, since, seq, created_at) VALUES ($1, $2, $3, NULL, $4)
       ON CONFLICT DO NOTHING`,
      [conversation, messageId, since, now],
    )
    if ((inserted.rowCount ?? 0) > 0) return undefined
    const { rows } = await this.pool.query<RecordRow>(
      "SELECT since, seq FROM parley_api_sends WHERE doc = $1 AND message_id = $2",
      [conversation, messageId],
    )
    if (!rows[0]) throw new Error(`the idempotency record of ${messageId} in ${conversation} vanished`)
    return recordOfRow(rows[0])
  }

  async complete(conversation: string, messageId: string, seq: number): Promise<void> {
    await this.pool.query("UPDATE parley_api_sends SET seq = $1 WHERE doc = $2 AND message_id = $3", [
      seq,
      conversation,
      messageId,
    ])
  }

  async advance(conversation: string, messageId: string, since: number): Promise<void> {
    await this.pool.query(
      "UPDATE parley_api_sends SET since = $1 WHERE doc = $2 AND message_id = $3 AND seq IS NULL AND since < $1",
      [since, conversation, messageId],
    )
  }
}
