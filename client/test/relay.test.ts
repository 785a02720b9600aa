import "fake-indexeddb/auto"
import { ErrorCode, type MessageId, ParleyError, storedRecordId, typesOf } from "@parley/shared"
import { SignJWT } from "jose"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import type { Conversation, MessageStatus } from "../src/index.js"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  everyMessage,
  type RelayProcess,
  SAVED,
  sendEachRead,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

let unique = 0
/** A fresh user name per test, so that tests sharing the relay and IndexedDB never meet. */
const name = (base: string) => `${base}${++unique}`

/** How many records with this id the raw `messages` array holds. */
const copies = (chat: Conversation, id: string) =>
  typesOf(chat.doc)
    .messages.toArray()
    .filter((r) => storedRecordId(r) === id).length

const bodies = (chat: Conversation) => chat.messages({ last: 100 }).map((m) => m.body)

describe("ChatClient against a relay", () => {
  it("lets two users exchange messages in a direct conversation", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const bob = await connectClient(relay, b)
    const aliceChat = await alice.directConversation(b)
    aliceChat.send("hi bob")
    await eventually(() => expect(aliceChat.messages()[0]?.status).toBe("sent"))
    const bobChat = await bob.directConversation(a)
    expect(bobChat.id).toBe(aliceChat.id)
    await eventually(() => expect(bodies(bobChat)).toEqual(["hi bob"]))
    bobChat.send("hi alice")
    await eventually(() => expect(bodies(aliceChat)).toEqual(["hi bob", "hi alice"]))
    // Sequence numbers arrive in the relay's own update, right after the message itself.
    await eventually(() => expect(bobChat.messages().map((m) => m.seq)).toEqual([1, 2]))
    await eventually(() => expect(aliceChat.messages().map((m) => m.seq)).toEqual([1, 2]))
    expect(alice.status).toBe("online")
    // Destroyed, it connects no more, and says so (an app's indicator stayed "online" or "connecting").
    const told: string[] = []
    alice.on("status", ({ status }) => told.push(status))
    await alice.destroy()
    expect(alice.status).toBe("offline")
    expect(told).toEqual(["offline"])
  })

  it("rejects ready() of a conversation this device never had with a retryable UNAVAILABLE while offline, and is ready once online", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "deep link" })
    const first = chat.send("hello")
    await eventually(() => expect(SAVED).toContain(chat.status(first.id)))
    // Bob opens it from a link while offline: nothing of it is on his device.
    const bob = await connectClient(relay, b, { connect: false })
    const unknown = bob.conversation(chat.id)
    // Before: the promise never settled.
    await expect(unknown.ready()).rejects.toMatchObject({ code: ErrorCode.UNAVAILABLE })
    expect(unknown.state.state).toBe("loading")
    bob.connect()
    const ready = await unknown.ready()
    expect(ready.messages().map((m) => m.body)).toEqual(["hello"])
  })

  it("opens a live handle for a conversation whose earlier handle is still closing", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { storage: "indexeddb" })
    const chat = await (await alice.directConversation(b)).ready()
    const first = chat.send("before the close")
    await eventually(() => expect(SAVED).toContain(chat.status(first.id)))
    // An effect's cleanup closes it and the remount opens it again, in the same turn.
    const closing = chat.close()
    const again = alice.conversation(chat.id)
    // Before: the closing handle came back; it looked ready and refused every send (UNAVAILABLE).
    expect(again).not.toBe(chat)
    await again.ready()
    const sent = again.send("after the reopen")
    await eventually(() => expect(SAVED).toContain(again.status(sent.id)))
    await closing
    // The old handle's end does not drop the new one: opening again returns it.
    expect(alice.conversation(chat.id)).toBe(again)
    expect((await alice.directConversation(b)).id).toBe(chat.id)
  })

  it("delivers what a user sent, edited and deleted offline, in canonical order, once back online", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const bob = await connectClient(relay, b)
    const aliceChat = await alice.createConversation({ participants: [b], title: "offline" })
    await eventually(() => expect(aliceChat.connection.status).toBe("online"))
    const bobChat = await bob.conversation(aliceChat.id).ready()

    alice.disconnect()
    expect(alice.status).toBe("offline")
    const first = aliceChat.send("first draft")
    const second = aliceChat.send("to be deleted")
    const third = aliceChat.send("third")
    aliceChat.edit(first.id, "first, edited")
    aliceChat.deleteMessage(second.id)
    bobChat.send("meanwhile, bob")
    await eventually(() => expect(bobChat.message(bobChat.messages()[0]!.id)?.seq).toBe(1))
    expect(bodies(bobChat)).toEqual(["meanwhile, bob"])
    expect(aliceChat.messages().map((m) => m.status)).toEqual(["pending", "pending", "pending"])

    alice.connect()
    const expected = [
      ["meanwhile, bob", 1, false],
      ["first, edited", 2, false],
      ["", 3, true],
      ["third", 4, false],
    ]
    const view = (chat: Conversation) => chat.messages({ last: 10 }).map((m) => [m.body, m.seq, !!m.deleted])
    await eventually(() => expect(view(bobChat)).toEqual(expected))
    await eventually(() => expect(view(aliceChat)).toEqual(expected))
    expect(bobChat.message(third.id)?.author).toBe(a)
    expect(aliceChat.status(first.id)).not.toBe("pending")
  })

  it("still has pending messages after a reload and sends each exactly once", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const before = await connectClient(relay, a, { storage: "indexeddb", connect: false })
    const chat = await before.createConversation({ participants: [b] })
    const sent = ["one", "two", "three"].map((body) => chat.send(body).id)
    await before.destroy()

    const after = await connectClient(relay, a, { storage: "indexeddb", connect: false })
    const reloaded = await after.conversation(chat.id).ready()
    expect(reloaded.messages().map((m) => [m.id, m.status])).toEqual(sent.map((id) => [id, "pending"]))
    after.connect()
    await eventually(() => expect(reloaded.messages().map((m) => m.status)).toEqual(["sent", "sent", "sent"]))

    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bodies(bobChat)).toEqual(["one", "two", "three"]))
    for (const id of sent) expect(copies(bobChat, id)).toBe(1)
    await eventually(() => expect(bobChat.messages().map((m) => m.seq)).toEqual([1, 2, 3]))
  })

  it("delivers more offline work than one update may carry, in parts, each message once", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "long flight" })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    alice.disconnect()
    // 2,400 messages, each read (2,400 marker moves): over the relay's default caps of 2,000 values and
    // 1,500 structs per update, so sent whole the sync would be refused on every reconnect.
    const sent = sendEachRead(chat, 2_400)
    const errors: string[] = []
    chat.on("error", ({ error }) => errors.push(`${error.code} ${error.rule ?? ""}`))
    alice.connect()
    await eventually(() => expect(chat.messages().every((m) => m.status === "sent")).toBe(true), 60_000)

    // Bob sees every one of them once, in order, numbered 1 to 2,400 (older ones paged from the sealed history).
    const seen = await everyMessage(relay, b, chat.id, sent.at(-1)!)
    expect(seen.map((m) => m.id)).toEqual(sent)
    expect(seen.map((m) => m.seq)).toEqual(sent.map((_, i) => i + 1))
    expect(errors).toEqual([])
  }, 120_000)

  it("moves a message through pending, sent, delivered and read", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { connect: false })
    const chat = await alice.createConversation({ participants: [b] })
    const seen: MessageStatus[] = []
    const message = chat.send("status?")
    chat.on("status", ({ messageId, status }) => {
      if (messageId === message.id) seen.push(status)
    })
    expect(chat.status(message.id)).toBe("pending")
    alice.connect()
    await eventually(() => expect(seen).toContain("sent"))

    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(chat.status(message.id)).toBe("delivered"))
    expect(bobChat.unreadCount).toBe(1)
    bobChat.markRead()
    expect(bobChat.unreadCount).toBe(0)
    await eventually(() => expect(chat.status(message.id)).toBe("read"))
    expect(seen).toEqual(["sent", "delivered", "read"])
    expect(chat.markers[b as keyof typeof chat.markers]).toEqual({ read: 1, delivered: 1 })
  })

  it("shows typing to the other user and lets it expire on its own", async () => {
    const [a, b] = [name("alice"), name("bob")]
    // Alice's clock runs 4 s behind, so her signal is 4 s old on arrival and expires ~2 s later.
    const alice = await connectClient(relay, a, { clock: () => Date.now() - 4_000 })
    const bob = await connectClient(relay, b)
    const aliceChat = await alice.directConversation(b)
    await eventually(() => expect(aliceChat.connection.status).toBe("online"))
    const bobChat = await bob.directConversation(a)
    await eventually(() => expect(bobChat.connection.status).toBe("online"))
    const changes: (readonly string[])[] = []
    bobChat.on("typing", ({ users }) => changes.push(users))
    aliceChat.typing()
    await eventually(() => expect(changes).toEqual([[a]]))
    expect(bobChat.typingUsers).toEqual([a])
    expect(aliceChat.typingUsers).toEqual([])
    await eventually(() => expect(changes).toEqual([[a], []]))
    expect(bobChat.typingUsers).toEqual([])
  })

  it("refuses, with FORBIDDEN and without writing, a member removing another member", async () => {
    const [a, b, c] = [name("alice"), name("bob"), name("carol")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b, c] })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat.id).ready()
    const updates: Uint8Array[] = []
    bobChat.doc.on("update", (update: Uint8Array) => updates.push(update))
    let error: unknown
    try {
      bobChat.removeParticipants([c])
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(ParleyError)
    expect((error as ParleyError).code).toBe(ErrorCode.FORBIDDEN)
    expect((error as ParleyError).rule).toBe("admin-only")
    expect(updates).toEqual([])
    expect(bobChat.participants.map((p) => p.user).sort()).toEqual([a, b, c].sort())
  })

  it("reports a conversation the relay will not open for the user as unavailable: FORBIDDEN", async () => {
    const [a, b, m] = [name("alice"), name("bob"), name("mallory")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b] })
    chat.send("secret")
    await eventually(() => expect(chat.messages()[0]?.status).toBe("sent"))
    const mallory = await connectClient(relay, m)
    const handle = mallory.conversation(chat.id)
    await expect(handle.ready()).rejects.toMatchObject({ code: ErrorCode.FORBIDDEN })
    expect(handle.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN })
    expect(handle.messages()).toEqual([])
  })

  it("fails, with the relay's reason, what a removed user sent while offline", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b] })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bobChat.connection.status).toBe("online"))

    const own = bobChat.send("before my removal")
    await eventually(() => expect(bobChat.status(own.id)).not.toBe("pending"))
    chat.send("alice, while bob is online")
    await eventually(() => expect(bobChat.messages().length).toBe(2))
    bob.disconnect()
    chat.removeParticipants([b])
    await eventually(() => expect(chat.participants.map((p) => p.user)).toEqual([a]))
    const late = bobChat.send("written after my removal")
    // An edit and a reaction too, offline: they stay on his replica only, and he is told so.
    bobChat.edit(own.id, "edited after my removal")
    bobChat.react(own.id, "🔥")
    const failures: { status: string; code?: string }[] = []
    bobChat.on("status", ({ status, error }) =>
      failures.push({ status, ...(error ? { code: error.code } : {}) }),
    )
    const errors: { code: string; change?: string }[] = []
    bobChat.on("error", ({ error, change }) =>
      errors.push({ code: error.code, ...(change ? { change: change.kind } : {}) }),
    )
    bob.connect()
    await eventually(() => expect(bobChat.state.state).toBe("unavailable"))
    expect(bobChat.state).toMatchObject({ reason: ErrorCode.FORBIDDEN })
    expect(failures).toEqual([{ status: "failed", code: ErrorCode.FORBIDDEN }])
    expect(errors).toEqual([
      { code: ErrorCode.FORBIDDEN, change: "message.edit" },
      { code: ErrorCode.FORBIDDEN, change: "reaction.add" },
    ])
    expect(bobChat.message(late.id)).toMatchObject({ status: "failed", error: { code: ErrorCode.FORBIDDEN } })
    expect(() => bobChat.send("again")).toThrow(ParleyError)
    expect(bodies(chat)).toEqual(["before my removal", "alice, while bob is online"])
  })

  it("lists a conversation in the other user's inbox, with its unread count, before they open it", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const bob = await connectClient(relay, b)
    const alice = await connectClient(relay, a)
    const chat = await alice.createConversation({ participants: [b], title: "inbox test" })
    chat.send("first")
    chat.send("second")
    await eventually(() =>
      expect(bob.inbox.items.map((i) => [i.conversationId, i.title, i.unread])).toEqual([
        [chat.id, "inbox test", 2],
      ]),
    )
    expect(bob.inbox.totalUnread).toBe(2)
    const bobChat = await bob.conversation(chat.id).ready()
    bobChat.markRead()
    await eventually(() => expect(bob.inbox.totalUnread).toBe(0))
    bob.inbox.mute(chat.id)
    await eventually(() => expect(bob.inbox.items[0]?.muted).toBe(true))
  })

  it("sends a long offline backlog part by part: the app's timers run before its last part goes", async () => {
    const [a, b] = [name("alice"), name("bob")]
    /** The sync frames the client sent since `recording`; a timer set as the step 2 went saw how many. */
    const sent: ("step2" | "update")[] = []
    let recording = false
    let seenByTimer = -1
    class RecordingSocket extends WebSocket {
      override send(data: Parameters<WebSocket["send"]>[0], ...rest: never[]): void {
        const bytes = data instanceof Uint8Array ? data : new Uint8Array(data as ArrayBuffer)
        // A sync frame: message type 0, then step 2 (1) or an update (2).
        if (recording && bytes[0] === 0 && (bytes[1] === 1 || bytes[1] === 2)) {
          sent.push(bytes[1] === 1 ? "step2" : "update")
          if (bytes[1] === 1)
            setTimeout(() => {
              seenByTimer = sent.length
            }, 0)
        }
        super.send(data, ...rest)
      }
    }
    const alice = await connectClient(relay, a, { WebSocket: RecordingSocket as never, multiplex: false })
    const chat = await alice.createConversation({ participants: [b] })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    alice.disconnect()
    // About 2.4 MB: five parts or more of the SDK's default 512 KiB.
    const ids = Array.from({ length: 240 }, (_, i) => chat.send(`${i} ${"x".repeat(10_000)}`).id)
    recording = true
    alice.connect()
    await eventually(() => expect(ids.every((id) => SAVED.includes(chat.status(id)!))).toBe(true), 60_000)

    expect(sent[0]).toBe("step2")
    expect(sent.filter((kind) => kind === "update").length).toBeGreaterThanOrEqual(4)
    // Sent in one go, every part had gone before the app's timer could run.
    expect(seenByTimer).toBeGreaterThan(0)
    expect(seenByTimer).toBeLessThan(sent.length)
    const seen = await everyMessage(relay, b, chat.id, ids.at(-1)!)
    expect(seen.map((m) => m.id)).toEqual(ids)
  }, 90_000)

  it("sends nothing twice when two clients of one user share one store", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const { tab1, chat1, chat2 } = await twoTabs(a, b)

    tab1.disconnect()
    const offline = chat1.send("from the offline tab")
    const online = chat2.send("from the online tab")
    // The tabs share updates locally; the online tab forwards the offline tab's message.
    await eventually(() => expect(chat2.message(offline.id)?.status).toBe("sent"))
    tab1.connect()
    await eventually(() => expect(chat1.message(offline.id)?.status).toBe("sent"))
    await eventually(() => expect(chat1.message(online.id)?.status).toBe("sent"))

    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat1.id).ready()
    await eventually(() =>
      expect(bodies(bobChat).sort()).toEqual(["from the offline tab", "from the online tab"]),
    )
    expect(copies(bobChat, offline.id)).toBe(1)
    expect(copies(bobChat, online.id)).toBe(1)
    await eventually(() => expect(bobChat.messages().map((m) => m.seq)).toEqual([1, 2]))
  })
})

/** Two clients of user `a` over one store (two tabs), a conversation with `b` open and online in both. */
async function twoTabs(a: string, b: string) {
  const tab1 = await connectClient(relay, a, { storage: "indexeddb" })
  const chat1 = await tab1.createConversation({ participants: [b] })
  await eventually(() => expect(chat1.connection.status).toBe("online"))
  const tab2 = await connectClient(relay, a, { storage: "indexeddb" })
  const chat2 = await tab2.conversation(chat1.id).ready()
  await eventually(() => expect(chat2.connection.status).toBe("online"))
  return { tab1, chat1, tab2, chat2 }
}

describe("tabs of one user", () => {
  it("shows an offline tab's message sent once its online sibling delivered it, and what others wrote", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const { tab1, chat1 } = await twoTabs(a, b)
    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat1.id).ready()

    tab1.disconnect()
    const offline = chat1.send("from the offline tab")
    await eventually(() => expect(bobChat.message(offline.id)?.body).toBe("from the offline tab"))
    // Still offline, the tab follows what the relay told its sibling.
    await eventually(() => expect(SAVED).toContain(chat1.status(offline.id)))
    const reply = bobChat.send("a reply")
    await eventually(() => expect(chat1.message(reply.id)?.body).toBe("a reply"))
    await eventually(() => expect(chat1.message(offline.id)?.seq).toBe(1))
    expect(tab1.status).toBe("offline")
  })
})

describe("ChatClient connection", () => {
  it("reports a failing token source and keeps retrying until it works", async () => {
    const [a, b] = [name("alice"), name("bob")]
    let tokenServerUp = false
    const alice = await connectClient(relay, a, {
      token: async () => {
        if (!tokenServerUp) throw new Error("token server unreachable")
        return devToken(relay, a)
      },
    })
    const errors: string[] = []
    alice.on("error", ({ error }) => errors.push(error.code))
    const chat = await alice.createConversation({ participants: [b] })
    const message = chat.send("waiting for a token")
    const doc = chat.doc
    await eventually(() => expect(errors.length).toBeGreaterThanOrEqual(1))
    // Told once while it fails the same way, not on every retry (it goes on retrying meanwhile).
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    expect(errors).toEqual([ErrorCode.UNAUTHORIZED])
    expect(alice.status).toBe("connecting")
    expect(chat.status(message.id)).toBe("pending")
    tokenServerUp = true
    await eventually(() => expect(chat.status(message.id)).toBe("sent"))
    // Not a refusal by the relay: the replica was kept, not rebuilt.
    expect(chat.doc).toBe(doc)
  })

  it("refuses to connect with a token for another user", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { token: () => devToken(relay, b) })
    const errors: string[] = []
    alice.on("error", ({ error }) => errors.push(error.message))
    const chat = await alice.createConversation({ participants: [b] })
    chat.send("as whom?")
    await eventually(() => expect(errors).toContain(`the token is for ${b}, not ${a}`))
    expect(alice.status).toBe("connecting")
  })

  it("goes offline and back online with the browser's offline and online events", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const browser = globalThis as { window?: EventTarget }
    browser.window = new EventTarget()
    try {
      const alice = await connectClient(relay, a)
      const chat = await alice.createConversation({ participants: [b] })
      await eventually(() => expect(alice.status).toBe("online"))
      browser.window.dispatchEvent(new Event("offline"))
      expect(alice.status).toBe("offline")
      const message = chat.send("sent while the browser was offline")
      expect(chat.status(message.id)).toBe("pending")
      browser.window.dispatchEvent(new Event("online"))
      await eventually(() => expect(chat.status(message.id)).toBe("sent"))
      expect(alice.status).toBe("online")
    } finally {
      await destroyClients()
      delete browser.window
    }
  })

  it("loses nothing when a client is closed in the middle of syncing", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const first = await connectClient(relay, a, { storage: "indexeddb" })
    const chat = await first.createConversation({ participants: [b] })
    const ids = Array.from({ length: 20 }, (_, i) => chat.send(`burst ${i}`).id)
    // Closed right away: the socket may not even be open yet.
    await first.destroy()

    const second = await connectClient(relay, a, { storage: "indexeddb" })
    const again = await second.conversation(chat.id).ready()
    expect(again.messages({ last: 50 }).map((m) => m.id)).toEqual(ids)
    await eventually(() => expect(again.messages({ last: 50 }).every((m) => m.status === "sent")).toBe(true))
    const bob = await connectClient(relay, b)
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bobChat.messages({ last: 50 })).toHaveLength(20))
    for (const id of ids) expect(copies(bobChat, id)).toBe(1)
  })

  it("keeps a conversation going across a relay restart", async () => {
    const first = await startRelay()
    let second: RelayProcess | undefined
    try {
      const alice = await connectClient(first, "alice")
      const bob = await connectClient(first, "bob")
      const aliceChat = await alice.directConversation("bob")
      aliceChat.send("before the restart")
      await eventually(() => expect(aliceChat.messages()[0]?.status).toBe("sent"))
      const bobChat = await bob.directConversation("alice")
      await eventually(() => expect(bodies(bobChat)).toEqual(["before the restart"]))

      await first.stop()
      await eventually(() => expect(alice.status).not.toBe("online"))
      const during = aliceChat.send("while the relay is down")
      expect(aliceChat.status(during.id)).toBe("pending")
      second = await startRelay({ port: first.port, dataDir: first.dataDir })
      await eventually(() => expect(alice.status).toBe("online"))
      await eventually(() =>
        expect(bodies(bobChat)).toEqual(["before the restart", "while the relay is down"]),
      )
      bobChat.send("after the restart")
      await eventually(() => expect(aliceChat.messages().map((m) => m.seq)).toEqual([1, 2, 3]))
      expect(bodies(aliceChat)).toEqual([
        "before the restart",
        "while the relay is down",
        "after the restart",
      ])
      expect(aliceChat.status(during.id as MessageId)).not.toBe("pending")
    } finally {
      await destroyClients()
      await first.stop()
      await second?.stop()
    }
  })
})

describe("ChatClient with signed tokens", () => {
  const secret = "client-test-secret-client-test-secret"
  const key = new TextEncoder().encode(secret)
  let own: RelayProcess
  beforeAll(async () => {
    own = await startRelay({ args: ["--auth-secret", secret] })
  })
  afterAll(async () => {
    await own?.stop()
  })

  it("gets a fresh token when the relay refuses an expired one", async () => {
    const mint = (user: string, expiresAt: number) =>
      new SignJWT({})
        .setProtectedHeader({ alg: "HS256" })
        .setSubject(user)
        .setExpirationTime(expiresAt)
        .sign(key)
    const now = Math.floor(Date.now() / 1000)
    const issued: string[] = []
    const alice = await connectClient(own, "alice", {
      // The first token handed out has already expired: the relay closes with 4401.
      token: async () => {
        issued.push(issued.length === 0 ? "expired" : "fresh")
        return mint("alice", issued.length === 1 ? now - 60 : now + 600)
      },
    })
    const chat = await alice.createConversation({ participants: ["bob"] })
    const message = chat.send("after refresh")
    await eventually(() => expect(chat.status(message.id)).toBe("sent"))
    expect(issued.slice(0, 2)).toEqual(["expired", "fresh"])
    const bob = await connectClient(own, "bob", { token: () => mint("bob", now + 600) })
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bodies(bobChat)).toEqual(["after refresh"]))
  })

  it("keeps the work of a token the relay keeps refusing pending, and sends it once the source hands out a working one", async () => {
    const now = Math.floor(Date.now() / 1000)
    let valid = false
    const alice = await connectClient(own, "alice", {
      token: () =>
        new SignJWT({})
          .setProtectedHeader({ alg: "HS256" })
          .setSubject("alice")
          .setExpirationTime(valid ? now + 600 : now - 60)
          .sign(key),
    })
    const errors: ErrorCode[] = []
    alice.on("error", ({ error }) => errors.push(error.code))
    const chat = await alice.createConversation({ participants: ["bob"] })
    const message = chat.send("once the token works")
    // Told once (the app may sign the user out); the conversation stays writable (before: unavailable,
    // and send() threw until the app called connect()).
    await eventually(() => expect(errors).toContain(ErrorCode.UNAUTHORIZED))
    expect(chat.state.state).toBe("ready")
    const later = chat.send("written after the refusals")
    expect(chat.status(message.id)).toBe("pending")
    valid = true
    await eventually(() => expect(chat.status(message.id)).toBe("sent"), 20_000)
    await eventually(() => expect(chat.status(later.id)).toBe("sent"))
  })
})

describe("ChatClient.destroy", () => {
  it("leaves no sockets, timers or channels behind", async () => {
    // Counts of live handles by kind (sockets, timers, message ports, ...).
    const resources = () => {
      const counts: Record<string, number> = {}
      for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1
      return counts
    }
    const leaked = (baseline: Record<string, number>) =>
      Object.entries(resources()).filter(([kind, count]) => count > (baseline[kind] ?? 0))
    const baseline = resources()
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a, { storage: "indexeddb" })
    const bob = await connectClient(relay, b)
    const aliceChat = await alice.directConversation(b)
    aliceChat.send("hello")
    aliceChat.typing()
    const bobChat = await bob.directConversation(a)
    await eventually(() => expect(bobChat.typingUsers).toEqual([a]))
    await eventually(() => expect(aliceChat.status(aliceChat.messages()[0]!.id)).toBe("delivered"))
    expect(leaked(baseline).map(([kind]) => kind)).toContain("TCPSocketWrap")
    await destroyClients()
    // Closing sockets takes a few turns of the event loop; poll without a timer of our own pending.
    for (let i = 0; i < 200 && leaked(baseline).length > 0; i++) await new Promise((r) => setTimeout(r, 20))
    expect(leaked(baseline)).toEqual([])
  })
})

// Dev tokens are fetched per connect; make sure the helper itself works against this relay.
it("mints dev tokens for the tests", async () => {
  expect((await devToken(relay, "someone")).split(".")).toHaveLength(3)
})
