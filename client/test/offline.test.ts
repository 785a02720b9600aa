import "fake-indexeddb/auto"
import { ErrorCode, ParleyError } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import WebSocket from "ws"
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

  it("refuses with FORBIDDEN, before writing, what the rules do not allow", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob", "carol"] })
    chat.changeRole("bob", "admin")
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

  it("finds the same direct conversation from both sides", async () => {
    const ann = await offlineClient("ann")
    const ben = await offlineClient("ben")
    const a = await ann.directConversation("ben")
    const b = await ben.directConversation("ann")
    expect(a.id).toBe(b.id)
    expect(a.info?.kind).toBe("direct")
    expect(await ann.directConversation("ben")).toBe(a)
  })

  it("counts unread messages from others and marks them read", async () => {
    const alice = await offlineClient("alice")
    const chat = await alice.createConversation({ participants: ["bob"] })
    chat.send("mine")
    expect(chat.unreadCount).toBe(0)
    expect(chat.markRead()).toBe(false)
  })
})
