import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  assignSequenceNumbers,
  type ConversationId,
  changeRole,
  createConversation,
  deleteConversation,
  deleteMessage,
  ErrorCode,
  editMessage,
  encodeStoredRecord,
  fleetingSecondsOf,
  getConversation,
  getMessage,
  leaveConversation,
  listMessages,
  type MessageId,
  markRead,
  nextFromDocument,
  ParleyError,
  pinnedMessages,
  Rule,
  react,
  rebasePendingWork,
  renameConversation,
  reopenConversation,
  sendMessage,
  setFleetingSeconds,
  typesOf,
  type UserId,
  unpinMessage,
} from "../src/index.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId

/** The relay's state, and a replica of carol (member) that synced it. */
function setup() {
  const relay = new Y.Doc()
  createConversation(
    relay,
    alice,
    { kind: "group", id: "g~rebase" as ConversationId, participants: [bob, carol] },
    { now: 1 },
  )
  changeRole(relay, alice, bob, "admin")
  const fromAlice = sendMessage(relay, alice, { body: "from alice" }).id
  const fromCarol = sendMessage(relay, carol, { body: "from carol" }).id
  assignSequenceNumbers(relay, nextFromDocument(relay))
  const stale = new Y.Doc()
  Y.applyUpdate(stale, Y.encodeStateAsUpdate(relay))
  return { relay, stale, fromAlice, fromCarol }
}

/** What the SDK does: a fresh replica from the relay's state, then the rebase. */
function freshFrom(relay: Y.Doc): Y.Doc {
  const fresh = new Y.Doc()
  Y.applyUpdate(fresh, Y.encodeStateAsUpdate(relay))
  return fresh
}

describe("rebasing pending work after a refusal", () => {
  it("re-applies a pending reopen of a deleted direct conversation, and the messages written after it", () => {
    const relay = new Y.Doc()
    createConversation(relay, alice, { kind: "direct", participants: [bob] }, { now: 1 })
    sendMessage(relay, alice, { body: "before" })
    deleteConversation(relay, alice)
    leaveConversation(relay, bob)
    const stale = freshFrom(relay)
    reopenConversation(stale, bob)
    sendMessage(stale, bob, { body: "again" })
    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, bob)
    expect(failed).toEqual([])
    expect(getConversation(fresh)).toMatchObject({ reopenedBy: bob })
    expect(getConversation(fresh)?.deletedAt).toBeUndefined()
    expect([...typesOf(fresh).participants.keys()].sort()).toEqual([alice, bob])
    expect(listMessages(fresh, { last: 10 }).map((m) => m.body)).toContain("again")
  })

  it("keeps a deletion the replica reopened before the relay stored it: the reopen and what follows it fail", () => {
    const relay = new Y.Doc()
    createConversation(relay, alice, { kind: "direct", participants: [bob] }, { now: 1 })
    const stale = freshFrom(relay)
    deleteConversation(stale, alice)
    reopenConversation(stale, alice)
    sendMessage(stale, alice, { body: "after" })
    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, alice)
    expect(getConversation(fresh)?.deletedBy).toBe(alice)
    expect(failed.map((f) => f.error.rule)).toEqual([Rule.reopenDirect, Rule.conversationDeleted])
  })

  it("re-applies a pending unpin and fleeting setting, and reports a forbidden unpin with its rule", () => {
    const relay = new Y.Doc()
    createConversation(relay, alice, {
      kind: "group",
      id: "g~rebase-pins" as ConversationId,
      participants: [bob, carol],
    })
    changeRole(relay, alice, bob, "admin")
    const alicesPin = sendMessage(relay, alice, { body: "alice's pin", priority: "sticky" }).id
    const carolsPin = sendMessage(relay, carol, { body: "carol's pin", priority: "sticky" }).id
    assignSequenceNumbers(relay, nextFromDocument(relay))
    const stale = new Y.Doc()
    Y.applyUpdate(stale, Y.encodeStateAsUpdate(relay))
    unpinMessage(stale, carol, carolsPin)
    // Forbidden: a member unpinning someone else's message, written past the operation's check.
    typesOf(stale).unpinned.set(alicesPin, { by: carol, at: 5 })

    const fresh = freshFrom(relay)
    const { reapplied, failed } = rebasePendingWork(stale, fresh, carol)
    expect(pinnedMessages(fresh).map((m) => m.id)).toEqual([alicesPin])
    expect(reapplied).toContainEqual({ kind: "message.unpin", id: carolsPin })
    expect(failed).toHaveLength(1)
    expect(failed[0]!.error).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.unpinAuthorOrAdmin })

    const bobs = new Y.Doc()
    Y.applyUpdate(bobs, Y.encodeStateAsUpdate(relay))
    setFleetingSeconds(bobs, bob, 90)
    const again = freshFrom(relay)
    expect(rebasePendingWork(bobs, again, bob).failed).toEqual([])
    expect(fleetingSecondsOf(again)).toBe(90)
  })

  it("keeps valid pending messages and reports the forbidden edit with its rule", () => {
    const { relay, stale, fromAlice, fromCarol } = setup()
    const one = sendMessage(stale, carol, { body: "pending one" }).id
    // The forbidden change, as a malicious or buggy client writes it.
    typesOf(stale).edits.set(fromAlice, { body: "alice never said this", editedAt: 5 })
    const two = sendMessage(stale, carol, { body: "pending two" }).id
    editMessage(stale, carol, fromCarol, "carol, edited")
    react(stale, carol, fromAlice, "👍")
    markRead(stale, carol, 2)

    const fresh = freshFrom(relay)
    const { reapplied, failed } = rebasePendingWork(stale, fresh, carol)

    expect(getMessage(fresh, one)?.body).toBe("pending one")
    expect(getMessage(fresh, two)?.body).toBe("pending two")
    expect(getMessage(fresh, fromCarol)?.body).toBe("carol, edited")
    expect(getMessage(fresh, fromAlice)?.body).toBe("from alice")
    expect(getMessage(fresh, fromAlice)?.reactions).toEqual({ "👍": [carol] })
    expect(typesOf(fresh).read.get(carol)).toBe(2)
    expect(failed).toHaveLength(1)
    expect(failed[0]!.what).toEqual({ kind: "message.edit", id: fromAlice })
    expect(failed[0]!.error).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.authorOnly })
    expect(reapplied.map((r) => r.kind).sort()).toEqual(
      // markRead moved delivered too: both markers are pending work.
      ["marker", "marker", "message.edit", "message.send", "message.send", "reaction.add"].sort(),
    )
  })

  it("reports a forged author, a self-promotion and a sequence write, and keeps the rest", () => {
    const { relay, stale } = setup()
    typesOf(stale).messages.push([
      encodeStoredRecord({ id: "forged000001" as MessageId, author: alice, body: "as alice", createdAt: 3 }),
    ])
    typesOf(stale).participants.set(carol, { ...typesOf(stale).participants.get(carol)!, role: "admin" })
    typesOf(stale).order.push(["9:forged000001"])
    const kept = sendMessage(stale, carol, { body: "still mine" }).id

    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, carol)

    expect(getMessage(fresh, kept)?.author).toBe(carol)
    expect(getMessage(fresh, "forged000001" as MessageId)).toBeUndefined()
    expect(typesOf(fresh).participants.get(carol)?.role).toBe("member")
    expect(failed.map((f) => f.error.rule).sort()).toEqual(
      [Rule.authorIsSender, Rule.adminOnly, Rule.relayOnly].sort(),
    )
  })

  it("does not undo what others changed meanwhile, and redoes own deletions", () => {
    const { relay, stale, fromCarol } = setup()
    deleteMessage(stale, carol, fromCarol)
    renameConversation(relay, alice, "Renamed by alice")
    const fresh = freshFrom(relay)
    const { failed, reapplied } = rebasePendingWork(stale, fresh, carol)
    expect(failed).toEqual([])
    expect(reapplied).toEqual([{ kind: "message.delete", id: fromCarol }])
    expect(getMessage(fresh, fromCarol)?.deleted?.by).toBe(carol)
    expect(typesOf(fresh).meta.get("title")).toBe("Renamed by alice")
  })

  it("fails the work a removal refused (up to its state vector) and re-applies what was written after it", () => {
    const { relay, stale, fromAlice, fromCarol } = setup()
    editMessage(stale, carol, fromCarol, "edited while removed")
    react(stale, carol, fromAlice, "👍")
    const refusal = new ParleyError(ErrorCode.FORBIDDEN, "not a participant")
    const through = Y.decodeStateVector(Y.encodeStateVector(stale))
    // A later load of the replica: another client id.
    const reloaded = new Y.Doc()
    Y.applyUpdate(reloaded, Y.encodeStateAsUpdate(stale))
    react(reloaded, carol, fromAlice, "🎉")
    markRead(reloaded, carol, 2)

    const fresh = freshFrom(relay)
    const { failed, reapplied } = rebasePendingWork(reloaded, fresh, carol, undefined, undefined, {
      through,
      error: refusal,
    })
    expect(failed.map((f) => [f.what.kind, f.error])).toEqual([
      ["message.edit", refusal],
      ["reaction.add", refusal],
    ])
    expect(reapplied.filter((what) => what.kind !== "marker")).toEqual([
      { kind: "reaction.add", id: fromAlice, user: carol, emoji: "🎉" },
    ])
    expect(typesOf(fresh).read.get(carol)).toBe(2)
    expect(getMessage(fresh, fromCarol)?.body).toBe("from carol")
    expect(getMessage(fresh, fromAlice)?.reactions).toEqual({ "🎉": [carol] })
  })

  it("re-applies pending work written under a client id someone else wrote under first on the relay", () => {
    const { relay, stale, fromCarol } = setup()
    const one = sendMessage(stale, carol, { body: "pending one" }).id
    react(stale, carol, fromCarol, "👍")
    const two = sendMessage(stale, carol, { body: "pending two" }).id
    // Bob, who learnt carol's client id, writes under it on the relay first: more structs than hers.
    const squatter = new Y.Doc()
    Y.applyUpdate(squatter, Y.encodeStateAsUpdate(relay))
    squatter.clientID = stale.clientID
    for (let i = 0; i < 3; i++) sendMessage(squatter, bob, { body: `squat ${i}` })
    Y.applyUpdate(relay, Y.encodeStateAsUpdate(squatter, Y.encodeStateVector(relay)))

    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, carol)
    expect(failed).toEqual([])
    expect(getMessage(fresh, one)?.body).toBe("pending one")
    expect(getMessage(fresh, two)?.body).toBe("pending two")
    expect(getMessage(fresh, fromCarol)?.reactions).toEqual({ "👍": [carol] })
  })

  it("merges a direct conversation both users created offline, without failures", () => {
    const relay = new Y.Doc()
    createConversation(relay, alice, { kind: "direct", participants: [bob] }, { now: 1 })
    sendMessage(relay, alice, { body: "hi bob" })
    const stale = new Y.Doc()
    createConversation(stale, bob, { kind: "direct", participants: [alice] }, { now: 2 })
    const mine = sendMessage(stale, bob, { body: "hi alice" }).id
    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, bob)
    expect(failed).toEqual([])
    expect(getMessage(fresh, mine)?.author).toBe(bob)
    expect(typesOf(fresh).meta.get("createdBy")).toBe(alice)
  })

  it("recreates a conversation the relay never got, with its messages", () => {
    const relay = new Y.Doc()
    const stale = new Y.Doc()
    createConversation(stale, carol, {
      kind: "group",
      id: "g~new" as ConversationId,
      participants: [bob],
      title: "New",
    })
    const first = sendMessage(stale, carol, { body: "first" }).id
    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, carol)
    expect(failed).toEqual([])
    expect(typesOf(fresh).meta.get("title")).toBe("New")
    expect(typesOf(fresh).participants.get(carol)?.role).toBe("owner")
    expect(getMessage(fresh, first)?.body).toBe("first")
  })
})

describe("rebasing work written into a creation whose id the relay holds another conversation under", () => {
  const id = "g~team" as ConversationId
  const mallory = "mallory" as UserId

  /** Carol's replica: the group created offline with bob, a message and a rename in it; the relay: mallory's group with carol. */
  function squatted(clients: { carol: number; mallory: number }) {
    const relay = new Y.Doc()
    relay.clientID = clients.mallory
    createConversation(
      relay,
      mallory,
      { kind: "group", id, participants: [carol], title: "mallory's" },
      { now: 5 },
    )
    const stale = new Y.Doc()
    stale.clientID = clients.carol
    createConversation(
      stale,
      carol,
      { kind: "group", id, participants: [bob], title: "carol+bob" },
      { now: 7 },
    )
    const mine = sendMessage(stale, carol, { body: "for bob only" }).id
    renameConversation(stale, carol, "carol and bob")
    return { relay, stale, mine }
  }

  // Either creation may win in the stale replica once the relay's state reached it: the lower client id loses.
  it.each([
    ["its own creation shown", { carol: 20, mallory: 10 }],
    ["the relay's creation shown", { carol: 10, mallory: 20 }],
  ])("fails it all with CONFLICT, re-applying nothing, with %s", (_, clients) => {
    const { relay, stale, mine } = squatted(clients)
    Y.applyUpdate(stale, Y.encodeStateAsUpdate(relay))
    const fresh = freshFrom(relay)
    const before = Y.encodeStateVector(fresh)
    const { reapplied, failed } = rebasePendingWork(stale, fresh, carol)
    expect(reapplied).toEqual([])
    expect(failed.map((f) => f.what)).toContainEqual({ kind: "conversation.create" })
    expect(failed.map((f) => f.what)).toContainEqual({ kind: "message.send", id: mine })
    for (const { error } of failed)
      expect(error).toMatchObject({ code: ErrorCode.CONFLICT, rule: Rule.conversationIdTaken })
    expect(Y.encodeStateVector(fresh)).toEqual(before)
    expect(getMessage(fresh, mine)).toBeUndefined()
  })

  it("fails it as well when the relay's state had not reached the replica", () => {
    const { relay, stale, mine } = squatted({ carol: 20, mallory: 10 })
    const { reapplied, failed } = rebasePendingWork(stale, freshFrom(relay), carol)
    expect(reapplied).toEqual([])
    expect(failed).toContainEqual({
      what: { kind: "message.send", id: mine },
      error: expect.objectContaining({ code: ErrorCode.CONFLICT }),
    })
  })

  it("re-applies work onto the same creation (the relay stored it under another client id)", () => {
    const relay = new Y.Doc()
    createConversation(
      relay,
      carol,
      { kind: "group", id, participants: [bob], title: "carol+bob" },
      { now: 7 },
    )
    const stale = new Y.Doc()
    createConversation(
      stale,
      carol,
      { kind: "group", id, participants: [bob], title: "carol+bob" },
      { now: 7 },
    )
    const mine = sendMessage(stale, carol, { body: "hello" }).id
    const fresh = freshFrom(relay)
    const { failed } = rebasePendingWork(stale, fresh, carol)
    expect(failed.map((f) => f.error.code)).not.toContain(ErrorCode.CONFLICT)
    expect(getMessage(fresh, mine)?.body).toBe("hello")
  })
})
