import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
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
const name = (base: string) => `${base}i${++unique}`

describe("client.inbox", () => {
  it("shows a conversation the user was just added to, live, and follows previews and counts from other devices", async () => {
    const [a, b, c] = [name("alice"), name("bob"), name("carol")]
    const carol = await connectClient(relay, c)
    const changes: number[] = []
    carol.inbox.on("change", ({ totalUnread }) => changes.push(totalUnread))
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "Plans" })
    const first = chat.send("hello")
    chat.addParticipants([c])
    await eventually(() => expect(carol.inbox.items.map((i) => i.conversationId)).toEqual([chat.id]))
    expect(carol.inbox.items[0]).toMatchObject({ title: "Plans", unread: 1, lastMessage: { text: "hello" } })
    chat.send("second")
    await eventually(() => expect(carol.inbox.items[0]?.lastMessage?.text).toBe("second"))
    chat.edit(first.id, "hello, edited")
    const last = chat.send("third")
    await eventually(() => expect(carol.inbox.totalUnread).toBe(3))
    chat.deleteMessage(last.id)
    await eventually(() =>
      expect(carol.inbox.items[0]?.lastMessage).toMatchObject({ deleted: true, id: last.id }),
    )
    expect(carol.inbox.totalUnread).toBe(2)
    // Carol reads on her phone; her laptop's inbox follows.
    const phone = await connectClient(relay, c)
    const onPhone = await phone.conversation(chat.id).ready()
    onPhone.markRead()
    await eventually(() => expect(carol.inbox.totalUnread).toBe(0))
    expect(changes.length).toBeGreaterThan(0)
    // Removed: the entry goes.
    chat.removeParticipants([c])
    await eventually(() => expect(carol.inbox.items).toEqual([]))
  })

  it("works offline after one sync, and keeps mute on every device", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "Offline inbox" })
    chat.send("for later")
    const bob = await connectClient(relay, b, { storage: "indexeddb" })
    await eventually(() => expect(bob.inbox.items[0]?.unread).toBe(1))
    bob.inbox.mute(chat.id)
    const other = await connectClient(relay, b)
    await eventually(() => expect(other.inbox.items[0]?.muted).toBe(true))
    await bob.destroy()
    // A reload without network: the list is there from the local replica.
    const offline = await connectClient(relay, b, { storage: "indexeddb", connect: false })
    await offline.inbox.loaded
    expect(offline.status).toBe("offline")
    expect(offline.inbox.items.map((i) => [i.title, i.unread, i.muted])).toEqual([["Offline inbox", 1, true]])
  })
})

describe("client.inbox with the user's own changes made offline", () => {
  it("previews, orders and reads them at once, after a reload too, until the relay's entry catches up", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { storage: "indexeddb" })
    const bob = await connectClient(relay, b)
    const older = await alice.createConversation({ participants: [b], title: "older" })
    const chat = await alice.createConversation({ participants: [b], title: "plans" })
    // Bob may open it once the relay has it: bob's inbox says so (alice's also shows what she has
    // not yet had stored).
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    await eventually(() => expect(alice.inbox.items).toHaveLength(2))
    await bob.conversation(chat.id).ready()
    bob.conversation(chat.id).send("from bob")
    await eventually(() => expect(alice.inbox.items[0]?.lastMessage?.text).toBe("from bob"))
    older.send("bump the other conversation")
    await eventually(() =>
      expect(alice.inbox.items.map((i) => [i.title, i.lastMessage?.text, i.unread])).toEqual([
        ["older", "bump the other conversation", 0],
        ["plans", "from bob", 1],
      ]),
    )

    alice.disconnect()
    chat.markRead()
    chat.send("one offline")
    chat.send("two offline")
    const expected = [
      ["plans", "two offline", 0],
      ["older", "bump the other conversation", 0],
    ]
    expect(alice.inbox.items.map((i) => [i.title, i.lastMessage?.text, i.unread])).toEqual(expected)
    expect(alice.inbox.totalUnread).toBe(0)

    await alice.destroy()
    const reloaded = await connectClient(relay, a, { storage: "indexeddb", connect: false })
    await reloaded.inbox.loaded
    expect(reloaded.inbox.items.map((i) => [i.title, i.lastMessage?.text, i.unread])).toEqual(expected)

    // Back online: the relay's entry takes over once it has the messages.
    reloaded.connect()
    await reloaded.conversation(chat.id).ready()
    await eventually(() =>
      expect(reloaded.inbox.items[0]?.lastMessage).toMatchObject({
        text: "two offline",
        seq: expect.any(Number),
      }),
    )
  })
})

describe("client.inbox after an offline read and a reload", () => {
  it("counts a message that came after the read as unread, the conversation not opened (before: 0 until opened)", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "later" })
    for (let i = 0; i < 3; i++) chat.send(`m${i}`)
    const bob = await connectClient(relay, b, { storage: "indexeddb" })
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    const onBob = await bob.conversation(chat.id).ready()
    await eventually(() => expect(onBob.messages()).toHaveLength(3))
    bob.disconnect()
    onBob.markRead()
    expect(bob.inbox.totalUnread).toBe(0)
    await bob.destroy()
    const reloaded = await connectClient(relay, b, { storage: "indexeddb", connect: false })
    await reloaded.inbox.loaded
    expect(reloaded.inbox.totalUnread).toBe(0)
    chat.send("while bob was away")
    reloaded.connect()
    await eventually(() => expect(reloaded.inbox.items[0]?.lastMessage?.text).toBe("while bob was away"))
    await eventually(() => expect(reloaded.inbox.items[0]?.unread).toBe(1))
    expect(reloaded.inbox.totalUnread).toBe(1)
  })
})

describe("work done offline in a conversation the app does not open after a reload", () => {
  it("goes out once the client is online (before: not until the user opened that conversation again)", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "background" })
    chat.send("hello bob")
    const bob = await connectClient(relay, b, { storage: "indexeddb" })
    // Opened once the relay has it: bob's inbox says so.
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    const onBob = await bob.conversation(chat.id).ready()
    await eventually(() => expect(onBob.messages()).toHaveLength(1))
    bob.disconnect()
    const reply = onBob.send("written offline")
    onBob.markRead()
    await bob.destroy()
    const reloaded = await connectClient(relay, b, { storage: "indexeddb", connect: false })
    await reloaded.inbox.loaded
    reloaded.connect()
    // Bob stays on his list; alice sees his reply, and that he read hers.
    await eventually(() => expect(chat.messages().map((m) => m.body)).toContain("written offline"))
    await eventually(() => expect(chat.status(chat.messages()[0]!.id)).toBe("read"))
    expect(chat.messages().find((m) => m.body === "written offline")?.id).toBe(reply.id)
    await eventually(() => expect(reloaded.inbox.items[0]?.lastMessage?.text).toBe("written offline"))
  })
})

describe("work done offline in more conversations than are sent at once, some of it in no inbox entry", () => {
  it("all goes out after a reload, a few conversations at a time (before: the first four never closed, the rest and an added member waited)", async () => {
    const [a, b, c] = [name("alice"), name("bob"), name("carol")]
    const alice = await connectClient(relay, a)
    const chats = []
    for (let i = 0; i < 6; i++) {
      const chat = await alice.createConversation({ participants: [b], title: `bg ${i}` })
      chat.send(`hello ${i}`)
      chats.push(chat)
    }
    chats[5]!.changeRole(b, "admin")
    const bob = await connectClient(relay, b, { storage: "indexeddb" })
    await eventually(() => expect(bob.inbox.items).toHaveLength(6))
    const onBob = await Promise.all(chats.map((chat) => bob.conversation(chat.id).ready()))
    for (const chat of onBob) await eventually(() => expect(chat.messages()).toHaveLength(1))
    await eventually(() => expect(onBob[5]!.role).toBe("admin"))
    bob.disconnect()
    for (const [i, chat] of onBob.entries()) {
      // The last one only gains a member: nothing an inbox entry shows.
      if (i === 5) chat.addParticipants([c])
      else chat.send(`offline ${i}`)
    }
    await bob.destroy()
    const reloaded = await connectClient(relay, b, { storage: "indexeddb", connect: false })
    await reloaded.inbox.loaded
    reloaded.connect()
    for (const [i, chat] of chats.entries()) {
      if (i === 5) await eventually(() => expect(chat.participants.map((p) => p.user)).toContain(c), 30_000)
      else
        await eventually(() => expect(chat.messages().map((m) => m.body)).toContain(`offline ${i}`), 30_000)
    }
  }, 60_000)
})

describe("a conversation open while its user is removed and added back", () => {
  it("serves again once the relay lists it again (before: unavailable until the app reopened it)", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "back again" })
    chat.send("first")
    const bob = await connectClient(relay, b)
    await eventually(() => expect(bob.inbox.items.map((i) => i.conversationId)).toContain(chat.id))
    const onBob = await bob.conversation(chat.id).ready()
    chat.removeParticipants([b])
    await eventually(() => expect(onBob.state).toMatchObject({ state: "unavailable", reason: "FORBIDDEN" }))
    await eventually(() => expect(bob.inbox.items).toEqual([]))
    chat.addParticipants([b])
    await eventually(() => expect(onBob.state.state).toBe("ready"))
    chat.send("after")
    await eventually(() => expect(onBob.messages().map((m) => m.body)).toContain("after"))
    const reply = onBob.send("I am back")
    await eventually(() => expect(onBob.status(reply.id)).toBe("sent"))
  })
})

describe("client.inbox after the user's offline change was refused", () => {
  it("drops the conversation once the user was removed from it, not keeping their own preview forever", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const bob = await connectClient(relay, b)
    const alice = await connectClient(relay, a)
    const group = await bob.createConversation({ participants: [a], title: "team" })
    const hello = group.send("welcome")
    await eventually(() => expect(group.status(hello.id)).toBe("sent"))
    const mine = await alice.conversation(group.id).ready()
    alice.disconnect()
    mine.send("can I still post?")
    expect(alice.inbox.items.map((i) => i.lastMessage?.text)).toEqual(["can I still post?"])
    group.removeParticipants([a])
    await eventually(() => expect(group.participants.map((p) => p.user)).toEqual([b]))
    alice.connect()
    await eventually(() => expect(alice.inbox.items).toEqual([]))
  })

  it("does not preview the user's own message that the conversation's deletion refused, after a reload either", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const bob = await connectClient(relay, b)
    const alice = await connectClient(relay, a, { storage: "indexeddb" })
    const group = await bob.createConversation({ participants: [a], title: "team" })
    const hello = group.send("welcome")
    await eventually(() => expect(group.status(hello.id)).toBe("sent"))
    const mine = await alice.conversation(group.id).ready()
    alice.disconnect()
    mine.send("anyone here?")
    expect(alice.inbox.items.map((i) => i.lastMessage?.text)).toEqual(["anyone here?"])
    await alice.destroy()
    group.delete()
    await group.flush()
    // Reloaded, the conversation not opened by the app: the device sends what it wrote in the background.
    const reloaded = await connectClient(relay, a, { storage: "indexeddb", connect: false })
    await reloaded.inbox.loaded
    expect(reloaded.inbox.items.map((i) => i.lastMessage?.text)).toEqual(["anyone here?"])
    reloaded.connect()
    await eventually(() => {
      expect(reloaded.inbox.items.map((i) => i.lastMessage?.text ?? "")).not.toContain("anyone here?")
    })
  })
})
