import {
  type ConversationId,
  createConversation,
  markRead,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type * as Y from "yjs"
import { MemoryBackend } from "../../src/backend/memory.js"
import type { RunningCore } from "../../src/extension.js"
import { inboxSummary } from "../../src/inbox/summary.js"
import { UnreadTotals } from "../../src/push/unread-totals.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const asAlice = { kind: "user", user: alice } as const
const asBob = { kind: "user", user: bob } as const

const relays: RunningRelay[] = []
afterEach(async () => {
  for (const r of relays.splice(0)) await r.close()
})

/** The relay's core, counting the document reads made through it. */
function counting(core: RunningCore): { core: RunningCore; reads: () => number } {
  let reads = 0
  const counted = Object.create(core) as RunningCore
  counted.read = <T>(name: string, read: (doc: Y.Doc) => T) => {
    reads++
    return core.read(name, read)
  }
  return { core: counted, reads: () => reads }
}

describe("recipients' unread totals for push badges", () => {
  it("match the derived inbox after every change, at one read per push instead of one per conversation", async () => {
    const totals = new UnreadTotals()
    const relay = await startRelay({
      backend: new MemoryBackend(),
      port: 0,
      warmUp: false,
      log: "silent",
      auth: { kind: "secret", secret: "totals-secret" },
      extensions: [totals],
    })
    relays.push(relay)
    const conversations: ConversationId[] = []
    const CONVERSATIONS = 40
    for (let i = 0; i < CONVERSATIONS; i++) {
      const id = newConversationId()
      conversations.push(id)
      await relay.core.write(id, asAlice, (doc) => {
        createConversation(doc, alice, { kind: "group", id, participants: [bob] })
        sendMessage(doc, alice, { body: `hello ${i}` })
      })
    }
    await relay.hooks!.idle()
    const { core, reads } = counting(relay.core)

    // As the push target asks: once per pushed message, for the conversation at hand.
    const PUSHES = 20
    const before = reads()
    for (let i = 0; i < PUSHES; i++) await inboxSummary(core, bob)
    const derivedReads = reads() - before

    const start = reads()
    for (let i = 0; i < PUSHES; i++) {
      const at = conversations[i % 3]!
      await relay.core.write(at, asAlice, (doc) => {
        sendMessage(doc, alice, { body: `more ${i}` })
      })
      if (i === 7) await relay.core.write(conversations[5]!, asBob, (doc) => markRead(doc, bob, "latest"))
      const cached = await totals.summary(core, bob, at)
      const derived = await inboxSummary(relay.core, bob)
      expect(cached.totalUnread).toBe(derived.totalUnread)
      expect(cached.unread).toEqual(derived.unread)
    }
    const cachedReads = reads() - start
    console.log(
      `badge reads for ${PUSHES} pushes to a member of ${CONVERSATIONS} conversations: ` +
        `derived ${derivedReads} (${derivedReads / PUSHES}/push), cached ${cachedReads} (${(cachedReads / PUSHES).toFixed(2)}/push)`,
    )
    expect(derivedReads).toBe(PUSHES * (CONVERSATIONS + 1))
    // The first push derives them once (inbox + every conversation); every later one reads its conversation only.
    expect(cachedReads).toBe(CONVERSATIONS + 1 + (PUSHES - 1))
  })

  it("count the conversation at hand when the recipient's inbox does not list it yet (a first push to a new member)", async () => {
    const totals = new UnreadTotals()
    // No inbox upkeep: the inbox lists nothing, as when its entry is still being written (by another relay).
    const relay = await startRelay({
      backend: new MemoryBackend(),
      port: 0,
      warmUp: false,
      log: "silent",
      inbox: false,
      auth: { kind: "secret", secret: "totals-secret" },
      extensions: [totals],
    })
    relays.push(relay)
    const id = newConversationId()
    await relay.core.write(id, asAlice, (doc) => {
      createConversation(doc, alice, { kind: "group", id, participants: [bob] })
      sendMessage(doc, alice, { body: "welcome" })
    })
    expect((await inboxSummary(relay.core, bob)).totalUnread).toBe(0)
    const first = await totals.summary(relay.core, bob, id)
    expect(first.totalUnread).toBe(1)
    expect(first.unread[id]).toBe(1)
  })
})
