import {
  type ChangeEvent,
  type ConversationId,
  createConversation,
  directConversationId,
  observeChanges,
  profileRecord,
  sendMessage,
  setProfile,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { deriveHookEvents, type HookEvent } from "../../src/hooks/events.js"
import { notificationFor } from "../../src/push/notification.js"

const alice = "alice" as UserId
const bob = "bob-7f3a" as UserId

/** The message.sent hook event of `send` in `doc`, derived as the relay derives it. */
function sentEvent(doc: Y.Doc, id: ConversationId, send: () => void): HookEvent<"message.sent"> {
  const changes: ChangeEvent[] = []
  const off = observeChanges(doc, (events) => changes.push(...events))
  send()
  off()
  const events = deriveHookEvents({
    conversationId: id,
    doc,
    actor: { kind: "user", user: bob },
    changes,
    positions: [1],
    now: 1,
  })
  return events.find((e) => e.event.type === "message.sent") as HookEvent<"message.sent">
}

describe("push notification texts", () => {
  it("title a direct conversation's notification with the sender's display name, not their id", () => {
    const id = directConversationId([alice, bob])
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "direct", participants: [bob] })
    const before = notificationFor(
      sentEvent(doc, id, () => sendMessage(doc, bob, { body: "first" })),
      1,
    )!
    expect(before.title).toBe(bob)

    setProfile(doc, bob, profileRecord({ name: "Bob" }))
    const after = notificationFor(
      sentEvent(doc, id, () => sendMessage(doc, bob, { body: "see you at 8" })),
      2,
    )!
    expect(after).toMatchObject({ title: "Bob", body: "see you at 8", sender: { id: bob, name: "Bob" } })
  })
})
