import { describe, expect, it, vi } from "vitest"
import * as Y from "yjs"
import {
  addParticipants,
  assignSequenceNumbers,
  type ChangeEvent,
  type ConversationId,
  changeRole,
  createConversation,
  deleteConversation,
  deleteMessage,
  editMessage,
  markDelivered,
  markRead,
  nextFromDocument,
  observeChanges,
  react,
  removeParticipants,
  renameConversation,
  sendMessage,
  setConversationMetadata,
  unreact,
} from "../src/index.js"
import { alice, bob, carol, dave } from "./helpers.js"

function recording(doc: Y.Doc) {
  const events: ChangeEvent[] = []
  observeChanges(doc, (list) => events.push(...list))
  return events
}

describe("change events", () => {
  it("stops observing once, however often it is told to (Yjs writes an error to the console for each extra)", () => {
    const doc = new Y.Doc()
    const events: ChangeEvent[] = []
    const stop = observeChanges(doc, (list) => events.push(...list))
    const errors = vi.spyOn(console, "error").mockImplementation(() => {})
    const warnings = vi.spyOn(console, "warn").mockImplementation(() => {})
    try {
      stop()
      stop()
      expect(errors).not.toHaveBeenCalled()
      expect(warnings).not.toHaveBeenCalled()
    } finally {
      errors.mockRestore()
      warnings.mockRestore()
    }
    createConversation(doc, alice, { kind: "group", id: "g~stopped" as ConversationId, participants: [] })
    expect(events).toEqual([])
  })

  it("derives one typed event per change, on the writer and on a replica alike", () => {
    const doc = new Y.Doc()
    const replica = new Y.Doc()
    doc.on("update", (u: Uint8Array) => Y.applyUpdate(replica, u))
    const local = recording(doc)
    const remote = recording(replica)
    createConversation(doc, alice, { kind: "group", id: "g~ev" as ConversationId, participants: [bob] })
    renameConversation(doc, alice, "New title")
    setConversationMetadata(doc, alice, { a: 1 })
    addParticipants(doc, alice, [carol, dave])
    changeRole(doc, alice, carol, "admin")
    removeParticipants(doc, alice, [dave])
    const m = sendMessage(doc, bob, { body: "hi" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    editMessage(doc, bob, m.id, "hello")
    react(doc, carol, m.id, "👍")
    unreact(doc, carol, m.id, "👍")
    markDelivered(doc, carol)
    markRead(doc, alice)
    deleteMessage(doc, bob, m.id)
    deleteConversation(doc, alice)
    const types = local.map((e) => e.type)
    expect(types).toEqual([
      "conversation.created",
      "participants.added",
      "conversation.updated",
      "conversation.updated",
      "participants.added",
      "participants.roleChanged",
      "participants.removed",
      "message.sent",
      "messages.sequenced",
      "message.edited",
      "reaction.added",
      "reaction.removed",
      "messages.delivered",
      "messages.read",
      "messages.delivered",
      "message.deleted",
      "conversation.deleted",
    ])
    expect(remote).toEqual(local)
    expect(local[0]).toMatchObject({
      type: "conversation.created",
      conversation: { id: "g~ev", createdBy: alice },
    })
    expect(local[1]).toMatchObject({
      participants: [
        { user: alice, role: "owner" },
        { user: bob, role: "member" },
      ],
    })
    expect(local[2]).toMatchObject({ fields: ["title"], conversation: { title: "New title" } })
    expect(local[5]).toMatchObject({ changes: [{ user: carol, from: "member", to: "admin" }] })
    expect(local[6]).toMatchObject({ users: [dave] })
    expect(local[7]).toMatchObject({ message: { id: m.id, author: bob, body: "hi" } })
    expect(local[8]).toMatchObject({ from: 1, ids: [m.id] })
    expect(local[9]).toMatchObject({ messageId: m.id, body: "hello" })
    expect(local[10]).toMatchObject({ messageId: m.id, user: carol, emoji: "👍" })
    expect(local[13]).toMatchObject({ user: alice, upTo: 1 })
    expect(local[15]).toMatchObject({ messageId: m.id, author: bob, deletedBy: bob })
    expect(local[16]).toMatchObject({ deletedBy: alice })
  })

  it("reports a batch of offline changes in one update as separate events", () => {
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: "g~b" as ConversationId, participants: [bob] })
    const offline = new Y.Doc()
    Y.applyUpdate(offline, Y.encodeStateAsUpdate(doc))
    const before = Y.encodeStateVector(offline)
    sendMessage(offline, bob, { body: "1" })
    sendMessage(offline, bob, { body: "2" })
    const events = recording(doc)
    Y.applyUpdate(doc, Y.encodeStateAsUpdate(offline, before))
    expect(events.map((e) => e.type)).toEqual(["message.sent", "message.sent"])
  })

  it("reports nothing when the other user's creation of the same direct conversation merges in", () => {
    for (const later of [1, 3]) {
      const first = new Y.Doc()
      first.clientID = 2
      const second = new Y.Doc()
      // Whether the later creation wins the merge or loses it.
      second.clientID = later
      createConversation(first, alice, { kind: "direct", participants: [bob] })
      createConversation(second, bob, { kind: "direct", participants: [alice] })
      const relay = new Y.Doc()
      Y.applyUpdate(relay, Y.encodeStateAsUpdate(first))
      const events = recording(relay)
      Y.applyUpdate(relay, Y.encodeStateAsUpdate(second))
      expect(events).toEqual([])
    }
  })

  it("stops after unsubscribing", () => {
    const doc = new Y.Doc()
    const events: ChangeEvent[] = []
    const stop = observeChanges(doc, (list) => events.push(...list))
    stop()
    createConversation(doc, alice, { kind: "group", id: "g~c" as ConversationId, participants: [] })
    expect(events).toEqual([])
  })
})
