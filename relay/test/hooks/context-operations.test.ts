import {
  addParticipants,
  type ConversationId,
  createConversation,
  getConversation,
  getMessage,
  listParticipants,
  type MessageId,
  markersOf,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { defineHooks, type HookConversations } from "../../src/hooks/define.js"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { coreWithHooks, InProcessClient } from "./in-process.js"

const alice = "alice" as UserId
const bot = "ops-bot" as UserId
const carol = "carol" as UserId
const id = "g~ops" as ConversationId

describe("the hook context's conversation operations", () => {
  it("changes roles, metadata, reactions, markers and membership, and deletes the conversation, as the HTTP API does", async () => {
    let runs = 0
    const hooks = defineHooks({
      async onMessageSent(event, { conversations: c, isOwnWrite }) {
        if (isOwnWrite(event) || event.subject.message.body !== "go") return
        runs++
        const ops: HookConversations = c
        const message = event.subject.message.id
        await ops.changeRole(id, bot, carol, "admin")
        await ops.setMetadata(id, bot, { ticket: "T-1" })
        await ops.react(id, bot, message, "👍")
        await ops.react(id, bot, message, "🎉")
        await ops.unreact(id, bot, message, "🎉")
        await ops.markDelivered(id, bot, message)
        await ops.markRead(id, bot)
        // Every one of them again, as a retry would: nothing changes twice.
        await ops.changeRole(id, bot, carol, "admin")
        await ops.setMetadata(id, bot, { ticket: "T-1" })
        await ops.deleteConversation(id, bot)
        // A deleted conversation is closed to writes; deleting it again and leaving it stay possible.
        await ops.deleteConversation(id, bot)
        await ops.leave(id, carol)
        await ops.leave(id, carol)
      },
    })
    const outbox = new MemoryOutbox()
    const { core, runtime } = await coreWithHooks({
      outbox,
      hooks: [{ name: "ops.ts", path: "ops.ts", hooks }],
    })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [carol] })
    await a.settled()
    await core.write(id, { kind: "user", user: alice }, (doc) => {
      addParticipants(doc, alice, [bot], "admin")
    })
    sendMessage(a.doc, alice, { id: "go-000001" as MessageId, body: "go" })
    await a.settled()
    await runtime.idle()
    await a.settled()
    expect(runs).toBe(1)
    expect(await runtime.deadLetters()).toEqual([])
    const state = await core.read(id, (doc) => ({
      conversation: getConversation(doc),
      participants: listParticipants(doc).map((p) => [p.user, p.role]),
      message: getMessage(doc, "go-000001" as MessageId),
      markers: markersOf(doc, bot),
    }))
    // Deleting purged what the conversation said (its metadata, the message and its reactions).
    expect(state.conversation?.metadata).toEqual({})
    expect(state.conversation?.deletedAt).toBeGreaterThan(0)
    expect(state.participants).toEqual([
      ["alice", "owner"],
      ["ops-bot", "admin"],
    ])
    expect(state.message).toBeUndefined()
    expect(state.markers).toMatchObject({ read: 1, delivered: 1 })
    // The repeated calls wrote nothing: one event each.
    const byBot = (await outbox.events.read({ limit: 100 }))
      .filter((e) => e.event.event.actor.kind === "bot" && e.event.event.type !== "document.updated")
      .map((e) => e.event.event.type)
    expect(byBot).toEqual([
      "participants.roleChanged",
      "conversation.updated",
      "reaction.added",
      "reaction.added",
      "reaction.removed",
      "messages.delivered",
      "messages.read",
      "conversation.deleted",
      "participants.removed",
    ])
  })
})
