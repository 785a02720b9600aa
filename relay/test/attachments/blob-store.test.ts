import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"
import { describe, it } from "vitest"
import { FsBlobStore } from "../../src/attachments/fs-blob-store.js"
import { MemoryBlobStore } from "../../src/attachments/memory-blob-store.js"
import { BLOBS_SCHEMA, PostgresBlobStore } from "../../src/attachments/postgres-blob-store.js"
import { runBlobStoreConformance } from "../conformance/blob-store.js"
import { postgresUnreachable, scratchSchema, DATABASE_URL as url } from "../helpers/postgres.js"

runBlobStoreConformance("memory", async () => {
  const store = new MemoryBlobStore()
  return { store, reopen: async () => store }
})

runBlobStoreConformance("fs", async () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-blobs-"))
  return {
    store: new FsBlobStore(join(dir, "blobs")),
    reopen: async () => new FsBlobStore(join(dir, "blobs")),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  }
})

const unreachable = await postgresUnreachable()
if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("postgres blob store", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${url} (${unreachable})`, () => {})
  })
} else {
  runBlobStoreConformance("postgres", async () => {
    const scratch = await scratchSchema()
    const pools: pg.Pool[] = []
    const open = async () => {
      const pool = new pg.Pool({ connectionString: scratch.url, max: 4 })
      pools.push(pool)
      await pool.query(BLOBS_SCHEMA)
      return new PostgresBlobStore(pool)
    }
    return {
      store: await open(),
      reopen: open,
      cleanup: async () => {
        for (const pool of pools) await pool.end()
        await scratch.drop()
      },
    }
  })
}
