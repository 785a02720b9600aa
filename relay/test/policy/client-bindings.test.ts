import Database from "better-sqlite3"
import { describe, it } from "vitest"
import { MemoryClientBindingStore, SqliteClientBindingStore } from "../../src/policy/client-bindings.js"
import { PostgresClientBindingStore } from "../../src/policy/postgres-client-bindings.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { runBindingStoreConformance } from "./binding-store-conformance.js"

runBindingStoreConformance("memory", async () => {
  const store = new MemoryClientBindingStore()
  return { store, reopen: async () => store }
})

runBindingStoreConformance("SQLite", async () => {
  const db = new Database(":memory:")
  return {
    store: new SqliteClientBindingStore(db),
    reopen: async () => new SqliteClientBindingStore(db),
    cleanup: async () => {
      db.close()
    },
  }
})

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("PostgreSQL client binding store", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  runBindingStoreConformance("PostgreSQL", async () => {
    // A schema per test: other test files share the database, and each test starts empty.
    const scratch = await scratchSchema()
    const opened = [await PostgresClientBindingStore.open(scratch.url)]
    return {
      store: opened[0]!,
      reopen: async () => {
        const store = await PostgresClientBindingStore.open(scratch.url)
        opened.push(store)
        return store
      },
      cleanup: async () => {
        for (const store of opened) await store.close()
        await scratch.drop()
      },
    }
  })
}
