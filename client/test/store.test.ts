import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import {
  type ChatClient,
  conversationStore,
  createChatClient,
  inboxStore,
  messageWindowStore,
  presenceStore,
  typingStore,
} from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

const offline: ChatClient[] = []
afterEach(async () => {
  await Promise.all(offline.splice(0).map((c) => c.destroy()))
  await destroyClients()
})

async function offlineClient(user: string): Promise<ChatClient> {
  const client = await createChatClient({
    url: "ws://127.0.0.1:9",
    token: () => {
      throw new Error("offline: no token")
    },
    user,
    storage: "memory",
    connect: false,
    WebSocket: WebSocket as never,
  })
  offline.push(client)
  return client
}

describe("stores", () => {
  it("replace only the message that changed and keep every other message object", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"] })
    const [a, b, c] = ["a", "b", "c"].map((body) => chat.send(body))
    const store = messageWindowStore(chat)
    let notified = 0
    const stop = store.subscribe(() => notified++)
    const before = store.getSnapshot()
    expect(store.getSnapshot()).toBe(before)

    chat.react(b!.id, "🎉")
    const after = store.getSnapshot()
    expect(notified).toBe(1)
    expect(after).not.toBe(before)
    expect(after.messages.map((m) => m.id)).toEqual([a!.id, b!.id, c!.id])
    expect(after.messages[0]).toBe(before.messages[0])
    expect(after.messages[2]).toBe(before.messages[2])
    expect(after.messages[1]!.reactions).toEqual({ "🎉": ["alice"] })

    chat.send("d")
    const withNew = store.getSnapshot()
    expect(withNew.messages).toHaveLength(4)
    expect(withNew.messages.slice(0, 3)).toEqual(after.messages)
    for (let i = 0; i < 3; i++) expect(withNew.messages[i]).toBe(after.messages[i])
    stop()
  })

  it("keep unchanged inbox items and leave listeners on the SDK only while subscribed", async () => {
    const client = await offlineClient("alice")
    await client.createConversation({ participants: ["bob"], title: "one" })
    const store = inboxStore(client)
    const snapshot = store.getSnapshot()
    // Unsubscribed: each read recomputes, but an unchanged inbox is the same snapshot.
    expect(store.getSnapshot()).toBe(snapshot)
    const chat = await client.createConversation({ participants: ["carol"], title: "two" })
    const conversation = conversationStore(chat)
    let calls = 0
    const stop = conversation.subscribe(() => calls++)
    chat.rename("deux")
    expect(conversation.getSnapshot().info?.title).toBe("deux")
    expect(calls).toBe(1)
    stop()
    chat.rename("zwei")
    expect(calls).toBe(1)
    expect(conversation.getSnapshot().info?.title).toBe("zwei")
  })

  describe("with a relay", () => {
    let relay: RelayProcess
    beforeAll(async () => {
      relay = await startRelay()
    })
    afterAll(async () => {
      await relay?.stop()
    })

    it("show who is around (the SDK's presence), and who is typing", async () => {
      const alice = await connectClient(relay, "alice")
      const bob = await connectClient(relay, "bob")
      const chat = await alice.createConversation({ participants: ["bob"] })
      // Bob may open it once the relay has it.
      const hello = chat.send("hello")
      await eventually(() => expect(chat.status(hello.id)).toBe("sent"))
      const presence = presenceStore(chat)
      const typing = typingStore(chat)
      const stops = [presence.subscribe(() => {}), typing.subscribe(() => {})]
      expect(presence.getSnapshot()).toEqual([])
      const bobs = await bob.conversation(chat.id).ready()
      await eventually(() =>
        expect(presence.getSnapshot()).toMatchObject([{ user: "bob", status: "online" }]),
      )
      bobs.typing()
      await eventually(() => expect(typing.getSnapshot()).toEqual(["bob"]))
      await bobs.close()
      await eventually(() =>
        expect(presence.getSnapshot()).toMatchObject([{ user: "bob", status: "offline" }]),
      )
      expect(presence.getSnapshot()[0]?.lastSeen).toEqual(expect.any(Number))
      for (const stop of stops) stop()
    })
  })
})
