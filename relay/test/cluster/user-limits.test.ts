import { CloseCode, newConversationId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
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
afterEach(async () => {
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

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("per-user limits behind the load balancer", () => {
    it.skip(`skipped: ${missing}`, () => {})
  })
} else {
  describe("per-user limits behind the load balancer", () => {
    it("counts all of a user's sockets on three relays with the shipped by-user balancing, not only one relay's", async () => {
      const cluster = await startCluster(3, { args: ["--max-sockets-per-user", "2"] })
      cleanup.push(() => cluster.stop())
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
      // Round-robin, for contrast: each relay counts only the sockets it holds (two each at most), so all five open.
      await new Promise((r) => setTimeout(r, 500))
      expect((await open("roundrobin")).mallory).toEqual(["open", "open", "open", "open", "open"])
    }, 60_000)
  })
}
