import {
  type ConversationId,
  createConversation,
  type MessageId,
  profileRecord,
  sendMessage,
  setProfile,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const id = "g~hooks-profiles" as ConversationId

describe("hook events and profiles", () => {
  it("name the actor (typing too) and the message's author by their display name once they set one", async () => {
    const { hooks, events } = recordingHooks()
    const { core, runtime } = await coreWithHooks({
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
    })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    const step = async (change: () => void) => {
      events.length = 0
      change()
      await a.settled()
      await runtime.idle()
      return [...events]
    }
    const created = await step(() =>
      createConversation(a.doc, alice, { kind: "group", id, title: "Trip", participants: [bob] }),
    )
    // No profile yet: the actor is the bare id, as before.
    expect(created[0]!.event.actor).toEqual({ kind: "user", user: alice })

    const named = await step(() => setProfile(a.doc, alice, profileRecord({ name: "Alice Liddell" })))
    // A profile change is no semantic hook event of its own (it is in document.updated's raw changes).
    expect(named.filter((e) => e.event.type !== "document.updated")).toEqual([])

    const sent = await step(() => sendMessage(a.doc, alice, { id: "m-000001" as MessageId, body: "hello" }))
    expect(sent[0]!.event).toMatchObject({
      type: "message.sent",
      actor: { kind: "user", user: alice, name: "Alice Liddell" },
    })
    expect(sent[0]!.subject).toMatchObject({ message: { author: alice, authorName: "Alice Liddell" } })
    // Typing too ("Alice Liddell is typing"), though it never reaches the document.
    events.length = 0
    a.setPresence({ user: alice, typing: Date.now() })
    await runtime.idle()
    await new Promise((resolve) => setImmediate(resolve))
    expect(events.map((e) => [e.event.type, e.event.actor])).toEqual([
      ["typing.started", { kind: "user", user: alice, name: "Alice Liddell" }],
    ])
    a.disconnect()
  })
})
