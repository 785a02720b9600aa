import pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import { FENCES_SCHEMA } from "../../src/cluster/leases.js"
import { redisUnreachable } from "../helpers/cluster.js"
import { postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { partitionedLeases } from "./partitioned-leases.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

/** Keeps this thread's event loop from running for `ms` (a starved or hung relay). */
function block(ms: number): void {
  const end = Date.now() + ms
  while (Date.now() < end) {}
}

/** Two relays' leases over one scratch schema and key prefix. */
async function twoRelays(ttlMs: number, maxStallMs?: number) {
  // Straight to Redis: a proxy would run on the event loop the tests block.
  const scratch = await scratchSchema()
  cleanup.push(() => scratch.drop())
  const pool = new pg.Pool({ connectionString: scratch.url })
  cleanup.push(() => pool.end())
  await pool.query(FENCES_SCHEMA)
  const prefix = `parley-renewal-test:${process.pid}:${Date.now()}:`
  const a = await partitionedLeases({
    pool,
    prefix,
    relayId: "relay-a",
    ttlMs,
    direct: true,
    ...(maxStallMs !== undefined ? { maxStallMs } : {}),
  })
  cleanup.push(() => a.close())
  const b = await partitionedLeases({ pool, prefix, relayId: "relay-b", ttlMs, direct: true })
  cleanup.push(() => b.close())
  return { a: a.leases, b: b.leases }
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("lease renewal", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("lease renewal", () => {
    it("keeps the leases of a relay whose event loop is busy for several lease lifetimes", async () => {
      const { a, b } = await twoRelays(1000)
      const doc = "g~busyOwner"
      expect(await a.acquire(doc)).toBe(1)
      // Two and a half lifetimes without a turn of the event loop: renewed from the worker thread meanwhile.
      block(2500)
      expect(a.tokenOf(doc)).toBe(1)
      expect(await a.holder(doc)).toBe("relay-a")
      expect(await b.acquire(doc)).toBeUndefined()
    })

    it("lets a relay whose event loop hangs longer than the stall bound lose its leases", async () => {
      const { a, b } = await twoRelays(500, 200)
      const doc = "g~hungOwner"
      expect(await a.acquire(doc)).toBe(1)
      block(2000)
      // The lease expired in Redis while the loop hung: another relay takes it, and the hung one may not write.
      expect(a.tokenOf(doc)).toBeUndefined()
      expect(await b.acquire(doc)).toBe(2)
      expect(a.tokenOf(doc)).toBeUndefined()
    })
  })
}
