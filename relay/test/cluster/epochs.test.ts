import {
  type ConversationId,
  createConversation,
  listMessages,
  newConversationId,
  react,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { stockProvider, synced, TestClient } from "../helpers/clients.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { signToken } from "../helpers/relay-process.js"

const cleanup: (() => unknown)[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())
const SECRET = "cluster-epochs-test-secret-0123456789abcdef"
const alice = "alice" as UserId
const bob = "bob" as UserId

async function connect(url: string, id: string, user: UserId): Promise<TestClient> {
  const c = new TestClient(url, id, await signToken(SECRET, user))
  clients.push(c)
  await c.synced()
  return c
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("epochs in a cluster", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("epochs in a cluster", () => {
    /** Two clustered relays that start a garbage epoch early, and a conversation the first orders. */
    async function clusterWithConversation() {
      const { relays } = await twoClusteredRelays("epochs", cleanup, () => ({
        auth: { kind: "secret", secret: SECRET },
        dev: false,
        history: { segmentSize: 20, keepLive: 5, epochClientIds: 1000, keepSummaries: 4, foldSize: 16 },
        limits: { epochGarbageBytes: 2048 },
      }))
      const id = newConversationId() as ConversationId
      // Created through the first relay, which orders the conversation from then on.
      await relays[0].core.write(id, { kind: "user", user: alice }, (doc) =>
        createConversation(doc, alice, { kind: "group", id, participants: [bob] }),
      )
      return { relays, id }
    }

    /** Rounds of messages with reactions (each seal folds the reactions: garbage) until `writer` is closed. */
    async function garbageRounds(writer: TestClient, rounds: number): Promise<void> {
      for (let round = 0; round < rounds && !writer.closeEvent; round++) {
        for (let i = 0; i < 5; i++) {
          const { id: message } = sendMessage(writer.doc, alice, { body: `round ${round} message ${i}` })
          react(writer.doc, alice, message, "👍")
        }
        await Promise.race([writer.allSaved(), writer.closed])
      }
    }

    it("holds an epoch back for a stock provider connected to another relay (it could not follow one)", async () => {
      const { relays, id } = await clusterWithConversation()
      const [owner, other] = relays
      const provider = stockProvider(other.url, id, await signToken(SECRET, bob))
      cleanup.push(() => provider.destroy())
      await synced(provider)
      const writer = await connect(owner.url, id, alice)
      await garbageRounds(writer, 24)
      // Past the budget several times over, and no epoch: neither the writer nor the stock provider closed.
      expect(writer.closeEvent).toBeUndefined()
      expect(provider.wsconnected).toBe(true)
    })

    it("drops the other relays' copies of the old epoch: their members rejoin the new one and write again", async () => {
      // Segments of 20, 5 kept live; a fresh epoch once a seal leaves more than 2 KiB of removed values.
      const { relays, id } = await clusterWithConversation()
      const [owner, other] = relays
      const elsewhere = await connect(other.url, id, bob)
      const writer = await connect(owner.url, id, alice)
      // Every seal folds the rounds' reactions and removes their records: garbage, until an epoch.
      await garbageRounds(writer, 60)
      expect(writer.closeEvent?.code).toBe(4503)
      // The other relay's member is sent to the new epoch too (retryable), rather than kept on a copy
      // of the old one whose every write the owner refused as depending on changes it lacks.
      await elsewhere.closed
      expect(elsewhere.closeEvent?.code).toBe(4503)
      const again = await connect(other.url, id, bob)
      sendMessage(again.doc, bob, { body: "after the epoch, through the other relay" })
      await again.allSaved()
      const bodies = await owner.core.read(id, (doc) => listMessages(doc, { last: 10 }).map((m) => m.body))
      expect(bodies).toContain("after the epoch, through the other relay")
    })
  })
}
