import "fake-indexeddb/auto"
import {
  ErrorCode,
  messageCount,
  ParleyError,
  sendMessage,
  type UserId,
  writeSequenceNumbers,
} from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import WebSocket from "ws"
import * as Y from "yjs"
import { type ChatClient, createChatClient } from "../src/index.js"

const clients: ChatClient[] = []
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.destroy()))
})

async function offlineClient(
  user: string,
  storage: "memory" | "indexeddb" = "memory",
  url = "ws://127.0.0.1:9",
) {
  const client = await createChatClient({
    url,
    token: () => {
      throw new Error("offline: no token")
    },
    user,
    storage,
    connect: false,
    WebSocket: WebSocket as never,
  })
  clients.push(client)
  return client
}

describe("ChatClient offline", () => {
  it("creates a group, sends, edits, reacts and deletes without any relay", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"], title: "plans" })
    expect(chat.state.state).toBe("ready")
    expect(chat.participants.map((p) => [p.user, p.role])).toEqual([
      ["alice", "owner"],
      ["bob", "member"],
    ])
    const hello = chat.send("hello")
    expect(hello.status).toBe("pending")
    const second = chat.send("second", { priority: "sticky", metadata: { k: 1 } })
    chat.edit(hello.id, "hello, edited")
    chat.react(second.id, "👍")
    chat.deleteMessage(second.id)
    const messages = chat.messages({ last: 10 })
    expect(messages.map((m) => [m.body, m.status])).toEqual([
      ["hello, edited", "pending"],
      ["", "pending"],
    ])
    expect(messages[1]!.deleted?.by).toBe("alice")
    expect(alice.status).toBe("offline")
  })

  it("manages a group: title, metadata, participants, roles and deletion, with events", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"], title: "first" })
    const changes: string[] = []
    chat.on("change", ({ events, local }) => {
      for (const e of events) changes.push(`${e.type}${local ? "" : " (remote)"}`)
    })
    const states: string[] = []
    chat.on("state", ({ state }) =>
      states.push(state.state === "ready" ? state.conversation.title : state.state),
    )
    chat.rename("second")
    chat.setMetadata({ color: "teal" })
    expect(chat.addParticipants(["carol", "dave", "bob"], "admin")).toEqual(["carol", "dave"])
    chat.changeRole("dave", "member")
    expect(chat.removeParticipants(["carol"])).toEqual(["carol"])
    // A message id given to delete() is a mistake (deleteMessage is meant), not a conversation's deletion.
    expect(() => (chat.delete as (id: string) => void)("m_0123456789")).toThrow(/use deleteMessage\(id\)/)
    expect(chat.info?.deletedBy).toBeUndefined()
    chat.delete()
    expect(chat.info).toMatchObject({ title: "second", metadata: { color: "teal" }, deletedBy: "alice" })
    expect(chat.participants.map((p) => `${p.user}:${p.role}`)).toEqual([
      "alice:owner",
      "bob:member",
      "dave:member",
    ])
    expect(changes).toEqual([
      "conversation.updated",
      "conversation.updated",
      "participants.added",
      "participants.roleChanged",
      "participants.removed",
      "conversation.deleted",
    ])
    expect(states).toEqual(["second", "second", "second"])
    expect((await alice.knownConversations()).map((k) => k.title)).toEqual(["second"])
  })

  it("pushes a window of messages to its watcher on every change that affects it", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"] })
    const ids = ["one", "two", "three"].map((body) => chat.send(body).id)
    const seen: string[][] = []
    const stop = chat.watchMessages({ last: 2 }, (messages) =>
      seen.push(messages.map((m) => `${m.body}${Object.keys(m.reactions).join("")}`)),
    )
    chat.send("four")
    chat.edit(ids[2]!, "three, edited")
    chat.react(ids[2]!, "🎉")
    chat.edit(ids[0]!, "outside the window")
    stop()
    chat.send("after stop")
    expect(seen).toEqual([
      ["two", "three"],
      ["three", "four"],
      ["three, edited", "four"],
      ["three, edited🎉", "four"],
    ])
    expect(chat.messages({ before: ids[2]!, limit: 1 }).map((m) => m.body)).toEqual(["two"])
    expect(chat.messages({ after: ids[0]!, limit: 2 }).map((m) => m.body)).toEqual(["two", "three, edited"])
    expect(chat.messages({ around: ids[1]!, limit: 3 }).map((m) => m.body)).toEqual([
      "outside the window",
      "two",
      "three, edited",
    ])
  })

  it("refuses with FORBIDDEN, before writing, what the rules do not allow", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob", "carol"] })
    // A group keeps an owner: its only one may not leave, nor step down.
    expect(() => chat.leave()).toThrow(expect.objectContaining({ code: "FORBIDDEN", rule: "last-owner" }))
    expect(() => chat.changeRole("alice", "member")).toThrow(expect.objectContaining({ rule: "last-owner" }))
    chat.changeRole("bob", "owner")
    const before = chat.doc.store.clients.size
    const updates: Uint8Array[] = []
    chat.doc.on("update", (u: Uint8Array) => updates.push(u))
    chat.leave()
    expect(updates).toHaveLength(1)
    let error: unknown
    try {
      chat.rename("mine now")
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(ParleyError)
    expect((error as ParleyError).code).toBe(ErrorCode.FORBIDDEN)
    expect((error as ParleyError).rule).toBe("participant-only")
    expect(updates).toHaveLength(1)
    expect(chat.doc.store.clients.size).toBe(before)
  })

  it("keeps a conversation, its pending messages and the list of known conversations after a reload", async () => {
    const first = await offlineClient("dora", "indexeddb")
    const chat = await first.createConversation({ participants: ["erin"], title: "reload me" })
    const sent = chat.send("written offline")
    await first.destroy()

    const second = await offlineClient("dora", "indexeddb")
    const again = await second.conversation(chat.id).ready()
    expect(again.messages().map((m) => [m.id, m.body, m.status])).toEqual([
      [sent.id, "written offline", "pending"],
    ])
    expect(again.info?.title).toBe("reload me")
    expect((await second.knownConversations()).map((k) => [k.id, k.title])).toEqual([[chat.id, "reload me"]])
  })

  it("rejects ready() of a conversation closed while loading, and destroy() ends a pending creation", async () => {
    const alice = await offlineClient("alice", "indexeddb")
    const handle = alice.conversation("g~never-loaded")
    const ready = handle.ready()
    const creating = alice.createConversation({ participants: ["bob"] }).then(
      () => "created",
      (error: unknown) => error,
    )
    await alice.destroy()
    await expect(ready).rejects.toMatchObject({ code: ErrorCode.UNAVAILABLE })
    expect(await creating).toMatchObject({ code: ErrorCode.UNAVAILABLE })
  })

  it("finds the same direct conversation from both sides", async () => {
    const ann = await offlineClient("ann")
    const ben = await offlineClient("ben")
    const a = await ann.directConversation("ben")
    const b = await ben.directConversation("ann")
    expect(a.id).toBe(b.id)
    expect(a.info?.kind).toBe("direct")
    expect(await ann.directConversation("ben")).toBe(a)
  })

  it("counts unread messages from others and marks them read, up to a message or all", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"] })
    chat.send("mine")
    expect(chat.unreadCount).toBe(0)
    const counts: number[] = []
    chat.on("unread", ({ count }) => counts.push(count))
    // Bob's replica writes two messages, the relay numbers them; the update reaches Alice.
    const elsewhere = new Y.Doc()
    Y.applyUpdate(elsewhere, Y.encodeStateAsUpdate(chat.doc))
    const first = sendMessage(elsewhere, "bob" as UserId, { body: "one" })
    const second = sendMessage(elsewhere, "bob" as UserId, { body: "two" })
    writeSequenceNumbers(elsewhere, 1, [first.id, second.id])
    Y.applyUpdate(chat.doc, Y.encodeStateAsUpdate(elsewhere, Y.encodeStateVector(chat.doc)))
    expect(chat.unreadCount).toBe(2)
    expect(chat.markRead(first.id)).toBe(true)
    expect(chat.unreadCount).toBe(1)
    chat.markRead()
    expect(chat.unreadCount).toBe(0)
    expect(counts).toEqual([2, 1, 0])
    expect(chat.markers["alice" as UserId]).toEqual({ read: 2, delivered: 2 })
  })

  it("refuses to mark read up to a message id it does not know, as react and edit do, and marks nothing", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"] })
    const elsewhere = new Y.Doc()
    Y.applyUpdate(elsewhere, Y.encodeStateAsUpdate(chat.doc))
    const theirs = sendMessage(elsewhere, "bob" as UserId, { body: "one" })
    writeSequenceNumbers(elsewhere, 1, [theirs.id])
    Y.applyUpdate(chat.doc, Y.encodeStateAsUpdate(elsewhere, Y.encodeStateVector(chat.doc)))
    // Before: "no such id" was taken for "latest", marked everything read and returned true.
    for (const id of ["no such id", "unknown-message-id"]) {
      let markError: unknown
      let reactError: unknown
      try {
        chat.markRead(id)
      } catch (error) {
        markError = error
      }
      try {
        chat.react(id, "👍")
      } catch (error) {
        reactError = error
      }
      expect(markError).toMatchObject({ code: (reactError as { code: string }).code })
    }
    expect(() => chat.markRead("no such id")).toThrow(
      expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
    )
    expect(() => chat.markRead("unknown-message-id")).toThrow(
      expect.objectContaining({ code: ErrorCode.NOT_FOUND }),
    )
    expect(chat.unreadCount).toBe(1)
    expect(chat.markRead(theirs.id)).toBe(true)
    expect(chat.unreadCount).toBe(0)
  })

  it("advances the delivered marker, batched, as messages from others arrive", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"] })
    const elsewhere = new Y.Doc()
    Y.applyUpdate(elsewhere, Y.encodeStateAsUpdate(chat.doc))
    const markerWrites: number[] = []
    chat.on("change", ({ events }) => {
      for (const e of events)
        if (e.type === "messages.delivered" && e.user === "alice") markerWrites.push(e.upTo)
    })
    for (const body of ["a", "b", "c"]) {
      const message = sendMessage(elsewhere, "bob" as UserId, { body })
      writeSequenceNumbers(elsewhere, messageCount(elsewhere), [message.id])
      Y.applyUpdate(chat.doc, Y.encodeStateAsUpdate(elsewhere, Y.encodeStateVector(chat.doc)))
    }
    await vi.waitFor(() => expect(markerWrites).toEqual([3]))
    expect(chat.markers["alice" as UserId]).toEqual({ read: 0, delivered: 3 })
  })
})
