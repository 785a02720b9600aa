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
      cleanup: async () => {
        await tamper.end()
        await scratch.drop()
      },
    }
  })
}
