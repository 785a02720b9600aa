import "fake-indexeddb/auto"
import { AWAY_AFTER_MS, PRESENCE_STAMP } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { TestClient } from "../../relay/test/helpers/clients.js"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  type RelayProcess,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
const raw: TestClient[] = []
afterEach(async () => {
  for (const c of raw.splice(0)) c.close()
  await destroyClients()
})

let unique = 0
const name = (base: string) => `${base}${++unique}`

/** A clock the test moves by hand (presence judges "away" by it). */
function manualClock() {
  let now = Date.now()
  return { now: () => now, advance: (ms: number) => (now += ms) }
}

describe("presence", () => {
  it("shows a member online, away after a while without activity, online again when active, and offline with last seen when gone", async () => {
    const [a, b, c] = [name("alice"), name("bob"), name("carol")]
    const clock = manualClock()
    const alice = await connectClient(relay, a, { clock: clock.now })
    const bob = await connectClient(relay, b, { clock: clock.now })
    const chat = await alice.createConversation({ participants: [b, c] })
    // Stored on the relay (it is in alice's inbox) before bob opens it.
    // Stored by the relay: bob's inbox lists it (alice's also shows what is not stored yet).
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    const bobsChat = await bob.conversation(chat.id).ready()
    await eventually(() =>
      expect(bobsChat.presence).toEqual([{ user: a, status: "online", lastSeen: clock.now() }]),
    )
    expect(bob.presenceOf(a).status).toBe("online")
    expect(bob.presence.map((p) => p.user)).toEqual([a])

    // Nothing from alice for longer than AWAY_AFTER_MS: away (judged when bob's view next changes).
    clock.advance(AWAY_AFTER_MS + 1000)
    const carol = await connectClient(relay, c, { clock: clock.now })
    await carol.conversation(chat.id).ready()
    await eventually(() => expect(bobsChat.presence.find((p) => p.user === a)?.status).toBe("away"))
    await eventually(() => expect(bobsChat.presence.find((p) => p.user === c)?.status).toBe("online"))

    // Alice types: active again.
    chat.typing()
    await eventually(() => expect(bobsChat.presence.find((p) => p.user === a)?.status).toBe("online"))
    const activeAt = clock.now()

    // Alice leaves: offline, last seen when she was last active.
    clock.advance(5000)
    await alice.destroy()
    await eventually(() =>
      expect(bobsChat.presence.find((p) => p.user === a)).toEqual({
        user: a,
        status: "offline",
        lastSeen: activeAt,
      }),
    )
    expect(bob.presenceOf("nobody")).toEqual({ user: "nobody", status: "offline" })
  })

  it("hides a user who switches presence off (no awareness entry at all), and shows them again when switched on", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const bob = await connectClient(relay, b)
    const chat = await alice.createConversation({ participants: [b] })
    // Stored by the relay: bob's inbox lists it (alice's also shows what is not stored yet).
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    const bobsChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bobsChat.presence.map((p) => p.status)).toEqual(["online"]))
    // A raw member watching the awareness itself.
    const watcher = new TestClient(relay.url, chat.id, await devToken(relay, b))
    raw.push(watcher)
    await watcher.synced()
    const alicesEntries = () =>
      [...watcher.awareness.getStates().values()].filter((s) => s[PRESENCE_STAMP] === a)
    await watcher.until(() => alicesEntries().length === 1)

    alice.setPresenceVisible(false)
    expect(alice.presenceVisible).toBe(false)
    await eventually(() => expect(bobsChat.presence.map((p) => p.status)).toEqual(["offline"]))
    await watcher.until(() => alicesEntries().length === 0)
    // Typing while hidden reveals nothing either.
    chat.typing()
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(alicesEntries()).toEqual([])
    expect(bobsChat.typingUsers).toEqual([])

    alice.setPresenceVisible(true)
    await eventually(() => expect(bobsChat.presence.map((p) => p.status)).toEqual(["online"]))
  })

  it("believes only the relay's stamp: a state claiming to be someone else shows as its sender", async () => {
    const [a, b, m] = [name("alice"), name("bob"), name("mallory")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b, m] })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    const mallory = new TestClient(relay.url, chat.id, await devToken(relay, m))
    raw.push(mallory)
    await mallory.synced()
    mallory.awareness.setLocalState({ user: b, active: 1, [PRESENCE_STAMP]: b })
    const { encodeAwarenessUpdate } = await import("y-protocols/awareness")
    const { encodeAwareness } = await import("@parley/shared")
    mallory.send(encodeAwareness(encodeAwarenessUpdate(mallory.awareness, [mallory.doc.clientID])))
    await eventually(() => expect(chat.presence.map((p) => p.user)).toEqual([m]))
  })
})

describe("presence across reconnects", () => {
  /** Alice and bob in a new group of theirs on `on`, each seeing the other online. */
  async function pairOnline(on: RelayProcess) {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(on, a)
    const bob = await connectClient(on, b)
    const chat = await alice.createConversation({ participants: [b] })
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    const bobsChat = await bob.conversation(chat.id).ready()
    const status = (of: typeof chat, user: string) => of.presence.find((p) => p.user === user)?.status
    /** What bob shows of alice, and alice of bob. */
    const seen = () => [status(bobsChat, a), status(chat, b)]
    await eventually(() => expect(seen()).toEqual(["online", "online"]))
    return { alice, seen }
  }

  it("shows each other online again right after the relay restarts, not at the next renewal 15 s later", async () => {
    const own = await startRelay()
    const { seen } = await pairOnline(own)
    await own.stop()
    await eventually(() => expect(seen()).toEqual(["offline", "offline"]))
    const again = await startRelay({ port: own.port, dataDir: own.dataDir })
    try {
      // Well before either client's 15 s renewal.
      await eventually(() => expect(seen()).toEqual(["online", "online"]), 5_000)
    } finally {
      await destroyClients()
      await again.stop()
    }
  }, 60_000)

  it("shows a user online again right after her own connection dropped and came back", async () => {
    const { alice, seen } = await pairOnline(relay)
    alice.disconnect()
    await eventually(() => expect(seen()[0]).toBe("offline"))
    alice.connect()
    await eventually(() => expect(seen()).toEqual(["online", "online"]), 5_000)
  }, 60_000)
})
