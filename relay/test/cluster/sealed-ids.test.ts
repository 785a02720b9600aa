import {
  createConversation,
  type MessageId,
  messageIndex,
  newConversationId,
  Rule,
  sealedThrough,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { redisUnreachable, startCluster, type TestCluster } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"

const alice = "alice" as UserId
const mallory = "mallory" as UserId

const clients: TestClient[] = []
const clusters: TestCluster[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const cluster of clusters.splice(0)) await cluster.stop()
})

function client(url: string, name: string, token: string): TestClient {
  const c = new TestClient(url, name, token)
  clients.push(c)
  return c
}

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("sealed message ids in a cluster", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("sealed message ids in a cluster", () => {
    it("refuses a sealed message's id on the relay that takes over the conversation from the one that sealed it", async () => {
      const cluster = await startCluster(2, {
        args: ["--history-segment-size", "10", "--history-keep-live", "5"],
      })
      clusters.push(cluster)
      const id = newConversationId()
      const a = client(cluster.relay(0).url, id, await cluster.token(alice))
      await a.synced()
      createConversation(a.doc, alice, { kind: "group", id, participants: [mallory] })
      await a.allSaved()
      const sent: MessageId[] = []
      for (let i = 0; i < 40; i++) {
        sent.push(sendMessage(a.doc, alice, { body: `m${i}` }).id)
        await a.allSaved()
      }
      await a.until(() => sealedThrough(a.doc) >= 30)
      // The relay that sealed (and holds every segment) goes; the other orders the conversation from
      // now on, knowing its sealed ids only from the filters in PostgreSQL.
      await cluster.kill(0)
      const m = client(cluster.relay(1).url, id, await cluster.token(mallory))
      await m.synced()
      const mine = sendMessage(m.doc, mallory, { body: "mallory's own" })
      await m.until(() => messageIndex(m.doc).seqOf.get(mine.id) === 41)
      sendMessage(m.doc, mallory, { id: sent[0], body: "under alice's sealed id" })
      await m.until(() => m.errors.length > 0)
      expect(m.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: Rule.messageIdTaken })
    })
  })
}
