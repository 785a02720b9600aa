import { createHash } from "node:crypto"
import type { Participant } from "@parley/shared"
import type Database from "better-sqlite3"
import type pg from "pg"
import type { HookEvent } from "./events.js"
import { participantsJson, serializedSubjects } from "./events.js"

/**
 * A conversation's member list as stored once for the events that list it:
 * `ref` (the SHA-256 of `json`, base64url) is what a stored event holds in
 * place of `conversation.participants`.
 */
export interface MemberList {
  readonly ref: string
  readonly json: string
}

/**
 * An event as the outbox and the event log store it: `payload` is its JSON
 * without `conversation.participants` when `members` names the stored list
 * that goes there (a 1,000-member room's list is ~80 KB, and every event of
 * every message carried it), else the event's whole JSON.
 */
export interface StoredEvent {
  readonly payload: string
  readonly members?: MemberList
}

/** The ref of each list `participantsOf` returned (frozen, one per membership change): hashed once. */
const refs = new WeakMap<readonly Participant[], MemberList>()

/** `list` with its JSON and content address; made once per frozen list. */
export function memberListOf(list: readonly Participant[]): MemberList {
  let stored = refs.get(list)
  if (stored === undefined) {
    const json = participantsJson(list)
    stored = { ref: createHash("sha256").update(json).digest("base64url"), json }
    if (Object.isFrozen(list)) refs.set(list, stored)
  }
  return stored
}

/** {@link conversationHead} of frozen conversations, made once per conversation object. */
const frozenHeads = new WeakMap<object, StoredEvent | null>()

/**
 * A serializer of events to what the stores write, for one batch: the events
 * of one change share one conversation object, whose JSON (without its
 * participants) is made once; the member list is hashed once per membership
 * change. An event whose conversation is not the usual shape (participants
 * the last key, an array) is stored whole.
 */
export function storedEventSerializer(): (event: HookEvent) => StoredEvent {
  const conversations = new Map<object, StoredEvent | null>()
  const done = new Map<HookEvent, StoredEvent>()
  return (event) => {
    let stored = done.get(event)
    if (stored !== undefined) return stored
    const conversation = event.conversation as object | undefined
    let shared: StoredEvent | null | undefined = null
    if (Object.keys(event).length === 3 && typeof conversation === "object" && conversation !== null) {
      // A frozen conversation (`conversationOf`'s, the same object until the conversation changes) is
      // serialized once for all the changes that carry it; any other once per batch.
      const cache = Object.isFrozen(conversation) ? frozenHeads : conversations
      shared = cache.get(conversation)
      if (shared === undefined) {
        shared = conversationHead(conversation as HookEvent["conversation"])
        cache.set(conversation, shared)
      }
    }
    if (shared === null) stored = { payload: JSON.stringify(event) }
    else {
      const subject = serializedSubjects.get(event.subject)?.() ?? JSON.stringify(event.subject)
      stored = {
        payload: `{"event":${JSON.stringify(event.event)},"subject":${subject},"conversation":${shared.payload}}`,
        ...(shared.members ? { members: shared.members } : {}),
      }
    }
    done.set(event, stored)
    return stored
  }
}

/** The conversation's JSON without its participants, and their list; null when not the usual shape. */
function conversationHead(conversation: HookEvent["conversation"]): StoredEvent | null {
  const keys = Object.keys(conversation)
  if (keys[keys.length - 1] !== "participants" || !Array.isArray(conversation.participants)) return null
  const { participants, ...rest } = conversation
  return { payload: JSON.stringify(rest), members: memberListOf(participants) }
}

/** The distinct member lists of `stored`. */
export function listsOf(stored: Iterable<StoredEvent>): MemberList[] {
  const lists = new Map<string, MemberList>()
  for (const { members } of stored) if (members) lists.set(members.ref, members)
  return [...lists.values()]
}

/** Parsed lists by ref, the most recently used kept: a stream reading a big room's events parses its list once. */
const parsed = new Map<string, readonly Participant[]>()
const PARSED_CACHE_SIZE = 64

/** The parsed (frozen) list of `ref` from its `json`, cached by ref (content-addressed, so always valid). */
export function parsedList(ref: string, json: string): readonly Participant[] {
  let list = parsed.get(ref)
  if (list !== undefined) {
    parsed.delete(ref)
    parsed.set(ref, list)
    return list
  }
  list = Object.freeze((JSON.parse(json) as Participant[]).map((p) => Object.freeze(p)))
  if (parsed.size >= PARSED_CACHE_SIZE) parsed.delete(parsed.keys().next().value as string)
  parsed.set(ref, list)
  return list
}

/** A cached parsed list, if any (so that reads need not load its JSON). */
export const cachedList = (ref: string): readonly Participant[] | undefined => parsed.get(ref)

/**
 * The event stored as `payload` with member list `ref` (null: the payload is
 * whole, as every row written before lists were stored apart). `lists` holds
 * the lists of the rows read; a missing one is damage and throws.
 */
export function rehydrate(
  payload: string,
  ref: string | null,
  lists: ReadonlyMap<string, readonly Participant[]>,
): HookEvent {
  const event = JSON.parse(payload) as HookEvent
  if (ref === null) return event
  const list = lists.get(ref)
  if (list === undefined)
    throw new Error(`stored member list ${ref} is missing`)
    // The last key, as it was when the event was serialized: the event's JSON is what it was.
  ;(event.conversation as { participants: readonly Participant[] }).participants = list
  return event
}

const SQLITE_SCHEMA = `
CREATE TABLE IF NOT EXISTS member_lists (
  ref TEXT PRIMARY KEY,
  json TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_list_uses (
  ref TEXT PRIMARY KEY,
  last_id INTEGER NOT NULL
) WITHOUT ROWID;
`

/**
 * The member lists of the SQLite backend (table `member_lists`), shared by
 * the outbox (`hook_events.members`) and the event log (`event_log.members`).
 * A list is written when the first event referencing it is; {@link sweep}
 * removes those no stored event references.
 *
 * Which lists the event log references is kept as each list's newest event
 * id (`member_list_uses`, written with the events): the log is pruned from
 * its oldest id, so a list whose newest event is pruned is referenced by none.
 * An index of `event_log.members` (as before) cost a leaf page per
 * conversation and commit (the lists' refs are random), a third of the pages
 * a busy relay's commits wrote. The outbox's rows live until delivered (few),
 * so the sweep reads them whole, once, and they need no index either.
 */
export class SqliteMemberLists {
  private readonly statements

  /** Prepared on first use: it names every table that references lists. */
  private sweepStatement: Database.Statement | undefined

  constructor(private readonly db: Database.Database) {
    this.db.exec(SQLITE_SCHEMA)
    this.statements = {
      has: this.db.prepare<[string], unknown>("SELECT 1 FROM member_lists WHERE ref = ?").pluck(),
      insert: this.db.prepare<[string, string], unknown>(
        "INSERT OR IGNORE INTO member_lists (ref, json) VALUES (?, ?)",
      ),
      get: this.db.prepare<[string], string>("SELECT json FROM member_lists WHERE ref = ?").pluck(),
      used: this.db.prepare<[string, number], unknown>(
        "INSERT INTO member_list_uses (ref, last_id) VALUES (?, ?) ON CONFLICT(ref) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
      ),
    }
  }

  /**
   * Gives `table` (`event_log`, `hook_events`) its `members` column (added to
   * an older database, whose rows keep their whole payloads). A database of
   * an earlier version had an index on it: for the event log, its lists'
   * newest ids are read from it into `member_list_uses` before it goes.
   */
  adopt(table: "event_log" | "hook_events"): void {
    const columns = this.db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]
    if (!columns.some((c) => c.name === "members"))
      this.db.exec(`ALTER TABLE ${table} ADD COLUMN members TEXT`)
    const index = `${table}_by_members`
    const indexed = this.db
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?")
      .pluck()
      .get(index)
    if (indexed !== undefined)
      this.db.transaction(() => {
        if (table === "event_log")
          this.db.exec(
            `INSERT INTO member_list_uses (ref, last_id)
               SELECT members, MAX(id) FROM event_log WHERE members IS NOT NULL GROUP BY members
               ON CONFLICT(ref) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)`,
          )
        this.db.exec(`DROP INDEX ${index}`)
      })()
    this.sweepStatement = undefined
  }

  /** Records (inside the event log's transaction) that event `id` references list `ref`. */
  used(ref: string, id: number): void {
    this.statements.used.run(ref, id)
  }

  /**
   * Writes the lists of `stored` not yet written (inside the caller's
   * transaction). `ensured`: refs already ensured in this transaction, skipped
   * and added to (the outbox and the event log store the same events' lists:
   * one lookup per list and transaction instead of one per store and change).
   */
  ensure(stored: Iterable<StoredEvent>, ensured?: Set<string>): void {
    // The lookup first: binding an 80 KB list per message only to have it ignored costs a copy.
    for (const list of listsOf(stored)) {
      if (ensured?.has(list.ref)) continue
      if (this.statements.has.get(list.ref) === undefined) this.statements.insert.run(list.ref, list.json)
      ensured?.add(list.ref)
    }
  }

  /** The parsed lists of `refs` (nulls skipped). */
  load(refs: Iterable<string | null>): Map<string, readonly Participant[]> {
    const out = new Map<string, readonly Participant[]>()
    for (const ref of refs) {
      if (ref === null || out.has(ref)) continue
      const cached = cachedList(ref)
      if (cached) {
        out.set(ref, cached)
        continue
      }
      const json = this.statements.get.get(ref) as string | undefined
      if (json !== undefined) out.set(ref, parsedList(ref, json))
    }
    return out
  }

  /** Deletes the lists no stored event references (in any table that stores events with lists); returns how many. */
  sweep(): number {
    if (!this.sweepStatement) {
      const has = (table: string) =>
        (this.db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).some(
          (c) => c.name === "members",
        )
      const kept: string[] = []
      // The log's events above `pruned_through` are all there, those at or below it all gone.
      if (has("event_log"))
        kept.push(`ref IN (SELECT ref FROM member_list_uses WHERE last_id > COALESCE(
          (SELECT value FROM event_log_state WHERE name = 'pruned_through'), 0))`)
      // NOT IN: the outbox's rows read once (a set), not once per list.
      const unreferenced = [
        ...(kept.length > 0 ? [`NOT (${kept.join(" OR ")})`] : []),
        ...(has("hook_events")
          ? ["ref NOT IN (SELECT members FROM hook_events WHERE members IS NOT NULL)"]
          : []),
      ]
      const uses = has("event_log")
        ? this.db.prepare(
            `DELETE FROM member_list_uses WHERE last_id <= COALESCE(
               (SELECT value FROM event_log_state WHERE name = 'pruned_through'), 0)`,
          )
        : undefined
      const lists = this.db.prepare(
        `DELETE FROM member_lists${unreferenced.length > 0 ? ` WHERE ${unreferenced.join(" AND ")}` : ""}`,
      )
      this.sweepStatement = lists
      this.sweepUses = uses
    }
    const sweep = this.db.transaction(() => {
      const changes = this.sweepStatement!.run().changes
      this.sweepUses?.run()
      return changes
    })
    return sweep()
  }

  /** Forgets the uses of pruned events (with {@link sweepStatement}). */
  private sweepUses: Database.Statement | undefined
}

/**
 * Adds the text column `column` (default `members`) to `table` in a database
 * of an earlier version (its rows keep whole payloads). Looked up first:
 * `ADD COLUMN IF NOT EXISTS` would take the table's exclusive lock at every
 * start, queueing behind other relays' work.
 */
export function addPostgresColumn(table: string, column = "members"): string {
  return `DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                  WHERE table_schema = current_schema() AND table_name = '${table}' AND column_name = '${column}') THEN
    ALTER TABLE ${table} ADD COLUMN ${column} TEXT;
  END IF;
END $$;`
}

/** The PostgreSQL member lists' table, and the event log's `members` column (see `EVENT_LOG_SCHEMA`). */
export const POSTGRES_MEMBER_LISTS_SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_member_lists (
  ref TEXT PRIMARY KEY,
  json TEXT NOT NULL
);
${addPostgresColumn("parley_event_log")}
CREATE INDEX IF NOT EXISTS parley_event_log_by_members ON parley_event_log (members) WHERE members IS NOT NULL;
`

/** The outbox's `members` column (see `OUTBOX_SCHEMA`). */
export const POSTGRES_OUTBOX_MEMBERS_SCHEMA = `
${addPostgresColumn("parley_hook_events")}
CREATE INDEX IF NOT EXISTS parley_hook_events_by_members ON parley_hook_events (members) WHERE members IS NOT NULL;
`

/**
 * Taken (transaction-scoped) by every transaction that writes a list and by
 * the sweep: without it a sweep could delete a list another relay's
 * uncommitted events are about to reference. The event log's lock (writers
 * already serialize on it to commit ids in order).
 */
export const MEMBER_LIST_LOCK = 0x50726c65

/** Writes the lists of `stored` on `client` (in its transaction), under {@link MEMBER_LIST_LOCK}. */
export async function ensurePostgresLists(
  client: pg.ClientBase,
  stored: Iterable<StoredEvent>,
): Promise<void> {
  const lists = listsOf(stored)
  if (lists.length === 0) return
  await client.query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", [MEMBER_LIST_LOCK])
  const { rows } = await client.query<{ ref: string }>(
    "SELECT ref FROM parley_member_lists WHERE ref = ANY($1::text[])",
    [lists.map((l) => l.ref)],
  )
  const have = new Set(rows.map((r) => r.ref))
  const missing = lists.filter((l) => !have.has(l.ref))
  if (missing.length > 0)
    await client.query(
      "INSERT INTO parley_member_lists (ref, json) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
      [missing.map((l) => l.ref), missing.map((l) => l.json)],
    )
}

/** The parsed lists of `refs` (nulls skipped), read on `client`. */
export async function loadPostgresLists(
  client: pg.ClientBase | pg.Pool,
  refs: Iterable<string | null>,
): Promise<Map<string, readonly Participant[]>> {
  const out = new Map<string, readonly Participant[]>()
  const wanted = new Set<string>()
  for (const ref of refs) {
    if (ref === null || out.has(ref)) continue
    const cached = cachedList(ref)
    if (cached) out.set(ref, cached)
    else wanted.add(ref)
  }
  if (wanted.size > 0) {
    const { rows } = await client.query<{ ref: string; json: string }>(
      "SELECT ref, json FROM parley_member_lists WHERE ref = ANY($1::text[])",
      [[...wanted]],
    )
    for (const row of rows) out.set(row.ref, parsedList(row.ref, row.json))
  }
  return out
}

/** Deletes the lists no stored event references, under {@link MEMBER_LIST_LOCK}; returns how many. */
export async function sweepPostgresLists(client: pg.ClientBase): Promise<number> {
  await client.query("SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", [MEMBER_LIST_LOCK])
  const { rowCount } = await client.query(
    `DELETE FROM parley_member_lists l WHERE
       NOT EXISTS (SELECT 1 FROM parley_event_log e WHERE e.members = l.ref) AND
       NOT EXISTS (SELECT 1 FROM parley_hook_events h WHERE h.members = l.ref)`,
  )
  return rowCount ?? 0
}
