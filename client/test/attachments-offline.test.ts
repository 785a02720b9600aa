import "fake-indexeddb/auto"
import { afterEach, describe, expect, it, vi } from "vitest"
import WebSocket from "ws"
import { type ChatClient, createChatClient } from "../src/index.js"

const clients: ChatClient[] = []
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.destroy()))
})

let users = 0
async function offlineClient(user: string) {
  const client = await createChatClient({
    url: "ws://127.0.0.1:9",
    token: () => {
      throw new Error("offline: no token")
    },
    user,
    storage: "indexeddb",
    connect: false,
    WebSocket: WebSocket as never,
  })
  clients.push(client)
  return client
}

const photo = () => new File([new Uint8Array([137, 80, 78, 71, 1, 2, 3])], "cat.png", { type: "image/png" })

describe("sending files offline", () => {
  it("lists the message as pending with its local files, and keeps it across a reload", async () => {
    const user = `filer${++users}`
    const alice = await offlineClient(user)
    const chat = await alice.createConversation({ participants: ["bob"], title: "pics" })
    chat.send("before")
    const sent = chat.send({ body: "look", files: [photo(), new Blob(["notes"], { type: "text/plain" })] })
    expect(sent.status).toBe("pending")
    expect(sent.upload).toMatchObject({ phase: "queued", loaded: 0, total: 12 })
    expect(sent.upload?.files.map((f) => [f.name, f.mimeType, f.size, f.uploaded])).toEqual([
      ["cat.png", "image/png", 7, false],
      ["file-2.plain", "text/plain", 5, false],
    ])
    // A preview of the local bytes, for an <img>.
    const preview = sent.upload?.files[0]?.url
    expect(preview).toMatch(/^blob:/)
    expect(chat.messages({ last: 10 }).map((m) => [m.body, m.status])).toEqual([
      ["before", "pending"],
      ["look", "pending"],
    ])
    expect(chat.status(sent.id)).toBe("pending")
    expect(chat.message(sent.id)?.upload?.files).toHaveLength(2)
    // Only the pending one is in the window's last slot.
    expect(chat.messages({ last: 1 }).map((m) => m.body)).toEqual(["look"])

    // A reload: a new client over the same IndexedDB, still offline.
    const id = chat.id
    await alice.destroy()
    const again = await offlineClient(user)
    const reopened = again.conversation(id)
    await reopened.ready()
    await vi.waitFor(() =>
      expect(reopened.messages({ last: 10 }).map((m) => m.body)).toEqual(["before", "look"]),
    )
    const restored = reopened.message(sent.id)!
    expect(restored.status).toBe("pending")
    expect(restored.upload?.files.map((f) => f.name)).toEqual(["cat.png", "file-2.plain"])
    const url = restored.upload?.files[0]?.url
    expect(url).toMatch(/^blob:/)
    // The preview holds the stored bytes.
    const { resolveObjectURL } = await import("node:buffer")
    const bytes = new Uint8Array(await resolveObjectURL(url!)!.arrayBuffer())
    expect([...bytes]).toEqual([137, 80, 78, 71, 1, 2, 3])
  })

  it("discards a waiting message and its bytes, for good", async () => {
    const user = `filer${++users}`
    const alice = await offlineClient(user)
    const chat = await alice.createConversation({ participants: ["bob"] })
    const sent = chat.send({ body: "oops", files: [photo()] })
    const events: string[] = []
    chat.on("upload", ({ phase }) => events.push(phase))
    chat.discard(sent.id)
    expect(events).toEqual(["discarded"])
    expect(chat.messages()).toEqual([])
    expect(() => chat.discard(sent.id)).toThrow(expect.objectContaining({ code: "NOT_FOUND" }))
    const id = chat.id
    await alice.destroy()
    const again = await offlineClient(user)
    const reopened = again.conversation(id)
    await reopened.ready()
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(reopened.messages()).toEqual([])
  })

  it("refuses at once what the message could never be (a body too long, not a participant), storing nothing", async () => {
    const alice = await offlineClient(`filer${++users}`)
    const chat = await alice.createConversation({ participants: ["bob"] })
    expect(() => chat.send({ body: "x".repeat(100_000), files: [photo()] })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    )
    expect(() => chat.send({ body: "not a file", files: ["nope" as never] })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    )
    expect(() => chat.send({ body: "empty", files: [photo(), new File([], "empty.txt")] })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", message: "empty.txt is empty" }),
    )
    // A group keeps an owner: its creator hands it on before leaving.
    chat.changeRole("bob", "owner")
    chat.leave()
    expect(() => chat.send({ body: "gone", files: [photo()] })).toThrow(
      expect.objectContaining({ code: "FORBIDDEN" }),
    )
    expect(chat.messages()).toEqual([])
  })
})

describe("a message whose files were uploaded", () => {
  it("is written again, once, when a reload lost the replica's copy of it", async () => {
    const user = `filer${++users}`
    const alice = await offlineClient(user)
    const chat = await alice.createConversation({ participants: ["bob"] })
    const id = chat.id
    await alice.destroy()
    // The outbox says the message was written, but the replica never stored it (the page died first).
    const { openOutboxStore } = await import("../src/attachments/outbox-store.js")
    const { newMessageId } = await import("@parley/shared")
    const store = openOutboxStore("indexeddb", user)
    const messageId = newMessageId()
    const attachment = {
      kind: "file" as const,
      id: "att_0123456789abcdefghjkmnpqrs",
      url: "/v1/attachments/att_0123456789abcdefghjkmnpqrs",
      name: "cat.png",
      mimeType: "image/png",
      size: 7,
    }
    await store.add(
      {
        messageId,
        conversationId: id,
        body: "written before the crash",
        createdAt: Date.now(),
        files: [{ name: "cat.png", mimeType: "image/png", size: 7, attachment }],
        written: true,
      },
      [],
    )
    store.close()
    const again = await offlineClient(user)
    const reopened = again.conversation(id)
    await reopened.ready()
    await vi.waitFor(() => expect(reopened.message(messageId)?.attachments).toEqual([attachment]))
    const listed = reopened.messages({ last: 10 })
    expect(listed.filter((m) => m.id === messageId)).toHaveLength(1)
    expect(listed.find((m) => m.id === messageId)).toMatchObject({
      status: "pending",
      body: "written before the crash",
    })
    expect(listed.find((m) => m.id === messageId)?.upload).toBeUndefined()
  })
})
