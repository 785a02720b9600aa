import "fake-indexeddb/auto"
import { ErrorCode, isRetryable, ParleyError } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import { type ChatClient, type Conversation, createChatClient } from "../src/index.js"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  type RelayProcess,
  SAVED,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay.stop()
})
afterEach(async () => {
  await destroyClients()
})

/** The README's Node bot: memory storage, `ws`, default reconnect. */
function bot(user: string, url = relay.url, target = relay): Promise<ChatClient> {
  return createChatClient({
    url,
    user,
    token: () => devToken(target, user),
    storage: "memory",
    WebSocket: WebSocket as never,
  })
}

/** The options of `user`'s client on a device of its own (IndexedDB, which outlives the client: a reload). */
function deviceOptions(user: string, connect = true) {
  return {
    url: relay.url,
    user,
    token: () => devToken(relay, user),
    storage: "indexeddb" as const,
    WebSocket: WebSocket as never,
    connect,
  }
}

/** The bodies of conversation `id` as `user` reads them from the relay on a fresh client. */
async function bodiesOnRelay(user: string, id: string, count: number): Promise<string[]> {
  const reader = await connectClient(relay, user)
  const chat = await reader.conversation(id).ready()
  await eventually(() => expect(chat.messages().length).toBe(count))
  return chat.messages().map((m) => m.body)
}

describe("destroy() with storage: memory", () => {
  it("saves a group created and written just before it on the relay", async () => {
    const client = await bot("flush-bot-a")
    const errors: ParleyError[] = []
    client.on("error", ({ error }) => errors.push(error))
    const chat = await client.createConversation({ participants: ["flush-alice"], title: "bots" })
    for (const body of ["one", "two", "three"]) chat.send(body)
    // At once: the client is still connecting, everything is pending (an outside tester's bot lost all of it).
    expect(chat.messages().map((m) => m.status)).toEqual(["pending", "pending", "pending"])

    const unsaved = await client.destroy()
    expect(errors).toEqual([])
    expect(await bodiesOnRelay("flush-alice", chat.id, 3)).toEqual(["one", "two", "three"])
    expect(unsaved).toEqual([])
  })

  it("reports, with their ids, the messages it could not get saved when the relay is out of reach", async () => {
    const gone = await startRelay()
    await gone.stop()
    const client = await bot("flush-bot-b", gone.url, gone)
    const errors: ParleyError[] = []
    client.on("error", ({ error }) => errors.push(error))
    const chat = await client.createConversation({ participants: ["flush-alice"] })
    const ids = ["lost 1", "lost 2"].map((body) => chat.send(body).id)

    const started = Date.now()
    const unsaved = await client.destroy()
    // It stops waiting once a reconnect failed, well before the 5 s default.
    expect(Date.now() - started).toBeLessThan(4_000)
    expect(unsaved).toEqual([
      expect.objectContaining({ conversationId: chat.id, messageIds: ids, changes: expect.any(Array) }),
    ])
    const reported = errors.find((e) => e.message.includes("not saved by the relay"))
    expect(reported).toBeInstanceOf(ParleyError)
    expect(reported?.code).toBe(ErrorCode.UNAVAILABLE)
    for (const id of ids) expect(reported?.message).toContain(id)
  })

  it("tells a group created while the relay is out of reach as unsaved, not only its messages", async () => {
    const gone = await startRelay()
    await gone.stop()
    const client = await bot("flush-bot-c", gone.url, gone)
    const chat = await client.createConversation({ participants: ["flush-alice"], title: "never saved" })
    chat.send("lost")
    const unsaved = await client.destroy()
    // Before: `changes: []`, though the group (its participants, its title) was lost with its messages.
    expect(unsaved).toEqual([
      expect.objectContaining({
        conversationId: chat.id,
        changes: expect.arrayContaining([expect.objectContaining({ kind: "conversation.create" })]),
      }),
    ])
  })

  it("lets a flush() that destroy() overtakes resolve when destroy() saved everything", async () => {
    const client = await bot("flush-bot-d")
    const chat = await client.createConversation({ participants: ["flush-alice"] })
    for (let i = 0; i < 20; i++) chat.send(`m${i}`)
    // Both at once: before, flush() rejected "this client was destroyed" while destroy() saved it all.
    const [flushed, unsaved] = await Promise.allSettled([client.flush(), client.destroy()])
    expect(unsaved).toEqual({ status: "fulfilled", value: [] })
    expect(flushed.status).toBe("fulfilled")
    expect(await bodiesOnRelay("flush-alice", chat.id, 20)).toHaveLength(20)
  })

  it("lets a conversation closed on memory storage get its messages saved first", async () => {
    const client = await connectClient(relay, "flush-bot-c")
    const chat = await client.createConversation({ participants: ["flush-alice"] })
    chat.send("before close")
    await expect(chat.close()).resolves.toBeUndefined()
    expect(await bodiesOnRelay("flush-alice", chat.id, 1)).toEqual(["before close"])
  })
})

describe("flush()", () => {
  it("resolves once the relay saved every message and change written so far", async () => {
    const client = await connectClient(relay, "flush-bot-d")
    const chat = await client.createConversation({ participants: ["flush-alice"] })
    const first = chat.send("first")
    chat.react(first.id, "👍")
    await client.flush()
    // A removal writes no new struct, only a delete set: flush waits for the relay's answer to it too.
    chat.unreact(first.id, "👍")
    expect(client.unsaved()).toEqual([expect.objectContaining({ conversationId: chat.id })])
    const second = chat.send("second")
    await client.flush({ timeoutMs: 10_000 })
    expect(client.unsaved()).toEqual([])
    expect(SAVED).toContain(chat.status(first.id))
    expect(SAVED).toContain(chat.status(second.id))

    const reader = await connectClient(relay, "flush-alice")
    const seen = await reader.conversation(chat.id).ready()
    await eventually(() => expect(seen.messages().map((m) => m.body)).toEqual(["first", "second"]))
    expect(seen.messages()[0]?.reactions).toEqual({})
  })

  it("resolves at once when nothing is unsaved", async () => {
    const client = await connectClient(relay, "flush-bot-e")
    await client.flush({ timeoutMs: 50 })
  })

  it("rejects after its timeout with a retryable error naming what is pending when offline", async () => {
    const client = await connectClient(relay, "flush-bot-f", { connect: false })
    const chat = await client.createConversation({ participants: ["flush-alice"] })
    const sent = chat.send("offline")
    const error = await client.flush({ timeoutMs: 200 }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(ParleyError)
    expect((error as ParleyError).code).toBe(ErrorCode.UNAVAILABLE)
    expect(isRetryable((error as ParleyError).code)).toBe(true)
    expect((error as ParleyError).message).toContain(sent.id)
    expect(client.unsaved()).toEqual([
      expect.objectContaining({ conversationId: chat.id, messageIds: [sent.id] }),
    ])
    await expect(chat.flush({ timeoutMs: 50 })).rejects.toMatchObject({ code: ErrorCode.UNAVAILABLE })

    // Back online, the same work goes out and flush resolves.
    client.connect()
    await client.flush()
    expect(SAVED).toContain(chat.status(sent.id))
  })
})

describe("destroy() with storage: indexeddb", () => {
  it("does not wait, reports nothing as an error, and keeps unsaved work for the next client", async () => {
    const options = deviceOptions("flush-bot-g", false)
    const client = await createChatClient(options)
    const errors: ParleyError[] = []
    client.on("error", ({ error }) => errors.push(error))
    const chat = await client.createConversation({ participants: ["flush-alice"] })
    const kept = chat.send("kept on the device")
    const unsaved = await client.destroy()
    expect(unsaved).toEqual([expect.objectContaining({ conversationId: chat.id, messageIds: [kept.id] })])
    expect(errors).toEqual([])

    const next = await createChatClient({ ...options, connect: true })
    try {
      const again = await next.conversation(chat.id).ready()
      await next.flush()
      expect(SAVED).toContain(again.status(kept.id))
    } finally {
      await next.destroy()
    }
  })
})

describe("unsaved() and flush() right after a reload", () => {
  it("tell the conversations written offline before it, not open yet, and flush() waits until the relay has them", async () => {
    const user = "flush-bot-h"
    const options = deviceOptions(user)
    const before = await createChatClient({ ...options, connect: false })
    const chat = await before.createConversation({ participants: ["flush-alice"] })
    const bodies = Array.from({ length: 300 }, (_, i) => `written offline ${i}`)
    for (const body of bodies) chat.send(body)
    await before.destroy()

    // The page reloads, online; the app does not open the conversation (its pending work goes in the background).
    const after = await createChatClient(options)
    try {
      // Before: [] and a flush() that resolved at once, a second before the relay had the messages. Until
      // the device's inbox is loaded, what was changed here is not known: the inbox is listed.
      expect(after.unsaved()).not.toEqual([])
      const flushed = after.flush({ timeoutMs: 20_000 })
      await eventually(() =>
        expect(after.unsaved()).toEqual([expect.objectContaining({ conversationId: chat.id })]),
      )
      await flushed
      expect(after.unsaved()).toEqual([])
      // Everything flush() waited for is on the relay now, not later.
      const reader = await connectClient(relay, "flush-alice")
      const seen = await reader.conversation(chat.id).ready()
      expect(seen.messages({ last: 1_000 }).map((m) => m.body)).toEqual(bodies)
    } finally {
      await after.destroy()
    }
  })
})

describe("unsaved() after a reload while offline", () => {
  it("names the conversations written before it, not only the inbox", async () => {
    const user = "flush-bot-j"
    const options = deviceOptions(user, false)
    const before = await createChatClient(options)
    const chats = [
      await before.createConversation({ participants: ["flush-alice"] }),
      await before.createConversation({ participants: ["flush-alice"] }),
    ]
    for (const chat of chats) chat.send("written offline")
    await before.destroy()
    const after = await createChatClient(options)
    try {
      expect(after.unsaved()).not.toEqual([])
      await eventually(() =>
        expect(
          after
            .unsaved()
            .map((w) => w.conversationId)
            .sort(),
        ).toEqual(chats.map((c) => c.id).sort()),
      )
    } finally {
      await after.destroy()
    }
  })
})

describe("after a reload, work in a conversation the user was removed from meanwhile", () => {
  it("is told as refused (an error, its messages failed), not left as saved or pending", async () => {
    const user = "flush-bot-i"
    const options = deviceOptions(user)
    const owner = await connectClient(relay, "flush-owner-i")
    const room = await owner.createConversation({ participants: [user], title: "removal" })
    await owner.flush()
    const before = await createChatClient(options)
    const chat = await before.conversation(room.id).ready()
    await before.flush()
    before.disconnect()
    const written = ["one", "two", "three"].map((body) => chat.send(body).id)
    await before.destroy()
    room.removeParticipants([user])
    await owner.flush()

    const after = await createChatClient(options)
    const errors: { code: string; conversationId?: string }[] = []
    after.on("error", ({ error, conversationId }) =>
      errors.push({ code: error.code, ...(conversationId ? { conversationId } : {}) }),
    )
    try {
      // Not saved, but refused: nothing left to wait for, and the app is told which conversation refused it.
      await after.flush({ timeoutMs: 10_000 })
      await eventually(() =>
        expect(errors).toContainEqual({ code: ErrorCode.FORBIDDEN, conversationId: room.id }),
      )
      expect(after.unsaved()).toEqual([])
      const again = after.conversation(room.id)
      await eventually(() =>
        expect(written.map((id) => again.status(id))).toEqual(["failed", "failed", "failed"]),
      )
    } finally {
      await after.destroy()
    }
  })
})

/**
 * Device `user` writes three messages (each marked read) offline in a group of `owner`, who meanwhile deletes
 * it or removes `user`. Returns the group's id, the messages' ids and the client the device wrote them on,
 * offline (the caller destroys it for a reload, or connects it).
 */
async function writtenOfflineWhileGone(user: string, owner: string, how: "deleted" | "removed") {
  const byOwner = await connectClient(relay, owner)
  const room = await byOwner.createConversation({ participants: [user], title: "gone" })
  room.send("welcome")
  await byOwner.flush()
  const before = await createChatClient({
    ...deviceOptions(user),
    reconnect: { minDelay: 50, maxDelay: 400 },
  })
  const chat = await before.conversation(room.id).ready()
  await eventually(() => expect(chat.messages().map((m) => m.body)).toEqual(["welcome"]))
  const mine = chat.send("mine").id
  await before.flush()
  before.disconnect()
  // An edit and a reaction too: refused for the same reason as the messages.
  chat.edit(mine, "mine, edited")
  chat.react(chat.messages()[0]!.id, "👍")
  // The third with a file: it waits to upload, and fails with the others (before: uploaded again for ever).
  const written = ["one", "two", "three"].map((body) => {
    const id = (body === "three" ? chat.send({ body, files: [new Blob(["hello file"])] }) : chat.send(body))
      .id
    chat.markRead()
    return id
  })
  if (how === "deleted") room.delete()
  else room.removeParticipants([user])
  await byOwner.flush()
  return { id: room.id, written, before, chat }
}

describe.each(["deleted", "removed"] as const)(
  "work written offline in a conversation %s meanwhile",
  (how) => {
    /** The one signal online too: deleted, a `conversation.deleted` change (still readable); removed, unavailable. */
    const gone = (chat: Conversation, events: string[]) => {
      if (how === "removed")
        return expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN })
      expect(events).toEqual(["conversation.deleted"])
      expect(chat.state).toMatchObject({ state: "ready", conversation: { deletedAt: expect.any(Number) } })
    }

    const failedForGood = async (chat: Conversation, written: readonly string[]) => {
      await eventually(() =>
        expect(written.map((id) => chat.status(id))).toEqual(["failed", "failed", "failed"]),
      )
      for (const id of written)
        expect(chat.message(id)).toMatchObject({ status: "failed", error: { code: ErrorCode.FORBIDDEN } })
    }

    /**
     * The offline edit and reaction, each an error event with the change, for the conversation's reason
     * (before, a deletion's were NOT_FOUND "no message …": the deletion had purged the message).
     */
    const changesRefused = (errors: readonly string[]) => {
      if (how === "deleted")
        expect(errors).toEqual([
          "FORBIDDEN the conversation is deleted",
          "FORBIDDEN the conversation is deleted",
        ])
      else for (const error of errors) expect(error).toMatch(/^FORBIDDEN /)
    }

    /** What the app hears of `chat` once it goes online: `conversation.*` change events, and the client's errors. */
    const listen = (client: ChatClient, chat: Conversation) => {
      const heard = { events: [] as string[], errors: [] as string[] }
      chat.on("change", ({ events }) => {
        for (const e of events) if (e.type === "conversation.deleted") heard.events.push(e.type)
      })
      client.on("error", ({ error }) => heard.errors.push(`${error.code} ${error.message}`))
      return heard
    }

    it("is told as the conversation gone, as online, after a reload: its messages failed with why, its other changes refused for the same reason", async () => {
      const user = `gone-reload-${how}`
      const { id, written, before } = await writtenOfflineWhileGone(user, `gone-owner-r-${how}`, how)
      await before.destroy()

      const after = await createChatClient({
        ...deviceOptions(user, false),
        reconnect: { minDelay: 50, maxDelay: 400 },
      })
      try {
        const chat = after.conversation(id)
        await chat.ready()
        const heard = listen(after, chat)
        after.connect()
        await failedForGood(chat, written)
        gone(chat, heard.events)
        // Nothing left to wait for: flush() resolves and unsaved() is empty.
        await after.flush({ timeoutMs: 5_000 })
        expect(after.unsaved()).toEqual([])
        await new Promise((resolve) => setTimeout(resolve, 300))
        changesRefused(heard.errors)
      } finally {
        await after.destroy()
      }
      // Deleted, the replica says so: still failed after another reload, offline. (Removed, the relay's refusal
      // tells it again on the next connection: this device never got the relay's state without the user.)
      if (how === "removed") return
      const later = await createChatClient(deviceOptions(user, false))
      try {
        await failedForGood(await later.conversation(id).ready(), written)
      } finally {
        await later.destroy()
      }
    })

    it("is told the same way without a reload, offline across it", async () => {
      const { written, before, chat } = await writtenOfflineWhileGone(
        `gone-live-${how}`,
        `gone-owner-l-${how}`,
        how,
      )
      try {
        const heard = listen(before, chat)
        before.connect()
        await failedForGood(chat, written)
        gone(chat, heard.events)
        await before.flush({ timeoutMs: 5_000 })
        expect(before.unsaved()).toEqual([])
        await new Promise((resolve) => setTimeout(resolve, 300))
        changesRefused(heard.errors)
      } finally {
        await before.destroy()
      }
    })

    it("not opened after a reload, is told by one error naming the conversation; its messages read failed", async () => {
      const user = `gone-background-${how}`
      const { id, written, before } = await writtenOfflineWhileGone(user, `gone-owner-b-${how}`, how)
      await before.destroy()

      const after = await createChatClient({
        ...deviceOptions(user, false),
        reconnect: { minDelay: 50, maxDelay: 400 },
      })
      const errors: { code: string; conversationId?: string }[] = []
      after.on("error", ({ error, conversationId }) =>
        errors.push({ code: error.code, ...(conversationId ? { conversationId } : {}) }),
      )
      try {
        after.connect()
        await after.flush({ timeoutMs: 5_000 })
        await eventually(() => expect(errors).toEqual([{ code: ErrorCode.FORBIDDEN, conversationId: id }]))
        expect(after.unsaved()).toEqual([])
        await new Promise((resolve) => setTimeout(resolve, 300))
        expect(errors).toHaveLength(1)
        await failedForGood(after.conversation(id), written)
        expect(errors).toHaveLength(1)
      } finally {
        await after.destroy()
      }
    })
  },
)
