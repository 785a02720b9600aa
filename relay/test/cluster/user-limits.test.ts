import {
  CloseCode,
  createConversation,
  listMessages,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import {
  type Balance,
  haproxyPath,
  redisUnreachable,
  startCluster,
  startLoadBalancer,
} from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"

const cleanup: (() => unknown)[] = []
// After the file, not after each test: the tests run at once (a cluster and balancers of their own).
afterAll(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const haproxy = haproxyPath()
const missing =
  (await postgresUnreachable()) ??
  (await redisUnreachable()) ??
  (haproxy ? undefined : "haproxy is not installed (apt-get install haproxy)")

/** Whether each socket stays open (synced) or is closed, and with what. */
async function outcome(client: TestClient): Promise<string> {
  return Promise.race([
    client.closed.then(({ code, reason }) => `closed ${code} ${reason}`),
    client.synced().then(() => "open"),
  ])
}

/** Waits until every relay has warmed up (ready), so that round-robin spreads sockets over all of them. */
async function allReady(ports: readonly number[]): Promise<void> {
  for (const port of ports)
    for (let tries = 0; !(await fetch(`http://127.0.0.1:${port}/readyz`).then((r) => r.ok)); tries++) {
      if (tries > 100) throw new Error(`relay on port ${port} never became ready`)
      await new Promise((r) => setTimeout(r, 100))
    }
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("per-user limits behind the load balancer", () => {
    it.skip(`skipped: ${missing}`, () => {})
  })
} else {
  // Each test waits on its own three relays (a scratch schema and Redis prefix of their own) and
  // HAProxy: they run at once.
  describe.concurrent("per-user limits behind the load balancer", () => {
    it("counts all of a user's sockets on three relays, routed by user or spread round-robin", async () => {
      const cluster = await startCluster(3, { args: ["--max-sockets-per-user", "2"] })
      cleanup.push(() => cluster.stop())
      await allReady(cluster.ports)
      const [mallory, alice] = [await cluster.token("mallory"), await cluster.token("alice")]
      const open = async (balance: Balance) => {
        const lb = await startLoadBalancer(haproxy!, cluster.ports, balance)
        const sockets = Array.from({ length: 5 }, () => new TestClient(lb.url, newConversationId(), mallory))
        const honest = new TestClient(lb.url, newConversationId(), alice)
        const outcomes = await Promise.all([...sockets, honest].map(outcome))
        for (const s of [...sockets, honest]) s.ws.close()
        await Promise.all([...sockets, honest].map((s) => s.closed))
        await lb.stop()
        return { mallory: outcomes.slice(0, 5).sort(), alice: outcomes[5] }
      }
      const refused = `closed ${CloseCode.TooManySockets.code} ${CloseCode.TooManySockets.reason}`
      // By user: mallory's five sockets meet on one relay, which takes two; alice is not affected.
      expect(await open("user")).toEqual({
        mallory: [refused, refused, refused, "open", "open"],
        alice: "open",
      })
      await new Promise((r) => setTimeout(r, 500))
      // Round-robin: the five land on three relays at once, before any of them has heard of the others;
      // the relays then share what each holds (Redis) and close the newest beyond the limit.
      await allReady(cluster.ports)
      const lb = await startLoadBalancer(haproxy!, cluster.ports, "roundrobin")
      cleanup.push(() => lb.stop())
      const spread = Array.from({ length: 5 }, () => new TestClient(lb.url, newConversationId(), mallory))
      const honest = new TestClient(lb.url, newConversationId(), alice)
      await Promise.all([...spread, honest].map(outcome))
      const settled = async () => {
        const deadline = Date.now() + 5_000
        for (;;) {
          const open = spread.filter((s) => s.ws.readyState === s.ws.OPEN).length
          if (open <= 2 || Date.now() > deadline) return open
          await new Promise((r) => setTimeout(r, 100))
        }
      }
      expect(await settled()).toBe(2)
      // Stays two: no relay closes more than its share.
      await new Promise((r) => setTimeout(r, 1_000))
      expect(spread.filter((s) => s.ws.readyState === s.ws.OPEN)).toHaveLength(2)
      const closes = await Promise.all(
        spread.filter((s) => s.ws.readyState !== s.ws.OPEN).map((s) => s.closed),
      )
      expect(closes.map(({ code, reason }) => `closed ${code} ${reason}`)).toEqual([
        refused,
        refused,
        refused,
      ])
      expect(honest.ws.readyState).toBe(honest.ws.OPEN)
      // One socket of mallory's closes: another may open, on whichever relay.
      const survivor = spread.find((s) => s.ws.readyState === s.ws.OPEN)!
      survivor.ws.close()
      await survivor.closed
      await new Promise((r) => setTimeout(r, 500))
      const again = new TestClient(lb.url, newConversationId(), mallory)
      expect(await outcome(again)).toBe("open")
      for (const s of [...spread, honest, again]) s.ws.close()
    }, 120_000)

    it("holds a user's open documents on three relays at once to the limit, keeping what the first relays hold", async () => {
      const cluster = await startCluster(3, {
        args: ["--max-documents-per-user", "4", "--max-sockets-per-user", "64"],
      })
      cleanup.push(() => cluster.stop())
      await allReady(cluster.ports)
      const [mallory, alice] = [await cluster.token("mallory"), await cluster.token("alice")]
      // Four new documents on each relay at once, before any relay has heard of the others.
      const opened = cluster.ports.flatMap((_, i) =>
        Array.from({ length: 4 }, () => new TestClient(cluster.relay(i).url, newConversationId(), mallory)),
      )
      const honest = new TestClient(cluster.relay(2).url, newConversationId(), alice)
      await Promise.all([...opened, honest].map(outcome))
      const openNow = () => opened.filter((s) => s.ws.readyState === s.ws.OPEN)
      const deadline = Date.now() + 5_000
      while (openNow().length > 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
      expect(openNow()).toHaveLength(4)
      // Stays four: no relay closes more than its share; the honest user is not touched.
      await new Promise((r) => setTimeout(r, 1_000))
      expect(openNow()).toHaveLength(4)
      const refused = `closed ${CloseCode.TooManyDocuments.code} ${CloseCode.TooManyDocuments.reason}`
      const closes = await Promise.all(
        opened.filter((s) => s.ws.readyState !== s.ws.OPEN).map((s) => s.closed),
      )
      expect(new Set(closes.map(({ code, reason }) => `closed ${code} ${reason}`))).toEqual(
        new Set([refused]),
      )
      expect(honest.ws.readyState).toBe(honest.ws.OPEN)
      for (const s of [...opened, honest]) s.ws.close()
    }, 120_000)

    it("holds one user's update rate across three relays to one budget, not one per relay", async () => {
      const cluster = await startCluster(3, {
        args: ["--user-updates-per-second", "5", "--user-update-burst", "10"],
      })
      cleanup.push(() => cluster.stop())
      await allReady(cluster.ports)
      const lb = await startLoadBalancer(haproxy!, cluster.ports, "roundrobin")
      cleanup.push(() => lb.stop())
      const mallory = await cluster.token("mallory")
      const me = "mallory" as UserId
      // One socket on each relay (round-robin), each in its own conversation.
      const ids = [0, 1, 2].map(() => newConversationId())
      const sockets = ids.map((id) => new TestClient(lb.url, id, mallory))
      expect(await Promise.all(sockets.map(outcome))).toEqual(["open", "open", "open"])
      // Each socket sends a message every 100 ms until its relay closes it for overdrawing the budget
      // (4429 updates-per-user). Alone, each relay would take 10 + 5 a second: about 20 from each, 60 in all.
      const closed = sockets.map(() => false)
      sockets.forEach((s, i) => {
        void s.closed.then(() => {
          closed[i] = true
        })
      })
      for (const [i, s] of sockets.entries())
        createConversation(s.doc, me, { kind: "group", id: ids[i]!, participants: [] })
      for (let tick = 0; tick < 60 && closed.includes(false); tick++) {
        for (const [i, s] of sockets.entries())
          if (!closed[i]) sendMessage(s.doc, me, { body: `tick ${tick}` })
        await new Promise((r) => setTimeout(r, 100))
      }
      const reasons = await Promise.all(
        sockets.map((s) => s.closed.then(({ code, reason }) => `${code} ${reason}`)),
      )
      expect(reasons).toEqual(
        Array(3).fill(`${CloseCode.TooManyUpdates.code} ${CloseCode.TooManyUpdates.reason}`),
      )
      // What the relays stored, read back after the budget refilled.
      await new Promise((r) => setTimeout(r, 2_500))
      let stored = 0
      for (const id of ids) {
        const reader = new TestClient(lb.url, id, mallory)
        await reader.synced()
        stored += listMessages(reader.doc, { last: 1_000 }).length
        reader.ws.close()
      }
      // Shared: one budget of 10 + 5 a second for ~1 s, plus what each relay took before it heard (250 ms).
      // (Counted once: 7 shared, 42 with each relay counting alone.)
      expect(stored).toBeGreaterThanOrEqual(3)
      expect(stored).toBeLessThanOrEqual(25)
    }, 120_000)
  })
}
