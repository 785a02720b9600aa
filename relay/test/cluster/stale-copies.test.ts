import {
  type ConversationId,
  createConversation,
  ErrorCode,
  getConversation,
  listParticipants,
  ParleyError,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type * as Y from "yjs"
import type { Principal } from "../../src/principal.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

/** What the HTTP API's group creation runs (`ApiOperations.createGroup`): a check, then the write. */
const createIfAbsent = (id: ConversationId, creator: UserId, other: UserId) => (doc: Y.Doc) => {
  if (getConversation(doc)) throw new ParleyError(ErrorCode.CONFLICT, `conversation ${id} already exists`)
  createConversation(doc, creator, { kind: "group", id, participants: [other] })
}
const service = (user: UserId): Principal => ({ kind: "service", subject: "backend", user })

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("server-side writes made on another relay's copy", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("server-side writes made on another relay's copy", () => {
    it("are checked against the document the owner holds: of two racing creations of one id, one creates it and the other is told it exists", async () => {
      const [a, b] = (await twoClusteredRelays("stale-copies", cleanup)).relays
      for (let round = 0; round < 6; round++) {
        const id = `g~race-${round}` as ConversationId
        // Loaded (empty) on both relays first, as a read by each would: each write's check then reads a
        // copy of nothing, unless it is made again on the owner's state.
        await Promise.all([a, b].map((relay) => relay.core.read(id, () => undefined)))
        const [ua, ub] = [`alice-${round}` as UserId, `bob-${round}` as UserId]
        const outcomes = await Promise.allSettled([
          a.core.write(id, service(ua), createIfAbsent(id, ua, `carol-${round}` as UserId)),
          b.core.write(id, service(ub), createIfAbsent(id, ub, `dave-${round}` as UserId)),
        ])
        const refused = outcomes.filter((o) => o.status === "rejected")
        expect(refused, `round ${round}`).toHaveLength(1)
        expect(((refused[0] as PromiseRejectedResult).reason as ParleyError).code).toBe(ErrorCode.CONFLICT)
        // The participants are the winner's two, whoever won, on both relays.
        for (const relay of [a, b]) {
          const users = await relay.core.read(id, (doc) =>
            listParticipants(doc)
              .map((p) => p.user)
              .sort(),
          )
          expect([
            [`alice-${round}`, `carol-${round}`],
            [`bob-${round}`, `dave-${round}`],
          ]).toContainEqual(users)
        }
      }
    }, 60_000)
  })
}
