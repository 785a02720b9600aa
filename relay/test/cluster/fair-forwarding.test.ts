import { type ConversationId, createConversation, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { FairQueue } from "../../src/cluster/fair-queue.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"

/*
 * A relay that does not order a conversation forwards its changes to the owner one at a time. Before,
 * in arrival order: one user sending within every per-user limit through such a relay queued every
 * other user's changes there behind all of hers (an outside probe: an honest pair's messages 15–26 s
 * late, none delivered for 45 s). Now writers take turns.
 */

describe("the fair queue", () => {
  it("keeps each writer's order and takes the writers in turn", async () => {
    const queue = new FairQueue()
    const ran: string[] = []
    const step = (name: string) => async () => {
      await new Promise((resolve) => setTimeout(resolve, 1))
      ran.push(name)
      return name
    }
    const done = [
      ...Array.from({ length: 5 }, (_, i) => queue.add("heavy", step(`h${i}`))),
      queue.add("honest", step("a0")),
      queue.add("honest", step("a1")),
      queue.add("other", step("o0")),
    ]
    expect(await Promise.all(done)).toEqual(["h0", "h1", "h2", "h3", "h4", "a0", "a1", "o0"])
    expect(ran).toEqual(["h0", "a0", "o0", "h1", "a1", "h2", "h3", "h4"])
    expect(queue.busy).toBe(false)
    // A failing task fails alone.
    const failing = queue.add("heavy", async () => {
      throw new Error("refused")
    })
    const next = queue.add("heavy", step("h5"))
    await expect(failing).rejects.toThrow("refused")
    expect(await next).toBe("h5")
  })
})

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())
const owner = "owner" as UserId
const heavy = "heavy" as UserId
const honest = "honest" as UserId
const as = (user: UserId) => ({ kind: "user", user }) as const

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("changes forwarded to the relay that orders a conversation", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("changes forwarded to the relay that orders a conversation", () => {
    it("go in turns between writers: one user's backlog does not hold up another's message", async () => {
      const { relays } = await twoClusteredRelays("fair-forwarding", cleanup)
      const [first, other] = relays
      const id = "g~fair-forwarding" as ConversationId
      await first.core.write(id, as(owner), (doc) =>
        createConversation(doc, owner, { kind: "group", id, participants: [heavy, honest], title: "busy" }),
      )
      const order: string[] = []
      const send = (user: UserId, body: string) =>
        other.core
          .write(id, as(user), (doc) => void sendMessage(doc, user, { body }))
          .then(() => order.push(body))
      // A backlog of one user's changes through the relay that does not order the conversation, then
      // one message of another user's.
      const backlog = Array.from({ length: 60 }, (_, i) => send(heavy, `heavy ${i}`))
      await send(honest, "honest")
      const before = order.indexOf("honest")
      // In arrival order it came after all 60 (2–3 s here; tens of seconds under a real flood).
      expect(before).toBeLessThanOrEqual(3)
      await Promise.all(backlog)
      expect(order.filter((body) => body.startsWith("heavy"))).toEqual(
        Array.from({ length: 60 }, (_, i) => `heavy ${i}`),
      )
    })
  })
}
