import {
  type ConversationId,
  createConversation,
  deleteConversation,
  deleteMessage,
  getMessage,
  type MessageId,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { RelayExtension } from "../../src/extension.js"
import { eraseUser } from "../../src/purge/erase-user.js"
import type { PurgedContent } from "../../src/purge/redact.js"
import type { RunningRelay } from "../../src/relay.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { until } from "../helpers/until.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

/** An extension that notes every purge its relay is told of (what a dispatcher or push target acts on). */
function purgesSeen(): { readonly extension: RelayExtension; readonly seen: PurgedContent[] } {
  const seen: PurgedContent[] = []
  return { seen, extension: { name: "purges-seen", contentPurged: (purge) => void seen.push(purge) } }
}

/** Two clustered relays in this process, each noting purges. */
async function twoRelays() {
  const noted = [purgesSeen(), purgesSeen()]
  const { relays } = await twoClusteredRelays("purges", cleanup, (i) => ({
    extensions: [noted[i]!.extension],
  }))
  return relays.map((relay, i) => ({ relay, seen: noted[i]!.seen })) as [
    { relay: RunningRelay; seen: PurgedContent[] },
    { relay: RunningRelay; seen: PurgedContent[] },
  ]
}

const alice = "alice" as UserId
const user = (id: UserId) => ({ kind: "user", user: id }) as const

/** Creates conversation `id` through `relay` with two messages; their ids. */
async function conversationOn(relay: RunningRelay, id: ConversationId): Promise<MessageId[]> {
  const ids: MessageId[] = []
  await relay.core.write(id, user(alice), (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: ["bob" as UserId], title: "Plans" })
    for (const body of ["the first secret", "the second secret"]) {
      const message = newMessageId()
      sendMessage(doc, alice, { id: message, body })
      ids.push(message)
    }
  })
  return ids
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("a purge in a cluster", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("a purge in a cluster", () => {
    it("is told to the extensions of every relay, once each, whichever relay ran it", async () => {
      const [owner, other] = await twoRelays()
      const id = "g~purges-told" as ConversationId
      const [first] = await conversationOn(owner.relay, id)
      // Written through the other relay: forwarded to the owner, which runs the purge.
      await other.relay.core.write(id, user(alice), (doc) => deleteMessage(doc, alice, first!))
      await until(
        () => Math.min(owner.seen.length, other.seen.length),
        (told) => told > 0,
      )
      const messages = { name: id, conversationId: id }
      expect(owner.seen).toEqual([{ ...messages, scope: { kind: "messages", ids: new Set([first]) } }])
      expect(other.seen).toEqual(owner.seen)

      await owner.relay.core.write(id, user(alice), (doc) => deleteConversation(doc, alice))
      await until(
        () => Math.min(owner.seen.length, other.seen.length),
        (told) => told > 1,
      )
      // Nothing echoed back to the relay that ran it, nothing told twice.
      await new Promise((resolve) => setTimeout(resolve, 300))
      // With the log position it purged through, the same on every relay (what a reopen writes after it is kept).
      const whole = { ...messages, scope: { kind: "conversation", through: expect.any(Number) } }
      expect(owner.seen.slice(1)).toEqual([whole])
      expect(other.seen.slice(1)).toEqual(owner.seen.slice(1))
    })
    it("erases a user's messages through the relay that does not own the conversation", async () => {
      const [owner, other] = await twoRelays()
      const id = "g~erased-elsewhere" as ConversationId
      const ids = await conversationOn(owner.relay, id)
      // Before: it waited for the write to run on the document it had read, which on a relay that does
      // not own the conversation it never does (a fresh copy each time): it looped at full CPU, erasing nothing.
      const report = await eraseUser(other.relay.core, [id], undefined, alice)
      expect(report).toMatchObject({ conversations: 1, messages: 2, damaged: [] })
      const bodies = await owner.relay.core.read(id, (doc) =>
        ids.map((m) => (getMessage(doc, m) as { body?: string } | undefined)?.body ?? ""),
      )
      expect(bodies.join(" ")).not.toContain("secret")
    }, 30_000)
  })
}
