import pg from "pg"
import { describe, it } from "vitest"
import { PostgresBackend } from "../src/backend/postgres.js"
import { runBackendConformance } from "./conformance/backend.js"
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
