import pg from "pg"
import { describe, it } from "vitest"
import { PostgresStorage } from "../src/storage/postgres.js"
import { runStorageConformance } from "./conformance/storage.js"

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"

async function reachable(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 })
  try {
    await client.connect()
    await client.end()
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

const unreachable = await reachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("storage conformance: postgres", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${url} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  runStorageConformance("postgres", async () => ({
    open: () => PostgresStorage.open(url),
    persistent: true,
  }))
}
