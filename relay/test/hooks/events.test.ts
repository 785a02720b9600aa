import {
  addParticipants,
  type ChangeEvent,
  type ConversationId,
  changeRole,
  createConversation,
  deleteConversation,
  deleteMessage,
  directConversationId,
  editMessage,
  getMessage,
  leaveConversation,
  type MessageId,
  markRead,
  observeChanges,
  react,
  removeParticipants,
  renameConversation,
  reopenConversation,
  sendMessage,
  type UserId,
  unreact,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { deriveHookEvents, type HookEvent, newEventId, stableEventId } from "../../src/hooks/events.js"
import { rehydrate, storedEventSerializer } from "../../src/hooks/member-lists.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId
const id = "g~hooks-events" as ConversationId

const summary = (events: HookEvent[]) => events.map((e) => e.event.type)

describe("hook events from clients' changes", () => {
  it("fires each event type exactly once, with actor, subject and the conversation after the change", async () => {
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
    expect(summary(created)).toEqual(["conversation.created"])
    expect(created[0]!.event.actor).toEqual({ kind: "user", user: alice })
    expect(created[0]!.conversation.participants.map((p) => [p.user, p.role])).toEqual([
      ["alice", "owner"],
      ["bob", "member"],
    ])

    const sent = await step(() => sendMessage(a.doc, alice, { id: "m-000001" as MessageId, body: "hello" }))
    expect(summary(sent)).toEqual(["message.sent"])
    expect(sent[0]!.subject).toMatchObject({
      message: { id: "m-000001", body: "hello", author: "alice", seq: 1 },
    })

    expect(summary(await step(() => editMessage(a.doc, alice, "m-000001" as MessageId, "hello!")))).toEqual([
      "message.edited",
    ])
    expect(summary(await step(() => react(a.doc, alice, "m-000001" as MessageId, "👍")))).toEqual([
      "reaction.added",
    ])
    expect(summary(await step(() => unreact(a.doc, alice, "m-000001" as MessageId, "👍")))).toEqual([
      "reaction.removed",
    ])
    const read = await step(() => markRead(a.doc, alice))
    expect(summary(read)).toEqual(["messages.read"])
    expect(read[0]!.subject).toEqual({ user: "alice", upTo: 1 })
    const added = await step(() => addParticipants(a.doc, alice, [carol]))
    expect(summary(added)).toEqual(["participants.added"])
    expect(added[0]!.conversation.participants.map((p) => p.user)).toContain("carol")
    expect(summary(await step(() => changeRole(a.doc, alice, carol, "admin")))).toEqual([
      "participants.roleChanged",
    ])
    const removed = await step(() => removeParticipants(a.doc, alice, [carol]))
    expect(summary(removed)).toEqual(["participants.removed"])
    expect(removed[0]!.conversation.participants.map((p) => p.user)).not.toContain("carol")
    const renamed = await step(() => renameConversation(a.doc, alice, "Trip 2027"))
    expect(summary(renamed)).toEqual(["conversation.updated"])
    expect(renamed[0]!.conversation.title).toBe("Trip 2027")
    expect(summary(await step(() => deleteMessage(a.doc, alice, "m-000001" as MessageId)))).toEqual([
      "message.deleted",
    ])
    expect(summary(await step(() => deleteConversation(a.doc, alice)))).toEqual(["conversation.deleted"])
  })

  it("tells a direct conversation's reopen (conversation.reopened), with both users back in it", async () => {
    const { hooks, events } = recordingHooks()
    const { core, runtime } = await coreWithHooks({
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
    })
    const direct = directConversationId([alice, bob])
    const a = new InProcessClient(core, direct, alice)
    await a.connect()
    const step = async (change: () => void) => {
      events.length = 0
      change()
      await a.settled()
      await runtime.idle()
      return [...events]
    }
    await step(() => createConversation(a.doc, alice, { kind: "direct", participants: [bob] }))
    expect(summary(await step(() => deleteConversation(a.doc, alice)))).toEqual(["conversation.deleted"])
    await step(() => leaveConversation(a.doc, alice))
    const reopened = await step(() => reopenConversation(a.doc, alice))
    expect(summary(reopened)).toEqual(["conversation.reopened", "participants.added"])
    expect(reopened[0]!.subject).toEqual({ reopenedBy: alice })
    expect(reopened[0]!.event.actor).toEqual({ kind: "user", user: alice })
    expect(reopened[0]!.conversation.deletedAt).toBeUndefined()
    expect(reopened[0]!.conversation.participants.map((p) => p.user).sort()).toEqual([alice, bob])
    // What is written after the reopen is news of its own: the purge of the deleted content (minutes
    // remembered, for events read before it) does not take it away (an outside probe: `{ purged: true }`).
    const sent = await step(() => sendMessage(a.doc, alice, { body: "Written-After-Reopen" }))
    expect(summary(sent)).toEqual(["message.sent"])
    expect(sent[0]!.subject).toMatchObject({ message: { body: "Written-After-Reopen", author: alice } })
  })

  it("fires the events of changes made offline once, when they reach the relay, with sequence numbers", async () => {
    const { hooks, events } = recordingHooks()
    const raw: HookEvent[] = []
    const { core, runtime } = await coreWithHooks({
      hooks: [
        { name: "record.ts", path: "record.ts", hooks },
        {
          name: "raw.ts",
          path: "raw.ts",
          hooks: recordingHooks({ onDocumentUpdated: (e) => void raw.push(e) }).hooks,
        },
      ],
    })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { id: "online-01" as MessageId, body: "anyone?" })
    await a.settled()
    const b = new InProcessClient(core, id, bob)
    await b.connect()
    b.disconnect()
    sendMessage(b.doc, bob, { id: "off-00001" as MessageId, body: "written offline" })
    sendMessage(b.doc, bob, { id: "off-00002" as MessageId, body: "me too" })
    editMessage(b.doc, bob, "off-00001" as MessageId, "written offline, edited")
    react(b.doc, bob, "online-01" as MessageId, "👋")
    markRead(b.doc, bob)
    await runtime.idle()
    events.length = 0
    raw.length = 0
    await b.connect()
    await runtime.idle()
    expect(summary(events)).toEqual([
      "message.sent",
      "message.sent",
      "message.edited",
      "reaction.added",
      "messages.read",
    ])
    const sentSeqs = events
      .filter((e) => e.event.type === "message.sent")
      .map((e) => (e.subject as { message: { seq?: number } }).message.seq)
    expect(sentSeqs).toEqual([2, 3])
    expect(events.every((e) => e.event.actor.kind === "user" && e.event.actor.user === "bob")).toBe(true)
    expect(raw).toHaveLength(1)
    expect(raw[0]!.subject).toMatchObject({
      changes: expect.arrayContaining([
        { type: "messages.sequenced", from: 2, ids: ["off-00001", "off-00002"] },
      ]),
    })
    // Syncing again (a reconnect) changes nothing and fires nothing.
    events.length = 0
    b.disconnect()
    await b.connect()
    await runtime.idle()
    expect(events).toEqual([])
  })

  it("fires typing.started from awareness once per typing burst", async () => {
    let now = 1_000_000
    const { hooks, events } = recordingHooks()
    const { core, runtime } = await coreWithHooks({
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      now: () => now,
    })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    await a.settled()
    await runtime.idle()
    events.length = 0
    // Frames seconds apart, as a client sends them (the first one's new id is claimed before it applies).
    const frameApart = () => new Promise((resolve) => setImmediate(resolve))
    a.setPresence({ user: alice, typing: now })
    await frameApart()
    now += 3_000
    a.setPresence({ user: alice, typing: now })
    await frameApart()
    now += 3_000
    a.setPresence({ user: alice, typing: 0 })
    await frameApart()
    now += 10_000
    a.setPresence({ user: alice, typing: now })
    await runtime.idle()
    await new Promise((resolve) => setImmediate(resolve))
    expect(summary(events)).toEqual(["typing.started", "typing.started"])
    expect(events[0]!.subject).toEqual({ user: "alice" })
  })
})

describe("document.updated", () => {
  it("stores the same JSON handlers read, and hands them a plain copy they may change", () => {
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id, participants: [bob], title: "t" })
    const changes: ChangeEvent[] = []
    const stop = observeChanges(doc, (c) => changes.push(...c))
    const { id: messageId } = sendMessage(doc, alice, { body: "hi" })
    stop()
    const events = deriveHookEvents({
      conversationId: id,
      doc,
      actor: { kind: "user", user: alice },
      changes,
      positions: [3, 4],
      now: 1,
    })
    const updated = events.at(-1) as HookEvent<"document.updated">
    expect(updated.event.type).toBe("document.updated")
    // What the event log stores is what serializing the object a handler sees gives.
    const stored = storedJson(updated)
    expect(JSON.parse(stored)).toEqual(JSON.parse(JSON.stringify(updated)))
    expect(stored).toBe(JSON.stringify(updated))
    const seen = updated.subject.changes as ChangeEvent[]
    expect(seen).toEqual(JSON.parse(JSON.stringify(changes)))
    expect(updated.subject.positions).toEqual([3, 4])
    // A copy: changing it changes neither the document nor what was stored.
    const sent = seen.find((c) => c.type === "message.sent") as Extract<ChangeEvent, { type: "message.sent" }>
    ;(sent.message as { body: string }).body = "changed"
    expect(updated.subject.changes).toBe(seen)
    expect(getMessage(doc, messageId)?.body).toBe("hi")
    expect(stored).toContain('"body":"hi"')
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

describe("event ids", () => {
  it("start with the time in base 36, end with 12 random id characters, and do not repeat", () => {
    const ids = Array.from({ length: 5000 }, (_, i) => newEventId(1_700_000_000_000 + (i >> 8)))
    for (const id of ids) expect(id).toMatch(/^evt_[0-9a-z]{9}[A-Za-z0-9_-]{12}$/)
    expect(new Set(ids).size).toBe(ids.length)
    expect(ids[0]!.slice(0, 13)).toBe(`evt_${(1_700_000_000_000).toString(36).padStart(9, "0")}`)
    expect(ids[4999]! > ids[0]!).toBe(true)
    // Every character of the alphabet appears: the random part is not biased to a few.
    expect(new Set(ids.flatMap((id) => [...id.slice(13)])).size).toBe(64)
  })
})

describe("stable event ids", () => {
  /** `doc` changed by each of `writes` in turn (one stored entry each), with each entry's changes. */
  function entries(doc: Y.Doc, writes: readonly (() => void)[]): ChangeEvent[][] {
    return writes.map((write) => {
      const changes: ChangeEvent[] = []
      const stop = observeChanges(doc, (c) => changes.push(...c))
      write()
      stop()
      return changes
    })
  }

  it("give a change stored as several entries the ids a recovery derives from them entry by entry", () => {
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    const first = sendMessage(doc, alice, { body: "first" })
    const [one, two, three] = entries(doc, [
      () => {
        sendMessage(doc, alice, { body: "a" })
        react(doc, alice, first.id, "👍")
      },
      () => sendMessage(doc, alice, { body: "b" }),
      () => {
        renameConversation(doc, alice, "new title")
        react(doc, bob, first.id, "🎉")
      },
    ])
    const derive = (changes: ChangeEvent[], positions: number[], counts?: number[]) =>
      deriveHookEvents({
        conversationId: id,
        doc,
        actor: { kind: "user", user: alice },
        changes,
        positions,
        ...(counts ? { counts } : {}),
        now: 1,
      })
    // Live: one change of three entries (a batch's run of one writer's updates).
    const live = derive([...one!, ...two!, ...three!], [7, 8, 9], [one!.length, two!.length, three!.length])
    // Recovery: each entry alone, as `applyStoredLog` reads the log.
    const recovered = [derive(one!, [7]), derive(two!, [8]), derive(three!, [9])]
    const semantic = (events: HookEvent[]) =>
      events.filter((e) => e.event.type !== "document.updated").map((e) => [e.event.type, e.event.id])
    expect(semantic(live)).toEqual(recovered.flatMap(semantic))
    expect(semantic(live).map(([type]) => type)).toEqual([
      "message.sent",
      "reaction.added",
      "message.sent",
      "conversation.updated",
      "reaction.added",
    ])
    // The change's document.updated is the one of its first entry.
    expect(live.at(-1)!.event.id).toBe(recovered[0]!.at(-1)!.event.id)
    expect(live.at(-1)!.event.id).toBe(stableEventId(id, 7, "u"))
    // Derived again (another relay, a retry): the same ids.
    expect(
      derive([...one!, ...two!, ...three!], [7, 8, 9], [one!.length, two!.length, three!.length]).map(
        (e) => e.event.id,
      ),
    ).toEqual(live.map((e) => e.event.id))
    // Every id of the change is its own.
    expect(new Set(live.map((e) => e.event.id)).size).toBe(live.length)
  })

  it("differ by conversation, position and index, reveal no content, and keep the evt_ prefix", () => {
    const ids = [
      stableEventId(id, 1, 0),
      stableEventId(id, 1, 1),
      stableEventId(id, 2, 0),
      stableEventId(id, 1, "u"),
      stableEventId("g~other" as ConversationId, 1, 0),
      stableEventId(id, 36, 0),
      // The 31st event's index is "u" in base 36: it is not the document.updated's id.
      stableEventId(id, 1, 30),
    ]
    expect(new Set(ids).size).toBe(ids.length)
    for (const eventId of ids) expect(eventId).toMatch(/^evt_[A-Za-z0-9_-]{16}_[0-9a-z]+(_[0-9a-z]+|u)$/)
    expect(ids[0]).not.toContain("hooks-events")
    expect(stableEventId(id, 36, 0)).toBe(stableEventId(id, 36, 0))
  })

  it("are random for a change stored nowhere (no positions)", () => {
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    const [changes] = entries(doc, [() => sendMessage(doc, alice, { body: "x" })])
    const derive = () =>
      deriveHookEvents({
        conversationId: id,
        doc,
        actor: { kind: "user", user: alice },
        changes: changes!,
        positions: [],
        now: 1,
      })
    expect(derive()[0]!.event.id).not.toBe(derive()[0]!.event.id)
  })
})
