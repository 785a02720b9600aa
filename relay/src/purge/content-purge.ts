import { ErrorCode, ParleyError } from "@parley/shared"
import type Database from "better-sqlite3"
import type pg from "pg"
import type { MemoryHistoryStore } from "../history/store.js"
import type { HookEvent } from "../hooks/events.js"
import type { MemoryEventLog } from "../hooks/memory-event-log.js"
import type { MemoryOutbox } from "../hooks/outbox.js"
import { inTransaction } from "../pg-transaction.js"
import { namesAnyMessage, type RedactionScope, redactEvent, redactPayload } from "./redact.js"

/**
 * The backend's part of a purge (relay README, "Deletion and erasure"): what
 * the relay cannot reach through a document's log and snapshot. The relay
 * purges the document itself (a relay write deleting the content, then a
 * compaction of a garbage-collected Y.Doc); this removes the rest.
 */
export interface ContentPurge {
  /**
   * Rewrites the stored hook events of conversation `conversationId` (document
   * `document`): the outbox payloads (pending, delivered and dead letters
   * alike) and the durable event log, without the content `scope` names.
   */
  redactEvents(document: string, conversationId: string, scope: RedactionScope): Promise<void>
  /** Deletes every sealed history segment of `document` (and their id filters). */
  dropSegments(document: string): Promise<void>
  /**
   * Makes what was deleted or rewritten unreadable in the database's files
   * too, not only in its tables (see the implementations).
   */
  scrub(): Promise<void>
  /**
   * Records, durably, that `document` may owe a purge: the relay calls it
   * before it stores a change that deletes, so that a relay killed before the
   * purge finds the document at its next start ({@link owed}) even if nobody
   * opens it. A record without a purge owed is harmless (the relay loads the
   * document, finds nothing owed and clears it).
   */
  owe(document: string): Promise<void>
  /** The documents recorded by {@link owe} and not cleared since. */
  owed(): Promise<string[]>
  /** Clears {@link owe}'s record of `document`: its purges are done. */
  paid(document: string): Promise<void>
}

/** The table of documents that may owe a purge (see {@link ContentPurge.owe}). */
const SQLITE_PURGES_OWED_SCHEMA =
  "CREATE TABLE IF NOT EXISTS purges_owed (doc TEXT PRIMARY KEY, since INTEGER NOT NULL)"

/** PostgreSQL's (created with the backend's other tables: `PostgresBackend.open`). */
export const PURGES_OWED_SCHEMA =
  "CREATE TABLE IF NOT EXISTS parley_purges_owed (doc TEXT PRIMARY KEY, since BIGINT NOT NULL);"

/** Most message ids a purge looks for in the outbox's payloads with SQLite's `instr` (one pass per id). */
const SQL_NEEDLES = 8
/** Message ids per query of the event log's index (one bound parameter each). */
const LOG_IDS_PER_QUERY = 500

/** Longest a scrub tries to truncate the write-ahead log before it fails. */
const SCRUB_WAIT_MS = 10_000
/** Pause between a scrub's attempts (a checkpoint of the thread's takes a few ms). */
const SCRUB_RETRY_MS = 5

/**
 * SQLite: the database runs with `secure_delete=ON` (set by the backend), so
 * SQLite overwrites deleted content with zeros in its pages; {@link scrub}
 * then checkpoints the write-ahead log and truncates it, because `-wal` holds
 * the old pages until a checkpoint copies them back and the file is reset.
 */
export class SqliteContentPurge implements ContentPurge {
  private readonly statements = new Map<string, Database.Statement<unknown[], unknown>>()

  constructor(private readonly db: Database.Database) {
    db.exec(SQLITE_PURGES_OWED_SCHEMA)
  }

  async owe(document: string): Promise<void> {
    this.statement("INSERT OR IGNORE INTO purges_owed (doc, since) VALUES (?, ?)").run(document, Date.now())
  }

  async owed(): Promise<string[]> {
    const rows = this.statement("SELECT doc FROM purges_owed ORDER BY since").all() as { doc: string }[]
    return rows.map((row) => row.doc)
  }

  async paid(document: string): Promise<void> {
    this.statement("DELETE FROM purges_owed WHERE doc = ?").run(document)
  }

  async redactEvents(document: string, conversationId: string, scope: RedactionScope): Promise<void> {
    // The outbox holds what targets are still owed (a backlog while one fails, its dead letters): for some
    // messages, SQLite itself picks the rows naming one of them (see payloadNeedles), no row read into
    // JavaScript for nothing. The log is the conversation's whole history: a message's own rows only,
    // through the indexed column `message` (see messageOf), so a deletion costs what it names.
    const ids = scope.kind === "messages" ? [...scope.ids] : []
    const needles = scopeNeedles(scope)
    const outbox = (): { seq: number; payload: string }[] => {
      const rows = (sql: string, ...args: string[]) =>
        this.statement(sql).all(document, ...args) as { seq: number; payload: string }[]
      if (!needles) return rows("SELECT seq, payload FROM hook_events WHERE document = ?")
      // instr costs a pass over each payload per id: past a few ids, one pass in JavaScript for them all.
      if (scope.kind === "messages" && ids.length > SQL_NEEDLES)
        return rows("SELECT seq, payload FROM hook_events WHERE document = ?").filter((row) =>
          namesAnyMessage(row.payload, scope.ids),
        )
      const naming = needles.map(() => "instr(payload, ?) > 0").join(" OR ")
      return rows(`SELECT seq, payload FROM hook_events WHERE document = ? AND (${naming})`, ...needles)
    }
    const log = (): { id: number; payload: string }[] => {
      if (scope.kind === "conversation")
        return this.statement("SELECT id, payload FROM event_log WHERE conversation = ?").all(
          conversationId,
        ) as { id: number; payload: string }[]
      // A user's name and profile ride on any event of theirs: the conversation's rows that name them.
      if (scope.kind === "user")
        return this.statement(
          "SELECT id, payload FROM event_log WHERE conversation = ? AND instr(payload, ?) > 0",
        ).all(conversationId, ...needles!) as { id: number; payload: string }[]
      const found: { id: number; payload: string }[] = []
      for (let start = 0; start < ids.length; start += LOG_IDS_PER_QUERY) {
        const chunk = ids.slice(start, start + LOG_IDS_PER_QUERY)
        const sql = `SELECT id, payload FROM event_log WHERE conversation = ? AND message IN (${chunk.map(() => "?").join(", ")})`
        found.push(
          ...(this.statement(sql).all(conversationId, ...chunk) as { id: number; payload: string }[]),
        )
      }
      return found
    }
    const setOutbox = this.db.prepare("UPDATE hook_events SET payload = ? WHERE seq = ?")
    const setLog = this.db.prepare("UPDATE event_log SET payload = ? WHERE id = ?")
    this.db.transaction(() => {
      for (const row of outbox()) {
        const payload = redactPayload(row.payload, scope)
        if (payload !== undefined) setOutbox.run(payload, row.seq)
      }
      for (const row of log()) {
        const payload = redactPayload(row.payload, scope)
        if (payload !== undefined) setLog.run(payload, row.id)
      }
    })()
  }

  /** A statement prepared once per text (a deletion's statements differ only in how many ids they name). */
  private statement(sql: string): Database.Statement<unknown[], unknown> {
    let prepared = this.statements.get(sql)
    if (!prepared) {
      // Bounded: one per count of ids in a deletion, which a change's deletions bound.
      if (this.statements.size >= 64) this.statements.clear()
      prepared = this.db.prepare<unknown[], unknown>(sql)
      this.statements.set(sql, prepared)
    }
    return prepared
  }

  async dropSegments(document: string): Promise<void> {
    this.db.prepare("DELETE FROM history_segments WHERE doc = ?").run(document)
    this.db.prepare("DELETE FROM history_id_filters WHERE doc = ?").run(document)
  }

  async scrub(): Promise<void> {
    // Busy while another connection checkpoints (the checkpointer thread, storage/wal-checkpointer.ts):
    // SQLite then returns at once, calling no busy handler, and truncates nothing. So: again until done.
    const deadline = Date.now() + SCRUB_WAIT_MS
    for (;;) {
      const [result] = this.db.pragma("wal_checkpoint(TRUNCATE)") as { busy: number }[]
      if (result?.busy === 0) return
      if (Date.now() >= deadline)
        throw new ParleyError(
          ErrorCode.STORAGE_UNAVAILABLE,
          `the write-ahead log could not be checkpointed and truncated within ${SCRUB_WAIT_MS} ms`,
        )
      await new Promise((resolve) => setTimeout(resolve, SCRUB_RETRY_MS))
    }
  }
}

/**
 * What a stored payload holding message `id` contains: the id as a JSON
 * string. Payloads are `JSON.stringify`'s output (so is every redacted one),
 * and a message is named in them only as such a string (`id`, `messageId`),
 * so a payload without any of these holds nothing {@link redactPayload} would
 * change for these messages.
 */
export const payloadNeedles = (ids: ReadonlySet<string>): string[] => [...ids].map((id) => JSON.stringify(id))

/** What every payload `scope` changes holds (see {@link payloadNeedles}); undefined: any payload may. */
const scopeNeedles = (scope: RedactionScope): string[] | undefined =>
  scope.kind === "messages"
    ? payloadNeedles(scope.ids)
    : scope.kind === "user"
      ? payloadNeedles(new Set([scope.user]))
      : undefined

/** Least time between two VACUUMs of a {@link PostgresContentPurge}, in ms. */
export const POSTGRES_VACUUM_INTERVAL_MS = 60_000

/**
 * PostgreSQL: an UPDATE or DELETE leaves the old tuple in its heap page until
 * VACUUM reclaims it, so {@link scrub} has the tables a purge touches vacuumed
 * (a plain VACUUM: no exclusive lock, the relay keeps serving), in the
 * background and at most once per {@link POSTGRES_VACUUM_INTERVAL_MS} (every
 * message deletion asks for one; later asks join the next run). VACUUM makes
 * the space reusable, it does not zero it: the bytes stay in the data files
 * until overwritten (VACUUM FULL rewrites the tables, under an exclusive lock:
 * the operator's call). The server's WAL, replicas and backups keep their
 * copies until they are recycled: that retention is the operator's to set.
 */
export class PostgresContentPurge implements ContentPurge {
  private lastVacuum = 0
  private scheduled: Promise<void> | undefined

  constructor(private readonly pool: pg.Pool) {}

  async owe(document: string): Promise<void> {
    await this.pool.query(
      "INSERT INTO parley_purges_owed (doc, since) VALUES ($1, $2) ON CONFLICT (doc) DO NOTHING",
      [document, Date.now()],
    )
  }

  async owed(): Promise<string[]> {
    const { rows } = await this.pool.query<{ doc: string }>(
      "SELECT doc FROM parley_purges_owed ORDER BY since",
    )
    return rows.map((row) => row.doc)
  }

  async paid(document: string): Promise<void> {
    await this.pool.query("DELETE FROM parley_purges_owed WHERE doc = $1", [document])
  }

  async redactEvents(document: string, conversationId: string, scope: RedactionScope): Promise<void> {
    // `inTransaction`: a connection the server terminates mid-transaction must not crash the process.
    await inTransaction(this.pool, async (client) => {
      // For some messages or a user, only the rows whose payload names one of them (see payloadNeedles).
      const needles = scopeNeedles(scope)
      const naming = needles
        ? " AND EXISTS (SELECT 1 FROM unnest($2::text[]) n WHERE strpos(payload, n) > 0)"
        : ""
      const outbox = await client.query<{ seq: string; payload: string }>(
        `SELECT seq, payload FROM parley_hook_events WHERE document = $1${naming} FOR UPDATE`,
        needles ? [document, needles] : [document],
      )
      for (const row of outbox.rows) {
        const payload = redactPayload(row.payload, scope)
        if (payload !== undefined)
          await client.query("UPDATE parley_hook_events SET payload = $1 WHERE seq = $2", [payload, row.seq])
      }
      // A message's own rows only (the indexed column `message`): see SqliteContentPurge.redactEvents.
      const log =
        scope.kind === "messages"
          ? await client.query<{ id: string; payload: string }>(
              "SELECT id, payload FROM parley_event_log WHERE conversation = $1 AND message = ANY($2::text[]) FOR UPDATE",
              [conversationId, [...scope.ids]],
            )
          : await client.query<{ id: string; payload: string }>(
              `SELECT id, payload FROM parley_event_log WHERE conversation = $1${naming} FOR UPDATE`,
              needles ? [conversationId, needles] : [conversationId],
            )
      for (const row of log.rows) {
        const payload = redactPayload(row.payload, scope)
        if (payload !== undefined)
          await client.query("UPDATE parley_event_log SET payload = $1 WHERE id = $2", [payload, row.id])
      }
    })
  }

  async dropSegments(document: string): Promise<void> {
    await this.pool.query("DELETE FROM parley_history_segments WHERE doc = $1", [document])
    await this.pool.query("DELETE FROM parley_history_id_filters WHERE doc = $1", [document])
  }

  async scrub(): Promise<void> {
    if (this.scheduled) return
    const wait = Math.max(0, this.lastVacuum + POSTGRES_VACUUM_INTERVAL_MS - Date.now())
    this.scheduled = new Promise<void>((resolve) => setTimeout(resolve, wait).unref())
      .then(() => this.vacuum())
      // Autovacuum reclaims the space too, later: a failed run (the pool closed, a lock) is not retried.
      .catch(() => undefined)
      .finally(() => {
        this.lastVacuum = Date.now()
        this.scheduled = undefined
      })
  }

  private async vacuum(): Promise<void> {
    for (const table of [
      "parley_updates",
      "parley_snapshots",
      "parley_history_segments",
      "parley_hook_events",
      "parley_event_log",
    ])
      await this.pool.query(`VACUUM ${table}`)
  }
}

/**
 * Memory (`--storage memory`, tests): the outbox's events (pending and dead
 * letters), the event log and the segments live in the process; a purge
 * rewrites or drops them there, so that the API's event stream and the
 * dead-letter listing no longer show deleted text. Nothing is on disk.
 */
export class MemoryContentPurge implements ContentPurge {
  constructor(
    private readonly outbox: MemoryOutbox,
    private readonly events: MemoryEventLog,
    private readonly history: MemoryHistoryStore,
  ) {}

  async redactEvents(document: string, conversationId: string, scope: RedactionScope): Promise<void> {
    const rewrite = (event: HookEvent) => redactEvent(event, scope)
    this.outbox.rewriteEvents(document, rewrite)
    this.events.rewriteEvents(conversationId, rewrite, scope.kind === "messages" ? scope.ids : undefined)
  }

  async dropSegments(document: string): Promise<void> {
    this.history.drop(document)
  }

  async scrub(): Promise<void> {}

  /** In memory: the documents do not outlive the process either. */
  private readonly owing = new Set<string>()

  async owe(document: string): Promise<void> {
    this.owing.add(document)
  }

  async owed(): Promise<string[]> {
    return [...this.owing]
  }

  async paid(document: string): Promise<void> {
    this.owing.delete(document)
  }
}
