import { ErrorCode } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { PostgresBackend } from "../src/backend/postgres.js"
import { StorageGuard } from "../src/storage/guard.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "./helpers/postgres.js"
import { startTcpProxy } from "./helpers/tcp-proxy.js"

const cleanups: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {})
})

/** The storage timeout of this test (the relay's `--storage-timeout-ms`; its default is 5000). */
const TIMEOUT_MS = 2500

/**
 * How much later than one storage timeout writes may be accepted again: the
 * probe's first backoff (100 ms), a fresh connection and a loaded machine
 * (about 0.3-0.6 s here when quiet). Below a second timeout, which is what
 * each dead connection of the pool the probe or a write picked up added.
 */
const MARGIN_MS = 2000

/** One Yjs update, as a client would send it. */
function update(text: string): Uint8Array {
  const doc = new Y.Doc()
  let out: Uint8Array | undefined
  doc.on("update", (u: Uint8Array) => {
    out = u
  })
  doc.getArray<string>("a").push([text])
  return out!
}

const unreachable = await postgresUnreachable()
if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("storage on half-open PostgreSQL connections", () => {
    it.skip(`skipped: PostgreSQL unreachable (${unreachable})`, () => {})
  })
} else {
  describe("storage on half-open PostgreSQL connections", () => {
    it("takes writes again within one storage timeout when the pool's open connections stop answering but new ones work", async () => {
      const scratch = await scratchSchema()
      cleanups.push(() => scratch.drop())
      const target = new URL(DATABASE_URL)
      const proxy = await startTcpProxy(target.hostname || "127.0.0.1", Number(target.port || 5432))
      cleanups.push(() => proxy.close())
      const proxied = new URL(scratch.url)
      proxied.hostname = "127.0.0.1"
      proxied.port = String(proxy.port)
      const backend = await PostgresBackend.open(proxied.toString(), { timeoutMs: TIMEOUT_MS })
      // As the relay guards its documents (see `guardBackend`), without the watch's timer.
      const storage = new StorageGuard(backend.documents, { timeoutMs: TIMEOUT_MS })
      // Cut first: closing a pool waits for its connections, and the proxy would hold the old ones.
      cleanups.push(async () => {
        proxy.cut()
        await storage.close()
        await backend.close()
      })

      // Several connections at once, then idle in the pool: the ones a NAT will forget.
      await Promise.all(Array.from({ length: 6 }, () => backend.documents.ping()))
      await storage.append("g~half-open", [update("before")])

      proxy.holeExisting()
      const started = performance.now()
      // The write on a connection that no longer answers fails at the storage timeout, and no sooner.
      await expect(storage.append("g~half-open", [update("lost")])).rejects.toMatchObject({
        code: ErrorCode.STORAGE_UNAVAILABLE,
      })
      const failedAfter = performance.now() - started
      // Writes are retried as clients do, until one is stored.
      let attempts = 0
      for (;;) {
        attempts++
        try {
          await storage.append("g~half-open", [update("after")])
          break
        } catch (error) {
          expect(error).toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
          if (performance.now() - started > 6 * TIMEOUT_MS) throw error
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      }
      const storedAfter = performance.now() - started
      console.log(
        `[half-open PostgreSQL] first write failed after ${failedAfter.toFixed(0)} ms, writes stored again after ${storedAfter.toFixed(0)} ms (${attempts} attempts; storage timeout ${TIMEOUT_MS} ms)`,
      )
      expect(failedAfter).toBeGreaterThanOrEqual(TIMEOUT_MS - 100)
      expect(storedAfter).toBeLessThan(TIMEOUT_MS + MARGIN_MS)
      expect(storage.available).toBe(true)
    }, 60_000)
  })
}
