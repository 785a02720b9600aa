import { type ConversationId, createConversation, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { redisUnreachable, startCluster } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { pushRelayArgs, type ReceivedPush, startPushReceiver } from "../helpers/push-receiver.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("push in a cluster", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("push in a cluster", () => {
    it("pushes nothing to a participant connected to the conversation through another relay, and pushes once they left", async () => {
      const receiver = await startPushReceiver()
      cleanup.push(() => receiver.close())
      const vapidArgs = pushRelayArgs()
      const cluster = await startCluster(2, {
        args: [...vapidArgs],
      })
      cleanup.push(() => cluster.stop())
      const register = async (user: UserId, name: string) => {
        const response = await fetch(`${cluster.relay(1).httpUrl}/v1/me/push-subscriptions`, {
          method: "POST",
          headers: {
            authorization: `Bearer ${await cluster.token(user)}`,
            "content-type": "application/json",
          },
          body: JSON.stringify({ device: "phone", subscription: receiver.subscribe(name) }),
        })
        expect(response.status).toBe(200)
      }
      await register(bob, "bob")
      await register(carol, "carol")
      const pushesTo = (name: string) =>
        receiver.received.filter((r: ReceivedPush) => r.subscription === name).map((r) => r.payload.body)

      const id = "g~cluster-push" as ConversationId
      // Alice writes through relay 0, which orders the conversation and delivers its pushes.
      const a = new TestClient(cluster.relay(0).url, id, await cluster.token(alice))
      cleanup.push(() => a.close())
      await a.synced()
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob, carol] })
      await a.allSaved()
      // Bob has the conversation open through relay 1 only.
      const b = new TestClient(cluster.relay(1).url, id, await cluster.token(bob))
      await b.synced()
      sendMessage(a.doc, alice, { body: "bob is elsewhere" })
      await a.allSaved()
      await until(
        () => pushesTo("carol"),
        (bodies) => bodies.length === 1,
      )
      b.close()
      // The close reaches relay 1, and its record Redis, asynchronously.
      await new Promise((r) => setTimeout(r, 300))
      sendMessage(a.doc, alice, { body: "bob has left" })
      await a.allSaved()
      await until(
        () => pushesTo("carol"),
        (bodies) => bodies.length === 2,
      )
      await until(
        () => pushesTo("bob"),
        (bodies) => bodies.length === 1,
      )
      // The first message's push to bob would have gone out before carol's second: he never got it.
      expect(pushesTo("bob")).toEqual(["bob has left"])
      expect(receiver.rejected).toEqual([])
      // Two relay processes start: on a loaded machine that alone can take most of the default 20 s.
    }, 60_000)
  })
}
