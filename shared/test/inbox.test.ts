import * as prng from "lib0/prng"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  addParticipants,
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  getInboxEntry,
  inboxEntryFor,
  isMuted,
  listInbox,
  listParticipants,
  markRead,
  messageIndex,
  nextFromDocument,
  observeChanges,
  ParleyError,
  PREVIEW_LENGTH,
  removeParticipants,
  renameConversation,
  sendMessage,
  setMuted,
  totalUnread,
  type UserId,
  unreadCount,
  writeInboxEntry,
} from "../src/index.js"
import { alice, bob, carol, dave, groupDoc } from "./helpers.js"

describe("inbox entries", () => {
  it("summarises a conversation for one participant", () => {
    const doc = groupDoc()
    const later = Date.now() + 60_000
    sendMessage(doc, alice, { body: "first" }, { now: later })
    sendMessage(doc, bob, { body: "x".repeat(500) }, { now: later + 1 })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const entry = inboxEntryFor(doc, carol)!
    expect(entry).toMatchObject({
      conversationId: "g~test",
      kind: "group",
      title: "Team",
      participants: { count: 3, first: [alice, bob, carol] },
      unread: 2,
      readUpTo: 0,
      lastActivityAt: later + 1,
      lastMessage: { author: bob, seq: 2, deleted: false, at: later + 1 },
    })
    expect(entry.lastMessage!.text).toHaveLength(PREVIEW_LENGTH)
    expect(inboxEntryFor(doc, alice)?.unread).toBe(1)
    expect(inboxEntryFor(doc, dave)).toBeUndefined()
  })

  it("lists the first participants by time added, then id, whatever order they were added in", () => {
    const doc = groupDoc()
    const rng = prng.create(7)
    const base = Date.now()
    // Several joins share a millisecond, so ties are decided by id, as in listParticipants.
    for (let i = 0; i < 40; i++) {
      const user = `user${prng.uint32(rng, 0, 1_000_000)}` as UserId
      addParticipants(doc, alice, [user], "member", { now: base - prng.uint32(rng, 0, 5) * 1000 })
    }
    const all = listParticipants(doc)
    expect(inboxEntryFor(doc, alice)?.participants).toEqual({
      count: all.length,
      first: all.slice(0, 5).map((p) => p.user),
    })
    // The summary starts with the joins set in the past, not with the conversation's creator.
    expect(inboxEntryFor(doc, alice)?.participants.first[0]).not.toBe(alice)
  })

  it("keeps the participants summary current as members join and leave, inside a transaction too", () => {
    const doc = groupDoc()
    const summary = () => inboxEntryFor(doc, alice)?.participants
    const expected = () => {
      const all = listParticipants(doc)
      return { count: all.length, first: all.slice(0, 5).map((p) => p.user) }
    }
    const before = summary()
    // Asked again with no change: the same figures (the summary is kept until the members change).
    expect(summary()).toEqual(before)
    const past = Date.now() - 60_000
    addParticipants(doc, alice, ["early" as UserId], "member", { now: past })
    expect(summary()).toEqual(expected())
    expect(summary()?.first[0]).toBe("early")
    removeParticipants(doc, alice, ["early" as UserId])
    expect(summary()).toEqual(expected())
    expect(summary()).toEqual(before)
    // Read inside the transaction that changes the members: what the transaction wrote so far.
    doc.transact(() => {
      addParticipants(doc, alice, ["earlier" as UserId], "member", { now: past - 1000 })
      expect(summary()).toEqual(expected())
    })
    expect(summary()).toEqual(expected())
  })

  it("shows a deleted last message as a placeholder without its text", () => {
    const doc = groupDoc()
    const m = sendMessage(doc, bob, { body: "oops" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    deleteMessage(doc, bob, m.id)
    expect(inboxEntryFor(doc, alice)?.lastMessage).toMatchObject({ text: "", deleted: true })
    expect(inboxEntryFor(doc, alice)?.unread).toBe(0)
  })
})

describe("inbox document", () => {
  it("lists by latest activity, totals unread, and keeps mute as the user's own flag", () => {
    const inbox = new Y.Doc()
    const a = groupDoc("g~a")
    const b = groupDoc("g~b")
    const later = Date.now() + 60_000
    sendMessage(a, alice, { body: "old" }, { now: later })
    sendMessage(b, alice, { body: "new" }, { now: later + 1 })
    for (const doc of [a, b]) assignSequenceNumbers(doc, nextFromDocument(doc))
    expect(writeInboxEntry(inbox, "g~a" as ConversationId, inboxEntryFor(a, bob))).toBe(true)
    expect(writeInboxEntry(inbox, "g~b" as ConversationId, inboxEntryFor(b, bob))).toBe(true)
    expect(writeInboxEntry(inbox, "g~b" as ConversationId, inboxEntryFor(b, bob))).toBe(false)
    expect(listInbox(inbox).map((e) => e.conversationId)).toEqual(["g~b", "g~a"])
    expect(totalUnread(inbox)).toBe(2)
    setMuted(inbox, "g~a" as ConversationId, true)
    expect(isMuted(inbox, "g~a" as ConversationId)).toBe(true)
    expect(getInboxEntry(inbox, "g~a" as ConversationId)?.muted).toBe(true)
    writeInboxEntry(inbox, "g~a" as ConversationId, undefined)
    expect(listInbox(inbox).map((e) => e.conversationId)).toEqual(["g~b"])
  })

  it("keeps totals equal to counting in the conversations, incrementally and rebuilt, for random histories", () => {
    const users = [alice, bob, carol, dave]
    for (let seed = 1; seed <= 10; seed++) {
      const gen = prng.create(seed)
      const conversations = [0, 1, 2].map((i) => {
        const doc = new Y.Doc()
        createConversation(doc, alice, {
          kind: "group",
          id: `g~p${i}` as ConversationId,
          participants: [bob, carol],
        })
        return doc
      })
      // Incremental maintenance: after every change, rewrite the entries of everyone who takes part, or took part.
      const inboxes = new Map(users.map((u) => [u, new Y.Doc()]))
      for (const doc of conversations) {
        const affected = new Set<UserId>(users)
        const maintain = () => {
          const id = doc.getMap("meta").get("id") as ConversationId
          for (const user of affected) writeInboxEntry(inboxes.get(user)!, id, inboxEntryFor(doc, user))
        }
        maintain()
        observeChanges(doc, maintain)
      }
      for (let step = 0; step < 200; step++) {
        const doc = prng.oneOf(gen, conversations)
        const user = prng.oneOf(gen, users)
        const ids = [...messageIndex(doc).records.keys()]
        try {
          const op = prng.int32(gen, 0, 9)
          if (op <= 4 || ids.length === 0) sendMessage(doc, user, { body: prng.word(gen, 1, 20) })
          else if (op === 5) markRead(doc, user, prng.oneOf(gen, ids))
          else if (op === 6) deleteMessage(doc, user, prng.oneOf(gen, ids))
          else if (op === 7) editMessage(doc, user, prng.oneOf(gen, ids), prng.word(gen, 1, 20))
          else if (op === 8) addParticipants(doc, alice, [prng.oneOf(gen, users)])
          else if (prng.bool(gen)) removeParticipants(doc, user, [user])
          else renameConversation(doc, user, prng.word(gen, 1, 10))
        } catch (error) {
          if (!(error instanceof ParleyError)) throw error
        }
        if (prng.bool(gen)) assignSequenceNumbers(doc, nextFromDocument(doc))
      }
      for (const user of users) {
        const inbox = inboxes.get(user)!
        const member = conversations.filter((doc) => inboxEntryFor(doc, user))
        expect(totalUnread(inbox)).toBe(member.reduce((n, doc) => n + unreadCount(doc, user), 0))
        const rebuilt = new Y.Doc()
        for (const doc of conversations) {
          writeInboxEntry(rebuilt, doc.getMap("meta").get("id") as ConversationId, inboxEntryFor(doc, user))
        }
        expect(listInbox(inbox)).toEqual(listInbox(rebuilt))
      }
    }
  })
})
