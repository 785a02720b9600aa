import { describe, it } from "vitest"
import { PostgresStorage } from "../src/storage/postgres.js"
import { runStorageConformance } from "./conformance/storage.js"
import { postgresTamper } from "./helpers/damage.js"
import { postgresUnreachable, DATABASE_URL as url } from "./helpers/postgres.js"

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("storage conformance: postgres", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${url} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  runStorageConformance("postgres", async () => {
    const tamper = postgresTamper(url)
    return { open: () => PostgresStorage.open(url), persistent: true, tamper, cleanup: () => tamper.end() }
  })
}
