import "fake-indexeddb/auto"
import type { ParleyError } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { Conversation } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

let unique = 0
/** A fresh user name per test, so that tests sharing the relay never meet. */
const name = (base: string) => `${base}race${++unique}`

const bodies = (chat: Conversation) =>
  chat
    .messages({ last: 100 })
    .map((m) => m.body)
    .sort()

/** Every error and resync a conversation reports: an honest race must cause none. */
function watch(chat: Conversation) {
  const errors: ParleyError[] = []
  let resyncs = 0
  chat.on("error", ({ error }) => errors.push(error))
  chat.on("resynced", () => resyncs++)
  return { errors, resyncs: () => resyncs }
}

/** Both replicas hold one direct conversation of `users` with `expected` messages, all sent and numbered. */
async function converged(chats: Conversation[], users: string[], expected: string[]) {
  for (const chat of chats) {
    await eventually(() => expect(bodies(chat)).toEqual([...expected].sort()))
    await eventually(() => expect(chat.messages({ last: 100 }).every((m) => m.seq !== undefined)).toBe(true))
    expect(chat.info?.kind).toBe("direct")
    expect(chat.participants.map((p) => [p.user, p.role]).sort()).toEqual(
      users.map((u) => [u, "owner"]).sort(),
    )
  }
  const seqs = chats.map((chat) => chat.messages({ last: 100 }).map((m) => [m.body, m.seq]))
  expect(seqs[1]).toEqual(seqs[0])
}

describe("both users creating their direct conversation at once", () => {
  it("converges online on one direct conversation with both users' messages, nothing refused", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const bob = await connectClient(relay, b)
    // No waiting for the relay's copy: both create before either hears of the other's creation.
    const [aliceChat, bobChat] = await Promise.all([
      alice.directConversation(b, 0),
      bob.directConversation(a, 0),
    ])
    const seen = [watch(aliceChat), watch(bobChat)]
    const sent = [aliceChat.send("from alice"), bobChat.send("from bob")]
    await converged([aliceChat, bobChat], [a, b], ["from alice", "from bob"])
    await eventually(() => expect(aliceChat.status(sent[0]!.id)).not.toBe("pending"))
    await eventually(() => expect(bobChat.status(sent[1]!.id)).not.toBe("pending"))
    expect(aliceChat.status(sent[0]!.id)).not.toBe("failed")
    expect(bobChat.status(sent[1]!.id)).not.toBe("failed")
    for (const { errors, resyncs } of seen) {
      expect(errors).toEqual([])
      expect(resyncs()).toBe(0)
    }
  })

  it("converges when both created it offline, wrote, and came online later", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { connect: false })
    const bob = await connectClient(relay, b, { connect: false })
    const aliceChat = await alice.directConversation(b)
    const bobChat = await bob.directConversation(a)
    const seen = [watch(aliceChat), watch(bobChat)]
    aliceChat.send("alice, offline 1")
    aliceChat.send("alice, offline 2")
    bobChat.send("bob, offline")
    alice.connect()
    bob.connect()
    await converged([aliceChat, bobChat], [a, b], ["alice, offline 1", "alice, offline 2", "bob, offline"])
    for (const chat of [aliceChat, bobChat])
      await eventually(() =>
        expect(
          chat.messages({ last: 100 }).every((m) => m.status !== "pending" && m.status !== "failed"),
        ).toBe(true),
      )
    for (const { errors, resyncs } of seen) {
      expect(errors).toEqual([])
      expect(resyncs()).toBe(0)
    }
  })

  it("takes a creation made offline long before, once the other user created it online and wrote", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { connect: false })
    const aliceChat = await alice.directConversation(b)
    const seen = [watch(aliceChat)]
    aliceChat.send("written offline")
    const bob = await connectClient(relay, b)
    const bobChat = await bob.directConversation(a)
    seen.push(watch(bobChat))
    bobChat.send("bob, online")
    await eventually(() => expect(bobChat.messages()[0]?.status).toBe("sent"))
    alice.connect()
    await converged([aliceChat, bobChat], [a, b], ["written offline", "bob, online"])
    await eventually(() =>
      expect(aliceChat.messages().find((m) => m.author === a)?.status).toMatch(/sent|delivered|read/),
    )
    for (const { errors, resyncs } of seen) {
      expect(errors).toEqual([])
      expect(resyncs()).toBe(0)
    }
  })
})
