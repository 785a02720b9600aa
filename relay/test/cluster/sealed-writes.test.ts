import {
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  getMessage,
  type MessageId,
  markersOf,
  markRead,
  newMessageId,
  react,
  sealedHistory,
  sealedThrough,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { RunningRelay } from "../../src/relay.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { until } from "../helpers/until.js"

/*
 * A write naming an old (sealed) message — an edit, a reaction, a deletion, from the HTTP API or a
 * hook — sent to a relay that does not order the conversation. That relay runs the change on a fresh
 * copy of its replica, which holds none of the sealed segments: before, it answered 404 ("no message")
 * on every relay but the owner (an outside probe, three relays behind a load balancer).
 */

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())
const alice = "alice" as UserId
const bob = "bob" as UserId
const as = (user: UserId) => ({ kind: "user", user }) as const

/** Conversation `id` created through `relay` with 30 messages of alice's, the first 20 or more sealed. */
async function sealedConversation(relay: RunningRelay, id: ConversationId): Promise<MessageId[]> {
  await relay.core.write(id, as(alice), (doc) =>
    createConversation(doc, alice, { kind: "group", id, participants: [bob], title: "old messages" }),
  )
  const ids: MessageId[] = []
  for (let i = 0; i < 30; i++) {
    const message = newMessageId()
    await relay.core.write(
      id,
      as(alice),
      (doc) => void sendMessage(doc, alice, { id: message, body: `m${i}` }),
    )
    ids.push(message)
  }
  await until(
    () => relay.core.read(id, (doc) => sealedThrough(doc)),
    (through) => through >= 20,
  )
  return ids
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("writes naming sealed messages in a cluster", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("writes naming sealed messages in a cluster", () => {
    it("edit, react to and delete a sealed message through the relay that does not own the conversation", async () => {
      const { relays } = await twoClusteredRelays("sealed-writes", cleanup, () => ({
        history: { segmentSize: 10, keepLive: 5 },
      }))
      const [owner, other] = relays
      const id = "g~sealed-writes" as ConversationId
      const ids = await sealedConversation(owner, id)
      const [first, second, third] = ids as [MessageId, MessageId, MessageId]

      await other.core.write(id, as(alice), (doc) => editMessage(doc, alice, first, "m0, edited"))
      await other.core.write(id, as(bob), (doc) => react(doc, bob, second, "👍"))
      await other.core.write(id, as(alice), (doc) => deleteMessage(doc, alice, third))
      // A read marker moved up to a sealed message: its number is in the segment.
      await other.core.write(id, as(bob), (doc) => void markRead(doc, bob, second))

      // What the owner holds now: read with the segments held (the owner's own path reads them).
      await owner.core.settleSealedIds?.(id, [first, second, third])
      const seen = await owner.core.read(id, (doc) => [first, second, third].map((m) => getMessage(doc, m)))
      expect(seen[0]).toMatchObject({ body: "m0, edited" })
      expect(seen[1]?.reactions).toEqual({ "👍": [bob] })
      expect(seen[2]).toMatchObject({ deleted: expect.anything() })
      expect(await owner.core.read(id, (doc) => markersOf(doc, bob).read)).toBe(2)
    }, 60_000)

    it("drops the copy of a segment another relay re-sealed (a deletion purged it) and reads the new one", async () => {
      const { relays } = await twoClusteredRelays("sealed-stale", cleanup, () => ({
        history: { segmentSize: 10, keepLive: 5 },
      }))
      const [owner, other] = relays
      const id = "g~sealed-stale" as ConversationId
      const ids = await sealedConversation(owner, id)
      const [first, second] = ids as [MessageId, MessageId]
      // The other relay reads the segment (a reaction through it) and holds it.
      await other.core.write(id, as(bob), (doc) => react(doc, bob, second, "👍"))
      const heldBody = (relay: RunningRelay) =>
        relay.core.read(id, (doc) => {
          const record = sealedHistory(doc).entry(first)?.record as { body?: string } | undefined
          return record?.body
        })
      expect(await heldBody(other)).toBe("m0")
      // The owner deletes it: the purge re-seals the segment without its text, under a new hash.
      await owner.core.write(id, as(alice), (doc) => deleteMessage(doc, alice, first))
      // Before: the other relay went on holding, and serving, "m0" for as long as it kept the conversation.
      await until(
        () => heldBody(other),
        (body) => body !== "m0",
        20_000,
      )
    }, 60_000)
  })
}
