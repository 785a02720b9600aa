import { ParleyError } from "@parley/shared"
import { Redis } from "ioredis"
import pg from "pg"
import { Registry } from "prom-client"
import { afterEach, describe, expect, it } from "vitest"
import { openClusterBackend } from "../../src/cluster/backend.js"
import { ClusterDeliveryFence } from "../../src/cluster/delivery-fence.js"
import { type DeliveryTarget, Dispatcher } from "../../src/hooks/dispatcher.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { HookMetrics } from "../../src/hooks/metrics.js"
import { NOT_RECORDER } from "../../src/hooks/outbox.js"
import { PostgresEventLog } from "../../src/hooks/postgres-event-log.js"
import { PostgresOutbox } from "../../src/hooks/postgres-outbox.js"
import { createLogger } from "../../src/log.js"
import { sampleEvent } from "../conformance/outbox.js"
import { REDIS_URL, redisUnreachable } from "../helpers/cluster.js"
import { postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { partitionedLeases } from "./partitioned-leases.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())
const log = createLogger("fatal")

/** A target that records each call and holds it until released; `honours`: it ends when its signal aborts. */
function gatedTarget(name: string, honours = false) {
  const calls: string[] = []
  const gates: (() => void)[] = []
  const target: DeliveryTarget = {
    name,
    accepts: () => true,
    deliver: (event: HookEvent, { signal }) =>
      new Promise<void>((resolve, reject) => {
        calls.push(event.event.id)
        gates.push(resolve)
        if (honours) signal.addEventListener("abort", () => reject(signal.reason))
      }),
    retryDelay: () => 1000,
  }
  return { target, calls, release: () => gates.shift()?.() }
}

function dispatcher(outbox: PostgresOutbox, target: DeliveryTarget, fence: ClusterDeliveryFence) {
  const registry = new Registry()
  return {
    registry,
    dispatcher: new Dispatcher({ outbox, targets: [target], log, metrics: new HookMetrics(registry), fence }),
  }
}

async function fenced(registry: Registry): Promise<number> {
  const metric = await registry.getSingleMetric("parley_hook_attempts_total")?.get()
  return metric?.values.find((v) => v.labels.outcome === "fenced")?.value ?? 0
}

const until = async (check: () => boolean | Promise<boolean>, ms = 5000) => {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) throw new Error("timed out waiting")
    await new Promise((r) => setTimeout(r, 10))
  }
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("delivery fencing", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("delivery fencing", () => {
    it("refuses the delivered mark of a relay whose lease moved during the attempt; the new owner delivers it", async () => {
      const scratch = await scratchSchema()
      cleanup.push(() => scratch.drop())
      const prefix = `parley-delivery-fence-test:${process.pid}:${Date.now()}:`
      const open = () =>
        openClusterBackend({
          databaseUrl: scratch.url,
          redisUrl: REDIS_URL,
          keyPrefix: prefix,
          leaseMs: 60_000,
          log,
        })
      const a = await open()
      cleanup.push(() => a.backend.close())
      const b = await open()
      cleanup.push(() => b.backend.close())
      const doc = "g~hookedConversation"
      expect(await a.cluster.leases.acquire(doc)).toBe(1)
      const outbox = a.backend.outbox as PostgresOutbox
      const queued = await outbox.enqueue({
        document: doc,
        events: [{ event: sampleEvent("e1", doc), targets: ["t"] }],
      })
      const onA = gatedTarget("t")
      const runA = dispatcher(outbox, onA.target, a.deliveries)
      cleanup.push(() => runA.dispatcher.stop())
      runA.dispatcher.add(queued)
      await until(() => onA.calls.length === 1)
      // A is cut off from Redis long enough for its lease to expire there (its clock still says it holds
      // it, a 60 s lease); B takes the document over while A's attempt is still running.
      const redis = new Redis(REDIS_URL)
      cleanup.push(() => redis.disconnect())
      await redis.del(`${prefix}lease:${doc}`)
      expect(await b.cluster.leases.acquire(doc)).toBe(2)
      onA.release()
      await runA.dispatcher.idle()
      expect(await fenced(runA.registry)).toBe(1)
      // A's outcome was not recorded: the event is still owed, for B.
      const owed = await b.backend.outbox.pending()
      expect(owed.map((d) => [d.event.event.id, d.attempts])).toEqual([["e1", 0]])
      const onB = gatedTarget("t")
      const runB = dispatcher(b.backend.outbox as PostgresOutbox, onB.target, b.deliveries)
      cleanup.push(() => runB.dispatcher.stop())
      // A's attempt may have been running when A lost the document: B's first attempt is counted
      // before it runs (its start is marked), so that a delivery ending relays one after another is.
      await runB.dispatcher.adopt(doc)
      await until(() => onB.calls.length === 1)
      expect((await b.backend.outbox.pending()).map((d) => d.attempts)).toEqual([1])
      onB.release()
      await runB.dispatcher.idle()
      expect(await b.backend.outbox.pending()).toEqual([])
      expect(await fenced(runB.registry)).toBe(0)
    })

    it("leaves no delivery owed behind the new owner: a relay that lost the document records none of its events", async () => {
      const scratch = await scratchSchema()
      cleanup.push(() => scratch.drop())
      const prefix = `parley-late-record-test:${process.pid}:${Date.now()}:`
      const open = () =>
        openClusterBackend({
          databaseUrl: scratch.url,
          redisUrl: REDIS_URL,
          keyPrefix: prefix,
          leaseMs: 60_000,
          log,
        })
      const a = await open()
      cleanup.push(() => a.backend.close())
      const b = await open()
      cleanup.push(() => b.backend.close())
      const doc = "g~lateRecords"
      expect(await a.cluster.leases.acquire(doc)).toBe(1)
      // The lease vanishes from Redis (a restart) while A still believes it holds it; B takes the
      // document over and reads its outbox lane, which owes nothing yet.
      const redis = new Redis(REDIS_URL)
      cleanup.push(() => redis.disconnect())
      await redis.del(`${prefix}lease:${doc}`)
      expect(await b.cluster.leases.acquire(doc)).toBe(2)
      const delivered: string[] = []
      const target: DeliveryTarget = {
        name: "t",
        accepts: () => true,
        deliver: async (event: HookEvent) => {
          delivered.push(event.event.id)
        },
        retryDelay: () => 1000,
      }
      const outboxB = b.backend.outbox as PostgresOutbox
      const runB = dispatcher(outboxB, target, b.deliveries)
      cleanup.push(() => runB.dispatcher.stop())
      await runB.dispatcher.adopt(doc)
      const record = async (outbox: PostgresOutbox, id: string) =>
        outbox.enqueue({ document: doc, events: [{ event: sampleEvent(id, doc), targets: ["t"] }] })
      runB.dispatcher.add(await record(outboxB, "e11"))
      await runB.dispatcher.idle()
      // A records the events of a change it stored before B's claim, late (its outbox write was slow):
      // B's lane read the outbox before it, and nothing here tells B of the row.
      const late = await record(a.backend.outbox as PostgresOutbox, "e10").then(
        () => undefined,
        (error: unknown) => error,
      )
      expect(late).toBeInstanceOf(ParleyError)
      expect((late as ParleyError).rule).toBe(NOT_RECORDER)
      runB.dispatcher.add(await record(outboxB, "e12"))
      await runB.dispatcher.idle()
      expect(delivered).toEqual(["e11", "e12"])
      // Before: e10 stayed owed, never attempted, while B delivered every later event (until a restart),
      // and the event log held it after e11, which B recorded first.
      expect(await b.backend.outbox.pending()).toEqual([])
      const logged = await b.backend.events.read({ limit: 10 })
      expect(logged.map((entry) => entry.event.event.id)).toEqual(["e11", "e12"])
    })

    it("delivers an owed delivery no lane here knows of while another target's lane of the document is held", async () => {
      const scratch = await scratchSchema()
      cleanup.push(() => scratch.drop())
      const prefix = `parley-recheck-lanes-test:${process.pid}:${Date.now()}:`
      const a = await openClusterBackend({
        databaseUrl: scratch.url,
        redisUrl: REDIS_URL,
        keyPrefix: prefix,
        leaseMs: 60_000,
        log,
      })
      cleanup.push(() => a.backend.close())
      const doc = "g~recheckedLanes"
      expect(await a.cluster.leases.acquire(doc)).toBe(1)
      const outbox = a.backend.outbox as PostgresOutbox
      // A slow hook holds its lane of the document (an attempt running, or a retry waited out).
      const slow = gatedTarget("slow")
      const delivered: string[] = []
      const other: DeliveryTarget = {
        name: "other",
        accepts: () => true,
        deliver: async (event: HookEvent) => {
          delivered.push(event.event.id)
        },
        retryDelay: () => 1000,
      }
      const dispatcher = new Dispatcher({
        outbox,
        targets: [slow.target, other],
        log,
        metrics: new HookMetrics(new Registry()),
        fence: a.deliveries,
        recheckMs: 100,
      })
      cleanup.push(() => dispatcher.stop())
      dispatcher.add(
        await outbox.enqueue({
          document: doc,
          events: [{ event: sampleEvent("e1", doc), targets: ["slow"] }],
        }),
      )
      await until(() => slow.calls.length === 1)
      // A delivery to the other target that this dispatcher never heard of (recorded or revived where it
      // was not told: a dead letter replayed through another relay, say).
      await outbox.enqueue({ document: doc, events: [{ event: sampleEvent("e2", doc), targets: ["other"] }] })
      // Before: never attempted while the slow hook's lane was held (the recheck skipped the document).
      await until(() => delivered.length === 1, 3000).catch(() => undefined)
      expect(delivered).toEqual(["e2"])
      slow.release()
      await dispatcher.idle()
      expect(await outbox.pending()).toEqual([])
    })

    it("aborts a running attempt once the lease lapses by the relay's clock, records nothing and starts no other", async () => {
      const scratch = await scratchSchema()
      cleanup.push(() => scratch.drop())
      // The tables, made by a clustered backend; the leases below have a Redis connection the test can cut.
      const tables = await openClusterBackend({
        databaseUrl: scratch.url,
        redisUrl: REDIS_URL,
        keyPrefix: `parley-lapse-delivery-test:${process.pid}:${Date.now()}:tables:`,
        log,
      })
      await tables.backend.close()
      const pool = new pg.Pool({ connectionString: scratch.url })
      cleanup.push(() => pool.end())
      const { leases, proxy, close } = await partitionedLeases({
        pool,
        prefix: `parley-lapse-delivery-test:${process.pid}:${Date.now()}:`,
        relayId: "relay-a",
        ttlMs: 600,
      })
      cleanup.push(close)
      const outbox = new PostgresOutbox(pool, new PostgresEventLog(pool))
      const fence = new ClusterDeliveryFence(pool, outbox, leases)
      const doc = "g~lapsingHooks"
      expect(await leases.acquire(doc)).toBe(1)
      const queued = await outbox.enqueue({
        document: doc,
        events: [
          { event: sampleEvent("e1", doc), targets: ["t"] },
          { event: sampleEvent("e2", doc), targets: ["t"] },
        ],
      })
      const target = gatedTarget("t", true)
      const run = dispatcher(outbox, target.target, fence)
      cleanup.push(() => run.dispatcher.stop())
      run.dispatcher.add(queued)
      await until(() => target.calls.length === 1)
      // Renewals fail from now on: nothing tells the relay it lost the lease but its own clock.
      proxy.cut()
      await run.dispatcher.idle()
      expect(target.calls).toEqual(["e1"])
      expect(await fenced(run.registry)).toBe(1)
      expect((await outbox.pending()).map((d) => [d.event.event.id, d.attempts])).toEqual([
        ["e1", 0],
        ["e2", 0],
      ])
      // A delivery added now is not even attempted.
      run.dispatcher.add(await outbox.pending())
      await run.dispatcher.idle()
      expect(target.calls).toEqual(["e1"])
    })
  })
}
