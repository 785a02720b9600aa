import {
  addParticipants,
  type ConversationId,
  changeRole,
  createConversation,
  deleteConversation,
  getConversation,
  listParticipants,
  removeParticipants,
  renameConversation,
  sendMessage,
  setConversationMetadata,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { membershipChanges } from "../../src/hooks/event-log.js"
import { conversationOf, deriveHookEvents, type HookEvent, participantsOf } from "../../src/hooks/events.js"
import { rehydrate, storedEventSerializer } from "../../src/hooks/member-lists.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId
const id = "g~participants-list" as ConversationId

function group(): Y.Doc {
  const doc = new Y.Doc()
  createConversation(doc, alice, { kind: "group", id, participants: [bob], title: "Room" })
  return doc
}

const derive = (doc: Y.Doc): HookEvent[] =>
  deriveHookEvents({
    conversationId: id,
    doc,
    actor: { kind: "user", user: alice },
    changes: [],
    positions: [1],
    now: 1,
  })

describe("the participants list of hook payloads", () => {
  it("is one frozen list until the participants change, and always what listParticipants gives", () => {
    const doc = group()
    const first = participantsOf(doc)
    expect(first).toEqual(listParticipants(doc))
    expect(Object.isFrozen(first) && first.every((p) => Object.isFrozen(p))).toBe(true)
    sendMessage(doc, alice, { body: "hello" })
    expect(participantsOf(doc)).toBe(first)
    addParticipants(doc, alice, [carol])
    const added = participantsOf(doc)
    expect(added).not.toBe(first)
    expect(added).toEqual(listParticipants(doc))
    changeRole(doc, alice, carol, "admin")
    expect(participantsOf(doc)).toEqual(listParticipants(doc))
    expect(participantsOf(doc).find((p) => p.user === carol)?.role).toBe("admin")
    removeParticipants(doc, alice, [carol])
    expect(participantsOf(doc)).toEqual(listParticipants(doc))
  })

  it("is read afresh inside a transaction, where the change is not yet observed", () => {
    const doc = group()
    participantsOf(doc)
    doc.transact(() => {
      addParticipants(doc, alice, [carol])
      expect(participantsOf(doc).map((p) => p.user)).toContain(carol)
    })
  })

  it("gives every event one frozen conversation until its fields or participants change, always as the document has it", () => {
    const doc = group()
    const expected = () => {
      const info = getConversation(doc)!
      return {
        id: info.id,
        kind: info.kind,
        title: info.title,
        metadata: info.metadata,
        createdBy: info.createdBy,
        createdAt: info.createdAt,
        ...(info.deletedAt !== undefined ? { deletedAt: info.deletedAt } : {}),
        participants: listParticipants(doc),
      }
    }
    const first = conversationOf(doc)!
    expect(Object.isFrozen(first)).toBe(true)
    expect(first).toEqual(expected())
    sendMessage(doc, alice, { body: "hello" })
    const [sent] = derive(doc)
    expect(sent!.conversation).toBe(first)
    // Each change is seen at once: a membership change, the fields, a deletion.
    addParticipants(doc, alice, [carol])
    const added = conversationOf(doc)!
    expect(added).not.toBe(first)
    expect(added.participants.map((p) => p.user)).toContain(carol)
    expect(added).toEqual(expected())
    removeParticipants(doc, alice, [carol])
    expect(conversationOf(doc)!.participants.map((p) => p.user)).not.toContain(carol)
    renameConversation(doc, alice, "Renamed")
    expect(conversationOf(doc)!.title).toBe("Renamed")
    setConversationMetadata(doc, alice, { topic: "x" })
    expect(conversationOf(doc)!.metadata).toEqual({ topic: "x" })
    expect(conversationOf(doc)).toEqual(expected())
    // Inside a transaction, read afresh: the change is not observed yet.
    doc.transact(() => {
      renameConversation(doc, alice, "Inside")
      expect(conversationOf(doc)!.title).toBe("Inside")
    })
    deleteConversation(doc, alice)
    expect(conversationOf(doc)!.deletedAt).toBeTypeOf("number")
    expect(conversationOf(doc)).toEqual(expected())
    // Its stored JSON follows it too.
    const [renamed] = derive(doc)
    expect(JSON.parse(storedJson(renamed!))).toEqual(JSON.parse(JSON.stringify(renamed)))
    expect(JSON.parse(storedJson(renamed!)).conversation.title).toBe("Inside")
  })

  it("serializes each event to what JSON.stringify gives", () => {
    const doc = group()
    for (const event of [...derive(doc), ...derive(doc)])
      expect(JSON.parse(storedJson(event))).toEqual(JSON.parse(JSON.stringify(event)))
    const [event] = derive(doc)
    expect(storedJson(event!)).toBe(JSON.stringify(event))
  })

  it("opens and closes memberships in the event log as the participants change, applying an unchanged list once", () => {
    const doc = group()
    const open = new Map<string, Set<UserId>>()
    let next = 1
    const record = () =>
      membershipChanges(
        open,
        derive(doc).map((event) => ({ id: next++, event })),
      )
    expect(
      record()
        .opened.map((o) => o.user)
        .sort(),
    ).toEqual([alice, bob])
    sendMessage(doc, alice, { body: "hello" })
    expect(record()).toEqual({ opened: [], closed: [], witnessed: [] })
    addParticipants(doc, alice, [carol])
    expect(record().opened.map((o) => o.user)).toEqual([carol])
    removeParticipants(doc, alice, [bob])
    expect(record().closed.map((c) => c.user)).toEqual([bob])
    // A set read again from storage (a cache dropped after a rollback) is compared in full.
    open.set(id, new Set([alice]))
    expect(record().opened.map((o) => o.user)).toEqual([carol])
  })
})

/** The JSON of `event` as stored (payload, member list apart) and put back together: what readers get. */
function storedJson(event: HookEvent): string {
  const stored = storedEventSerializer()(event)
  if (!stored.members) return stored.payload
  // The list is the conversation's last key: the stored payload is the event's JSON without it.
  expect(stored.payload.endsWith("}}")).toBe(true)
  const spliced = `${stored.payload.slice(0, -2)},"participants":${stored.members.json}}}`
  const lists = new Map([[stored.members.ref, JSON.parse(stored.members.json)]])
  expect(JSON.stringify(rehydrate(stored.payload, stored.members.ref, lists))).toBe(spliced)
  return spliced
}
