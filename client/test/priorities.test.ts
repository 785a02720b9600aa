import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import { type ChatClient, createChatClient, ErrorCode, inboxStore, Rule } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay.stop()
})
const offline: ChatClient[] = []
afterEach(async () => {
  await Promise.all(offline.splice(0).map((c) => c.destroy()))
  await destroyClients()
})

describe("priorities in the SDK", () => {
  it("lists pinned messages on every device, tells when they change, and lets only the author or an admin unpin", async () => {
    const alice = await connectClient(relay, "pin-alice")
    const bob = await connectClient(relay, "pin-bob")
    const chat = await alice.createConversation({ participants: ["pin-bob"], title: "Pins" })
    const pinned = chat.send("Wifi: parley-guest", { priority: "sticky" })
    chat.send("not pinned")
    await eventually(() => expect(bob.inbox.items.some((i) => i.conversationId === chat.id)).toBe(true))
    const seen = await bob.conversation(chat.id).ready()
    const events: string[][] = []
    seen.on("pinned", ({ messages }) => events.push(messages.map((m) => m.id)))
    await eventually(() => expect(seen.pinned().map((m) => m.body)).toEqual(["Wifi: parley-guest"]))

    expect(() => seen.unpin(pinned.id)).toThrow(
      expect.objectContaining({ code: ErrorCode.FORBIDDEN, rule: Rule.unpinAuthorOrAdmin }),
    )
    chat.unpin(pinned.id)
    expect(chat.pinned()).toEqual([])
    await eventually(() => expect(seen.pinned()).toEqual([]))
    expect(events.at(-1)).toEqual([])
  })

  it("flags an emergency in the recipient's inbox and conversation until they read it", async () => {
    const alice = await connectClient(relay, "sos-alice")
    const bob = await connectClient(relay, "sos-bob")
    const chat = await alice.createConversation({ participants: ["sos-bob"] })
    chat.send("hello")
    const alarm = chat.send("Leave the building", { priority: "emergency" })
    await eventually(() =>
      expect(bob.inbox.items.find((i) => i.conversationId === chat.id)?.emergency).toEqual([alarm.id]),
    )
    // The inbox store (React's useInbox) counts them over every conversation.
    expect(inboxStore(bob).getSnapshot().emergency).toBe(1)
    const seen = await bob.conversation(chat.id).ready()
    await eventually(() => expect(seen.unreadEmergency).toEqual([alarm.id]))
    // The sender's own emergency is not flagged for them.
    expect(chat.unreadEmergency).toEqual([])
    seen.markRead()
    expect(seen.unreadEmergency).toEqual([])
    await eventually(() =>
      expect(bob.inbox.items.find((i) => i.conversationId === chat.id)?.emergency).toBeUndefined(),
    )
    expect(inboxStore(bob).getSnapshot().emergency).toBe(0)
  })

  it("hides a fleeting message once the conversation's time is up, even offline", async () => {
    const client = await createChatClient({
      url: "ws://127.0.0.1:9",
      token: () => {
        throw new Error("offline: no token")
      },
      user: "fleet-alice",
      storage: "memory",
      connect: false,
      WebSocket: WebSocket as never,
    })
    offline.push(client)
    const chat = await client.createConversation({ participants: ["fleet-bob"] })
    chat.setFleetingSeconds(1)
    chat.send("Self-destructs", { priority: "fleeting" })
    chat.send("stays")
    const shown: string[][] = []
    const stop = chat.watchMessages({ last: 10 }, (messages) => shown.push(messages.map((m) => m.body)))
    expect(chat.messages().map((m) => m.body)).toEqual(["Self-destructs", "stays"])
    await eventually(() => expect(chat.messages().map((m) => m.body)).toEqual(["stays"]), 5_000)
    // Watchers are told when the time is up, without any other change.
    await eventually(() => expect(shown.at(-1)).toEqual(["stays"]), 5_000)
    stop()
  })
})
