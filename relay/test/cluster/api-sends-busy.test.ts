import {
  type ConversationId,
  createConversation,
  listMessages,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { MemoryIdempotencyStore } from "../../src/api/idempotency.js"
import { ApiOperations } from "../../src/api/operations.js"
import type { Principal } from "../../src/principal.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"

/*
 * An HTTP API send through a relay that does not order a busy conversation. Made on a copy of that
 * relay's replica and held to it, it was made again whenever the owner's document had moved on, and
 * refused after eight tries: at ten messages a second, half the sends through such a relay answered
 * 503 "the document changed while this write was made, 8 times" (an outside probe).
 */

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())
const alice = "alice" as UserId
const bob = "bob" as UserId
const as = (user: UserId): Principal => ({ kind: "user", user })
const backend = { principal: { kind: "service", subject: "backend", user: bob } as Principal, user: bob }

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("API sends through the relay that does not order a busy conversation", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("API sends through the relay that does not order a busy conversation", () => {
    it("are stored while the owner stores other messages all the time, each once, and a retry finds its message", async () => {
      const [owner, other] = (await twoClusteredRelays("api-sends-busy", cleanup)).relays
      const id = "g~api-busy" as ConversationId
      await owner.core.write(id, as(alice), (doc) =>
        createConversation(doc, alice, { kind: "group", id, participants: [bob], title: "busy" }),
      )
      await other.core.read(id, () => undefined)
      // Alice writes through the owner without pause while the backend sends through the other relay.
      let busy = true
      let hers = 0
      const chatter = (async () => {
        while (busy) {
          await owner.core.write(
            id,
            as(alice),
            (doc) => void sendMessage(doc, alice, { body: `busy ${hers}` }),
          )
          hers++
        }
      })()
      const api = new ApiOperations(other.core, new MemoryIdempotencyStore())
      const ids = Array.from({ length: 15 }, () => newMessageId())
      const outcomes: boolean[] = []
      try {
        for (const [i, message] of ids.entries())
          outcomes.push(
            (await api.send(id, backend, { id: message, body: `api ${i}`, idempotent: true })).created,
          )
        // A retry of a send stored already (its answer lost, say) finds it.
        expect((await api.send(id, backend, { id: ids[0]!, body: "api 0", idempotent: true })).created).toBe(
          false,
        )
      } finally {
        busy = false
        await chatter
      }
      expect(outcomes).toEqual(ids.map(() => true))
      expect(hers).toBeGreaterThan(15)
      // Each once on the relay that orders the conversation.
      const found = await owner.core.read(id, (doc) =>
        ids.map((message) => listMessages(doc, { last: 10_000 }).filter((m) => m.id === message).length),
      )
      expect(found).toEqual(ids.map(() => 1))
    })
  })
}
