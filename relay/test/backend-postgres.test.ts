import pg from "pg"
import { describe, expect, it } from "vitest"
import { PostgresBackend } from "../src/backend/postgres.js"
import { runBackendConformance } from "./conformance/backend.js"
import { sampleEvent } from "./conformance/outbox.js"
import { postgresTamper } from "./helpers/damage.js"
import { postgresUnreachable, scratchSchema, DATABASE_URL as url } from "./helpers/postgres.js"

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("backend conformance: postgres", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${url} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  runBackendConformance("postgres", async () => {
    // A schema per test: other test files share the database, and each test starts empty.
    const scratch = await scratchSchema()
    const tamper = postgresTamper(scratch.url)
    return {
      open: () => PostgresBackend.open(scratch.url),
      persistent: true,
      tamper,
      footprint: async () => {
        const client = new pg.Client({ connectionString: scratch.url })
        await client.connect()
        try {
          const { rows: events } = await client.query<{ rows: string; bytes: string; max: string }>(
            `SELECT COUNT(*) AS rows, COALESCE(SUM(LENGTH(payload)), 0) AS bytes, COALESCE(MAX(LENGTH(payload)), 0) AS max
               FROM (SELECT payload FROM parley_event_log UNION ALL SELECT payload FROM parley_hook_events) AS p`,
          )
          const { rows: lists } = await client.query<{ rows: string; bytes: string }>(
            "SELECT COUNT(*) AS rows, COALESCE(SUM(LENGTH(json)), 0) AS bytes FROM parley_member_lists",
          )
          return {
            rows: Number(events[0]!.rows),
            payloadBytes: Number(events[0]!.bytes),
            maxPayload: Number(events[0]!.max),
            lists: Number(lists[0]!.rows),
            listBytes: Number(lists[0]!.bytes),
          }
        } finally {
          await client.end()
        }
      },
      cleanup: async () => {
        await tamper.end()
        await scratch.drop()
      },
    }
  })
}

describe.skipIf(unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
  "postgres stored member lists",
  () => {
    it("reads the whole payloads an older database stored, and stores new events' member lists apart", async () => {
      const scratch = await scratchSchema()
      const client = new pg.Client({ connectionString: scratch.url })
      await client.connect()
      try {
        // The tables as they were before stored events referenced member lists.
        await client.query(`
        CREATE TABLE parley_hook_events (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          document TEXT NOT NULL, payload TEXT NOT NULL);
        CREATE TABLE parley_event_log (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          conversation TEXT NOT NULL, type TEXT NOT NULL, at BIGINT NOT NULL, payload TEXT NOT NULL);
      `)
        const legacy = sampleEvent("old")
        await client.query(
          "INSERT INTO parley_event_log (conversation, type, at, payload) VALUES ($1, $2, $3, $4)",
          [legacy.event.conversationId, legacy.event.type, legacy.event.time, JSON.stringify(legacy)],
        )
        const backend = await PostgresBackend.open(scratch.url)
        try {
          const fresh = sampleEvent("new")
          await backend.outbox.enqueue({ document: "g~c1", events: [{ event: fresh, targets: ["hook:a"] }] })
          expect((await backend.events.read({ limit: 10 })).map((e) => JSON.stringify(e.event))).toEqual(
            [legacy, fresh].map((e) => JSON.stringify(e)),
          )
          expect((await backend.outbox.pending()).map((d) => JSON.stringify(d.event))).toEqual([
            JSON.stringify(fresh),
          ])
          const { rows } = await client.query<{ members: string | null }>(
            "SELECT members FROM parley_event_log ORDER BY id",
          )
          expect(rows[0]!.members).toBeNull()
          expect(typeof rows[1]!.members).toBe("string")
          const { rows: lists } = await client.query<{ n: string }>(
            "SELECT COUNT(*) AS n FROM parley_member_lists",
          )
          expect(Number(lists[0]!.n)).toBe(1)
        } finally {
          await backend.close()
        }
      } finally {
        await client.end()
        await scratch.drop()
      }
    })
  },
)

describe.skipIf(unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
  "postgres event log: a message's rows",
  () => {
    it("finds a deleted message's logged content through an index, in a log an older relay wrote too", async () => {
      const scratch = await scratchSchema()
      const client = new pg.Client({ connectionString: scratch.url })
      await client.connect()
      const event = (id: string, type: string, subject: unknown) => {
        const base = sampleEvent(id, "g~c1")
        return { ...base, event: { ...base.event, type }, subject }
      }
      const message = (id: string, body: string) => ({ id, author: "alice", body, createdAt: 1 })
      try {
        await client.query(`CREATE TABLE parley_event_log (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          conversation TEXT NOT NULL, type TEXT NOT NULL, at BIGINT NOT NULL, payload TEXT NOT NULL)`)
        for (const row of [
          event("o1", "message.sent", { message: message("m1", "Old-Secret-Sent") }),
          event("o2", "message.edited", { messageId: "m1", body: "Old-Secret-Edit", editedAt: 2 }),
          event("o3", "document.updated", {
            changes: [{ type: "message.sent", message: message("m1", "Old-Secret-Whole") }],
            positions: [1],
          }),
          event("o4", "message.sent", { message: message("m2", "Old-Kept") }),
        ])
          await client.query(
            "INSERT INTO parley_event_log (conversation, type, at, payload) VALUES ('g~c1', $1, 1, $2)",
            [row.event.type, JSON.stringify(row)],
          )
        const backend = await PostgresBackend.open(scratch.url)
        try {
          const { rows } = await client.query<{ message: string | null }>(
            "SELECT message FROM parley_event_log ORDER BY id",
          )
          expect(rows.map((r) => r.message)).toEqual(["m1", "m1", null, "m2"])
          await backend.purge!.redactEvents("g~c1", "g~c1", { kind: "messages", ids: new Set(["m1"]) })
          const logged = JSON.stringify((await backend.events.read({ limit: 100 })).map((e) => e.event))
          expect(logged).not.toContain("Old-Secret")
          expect(logged).toContain("Old-Kept")
        } finally {
          await backend.close()
        }
        // Opened again: nothing left to adopt, nothing rewritten twice.
        const again = await PostgresBackend.open(scratch.url)
        await again.close()
      } finally {
        await client.end()
        await scratch.drop()
      }
    })
  },
)

describe.skipIf(unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
  "postgres setup next to running relays",
  () => {
    it("opens on a schema already in place while another relay holds write locks on its tables, and sets up a new one once", async () => {
      const scratch = await scratchSchema()
      const running = await PostgresBackend.open(scratch.url)
      const writer = new pg.Client({ connectionString: scratch.url })
      await writer.connect()
      try {
        // A running relay's write transactions, open on the tables setup would otherwise index.
        await writer.query("BEGIN")
        await writer.query("LOCK TABLE parley_event_log, parley_hook_events IN ROW EXCLUSIVE MODE")
        // Setup statements that lock those tables would wait for the transaction and time out.
        const restarted = await PostgresBackend.open(scratch.url, { timeoutMs: 1500 })
        await restarted.close()
        await writer.query("COMMIT")
        const { rows } = await writer.query<{ n: string }>("SELECT COUNT(*) AS n FROM parley_schema_setups")
        expect(Number(rows[0]!.n)).toBe(1)
      } finally {
        await writer.end()
        await running.close()
        await scratch.drop()
      }
    })
  },
)

describe.skipIf(unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
  "the postgres storage probe",
  () => {
    it("fails, naming the table, while another session locks a table appends write, and answers once it is released", async () => {
      const scratch = await scratchSchema()
      const backend = await PostgresBackend.open(scratch.url)
      const other = new pg.Client({ connectionString: scratch.url })
      await other.connect()
      try {
        await backend.documents.ping()
        await other.query("BEGIN")
        await other.query("LOCK TABLE parley_updates IN ACCESS EXCLUSIVE MODE")
        // `SELECT 1` answered here: the server is up, only its writes wait.
        await expect(backend.documents.ping()).rejects.toMatchObject({
          code: "STORAGE_UNAVAILABLE",
          message: expect.stringMatching(/^PostgreSQL table parley_updates is locked/),
        })
        await other.query("ROLLBACK")
        // A lock that still lets reads through but not writes: the catalog.
        await other.query("BEGIN")
        await other.query("LOCK TABLE parley_documents IN EXCLUSIVE MODE")
        await expect(backend.documents.ping()).rejects.toThrow(/^PostgreSQL table parley_documents is locked/)
        await other.query("ROLLBACK")
        await backend.documents.ping()
        // Nothing of the probes is kept.
        const { rows } = await other.query<{ n: string }>(
          "SELECT (SELECT COUNT(*) FROM parley_updates) + (SELECT COUNT(*) FROM parley_documents) AS n",
        )
        expect(Number(rows[0]!.n)).toBe(0)
      } finally {
        await other.end()
        await backend.close()
        await scratch.drop()
      }
    })

    it("fails on a server that takes no writes (read-only transactions), while reads still work", async () => {
      const scratch = await scratchSchema()
      await (await PostgresBackend.open(scratch.url)).close()
      // What a relay's pool sees on a standby after a failover, or with default_transaction_read_only on.
      const readOnly = new URL(scratch.url)
      readOnly.searchParams.set(
        "options",
        `${readOnly.searchParams.get("options")} -c default_transaction_read_only=on`,
      )
      const backend = await PostgresBackend.open(readOnly.toString())
      try {
        await expect(backend.documents.ping()).rejects.toMatchObject({
          code: "STORAGE_UNAVAILABLE",
          message: expect.stringMatching(/^PostgreSQL refuses writes: transactions are read-only/),
        })
        expect(await backend.documents.list()).toEqual([])
      } finally {
        await backend.close()
        await scratch.drop()
      }
    })
  },
)
