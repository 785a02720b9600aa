import pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import { LeaseRenewer } from "../../src/cluster/lease-renewer.js"
import { FENCES_SCHEMA } from "../../src/cluster/leases.js"
import { createLogger } from "../../src/log.js"
import { REDIS_URL, redisUnreachable } from "../helpers/cluster.js"
import { postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { startTcpProxy } from "../helpers/tcp-proxy.js"
import { until } from "../helpers/until.js"
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

    it("renews again within seconds once its connection lost a reply on the way (every later one a reply behind)", async () => {
      const target = new URL(REDIS_URL)
      const proxy = await startTcpProxy(target.hostname, Number(target.port || 6379))
      cleanup.push(() => proxy.close())
      const ttlMs = 600
      const renewer = new LeaseRenewer({
        redisUrl: `redis://127.0.0.1:${proxy.port}`,
        keyPrefix: `parley-renewal-test:${process.pid}:${Date.now()}:`,
        relayId: "relay-a",
        ttlMs,
        marginMs: 0,
        // Every renewal succeeds: what is looked at is whether its answer comes back.
        script: "return 1",
        maxStallMs: 10_000,
        log: createLogger("fatal"),
        lost: () => {},
      })
      cleanup.push(() => renewer.close())
      await renewer.ready(10_000)
      const lease = renewer.hold("g~behind", Date.now() + ttlMs)
      const renewedUntil = () => Number(Atomics.load(lease.validUntil, 0))
      await until(renewedUntil, (until) => until > Date.now())
      await proxy.dropReply(":1\r\n")
      const dropped = Date.now()
      // Renewed by a request sent after the loss: answered on a connection whose replies match again.
      await until(renewedUntil, (until) => until > dropped + ttlMs)
    })
  })
}
