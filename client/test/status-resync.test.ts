import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  nextFromDocument,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { StatusTracker } from "../src/conversation/statuses.js"
import { MessageStatuses } from "../src/message-status.js"

const alice = "alice" as UserId

describe("message status events across a resync", () => {
  it("tell a message the relay stored while its acknowledgement was lost: pending before, sent after", () => {
    const old = new Y.Doc()
    createConversation(old, alice, {
      kind: "group",
      id: "g~status-resync" as ConversationId,
      participants: [],
    })
    const message = sendMessage(old, alice, { body: "stored, not acknowledged" })
    let statuses = new MessageStatuses(old, alice)
    const events: { messageId: string; status: string }[] = []
    const tracker = new StatusTracker(
      () => statuses,
      ((name: string, event: { messageId: string; status: string }) => {
        if (name === "status") events.push(event)
      }) as never,
      () => undefined,
    )
    tracker.trackAll(old, alice)
    expect(tracker.status(message.id)).toBe("pending")
    // The relay had it (a relay killed after storing, before its "saved" went out): the rebuilt replica
    // holds it numbered.
    const fresh = new Y.Doc()
    Y.applyUpdate(fresh, Y.encodeStateAsUpdate(old))
    assignSequenceNumbers(fresh, nextFromDocument(fresh))
    statuses = new MessageStatuses(fresh, alice)
    tracker.trackAll(fresh, alice, true)
    // Before: followed afresh as "sent", its move from "pending" never told (an outside probe: 3 of 3,660).
    expect(events).toEqual([{ messageId: message.id, status: "sent" }])
  })
})
