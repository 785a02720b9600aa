import { describe, expect, it } from "vitest"
import {
  applySeal,
  assignSequenceNumbers,
  type ChangeEvent,
  type ConversationId,
  canUnpinMessage,
  changeRole,
  DEFAULT_FLEETING_SECONDS,
  deleteMessage,
  ErrorCode,
  expireMessage,
  fleetingExpiry,
  fleetingSecondsOf,
  getConversation,
  getMessage,
  inboxEntryFor,
  isExpired,
  markRead,
  nextFromDocument,
  observeChanges,
  pinnedMessages,
  planSeal,
  Rule,
  sealedThrough,
  sendMessage,
  setFleetingSeconds,
  typesOf,
  unpinMessage,
  unreadEmergency,
} from "../src/index.js"
import { alice, bob, carol, groupDoc, replicaOf, sync } from "./helpers.js"

const refused = (rule: Rule) => expect.objectContaining({ code: ErrorCode.FORBIDDEN, rule })

describe("the unpin rule", () => {
  it("lets the author or an owner / admin unpin, and refuses a member unpinning another's message", () => {
    expect(canUnpinMessage(bob, "member", bob).allowed).toBe(true)
    expect(canUnpinMessage(alice, "owner", bob).allowed).toBe(true)
    expect(canUnpinMessage(carol, "admin", bob).allowed).toBe(true)
    expect(canUnpinMessage(carol, "member", bob)).toMatchObject({
      allowed: false,
      rule: Rule.unpinAuthorOrAdmin,
    })
    expect(canUnpinMessage(carol, undefined, carol)).toMatchObject({
      allowed: false,
      rule: Rule.participantOnly,
    })
  })
})

describe("sticky messages", () => {
  it("are listed as pinned until unpinned, on every replica", () => {
    const doc = groupDoc()
    const pin = sendMessage(doc, bob, { body: "Wifi password is on the fridge", priority: "sticky" })
    sendMessage(doc, bob, { body: "plain" })
    const other = replicaOf(doc)
    expect(pinnedMessages(other).map((m) => m.id)).toEqual([pin.id])

    expect(() => unpinMessage(doc, carol, pin.id)).toThrow(
      expect.objectContaining({ code: ErrorCode.FORBIDDEN }),
    )
    unpinMessage(doc, alice, pin.id, { now: 5 })
    expect(pinnedMessages(doc)).toEqual([])
    expect(typesOf(doc).unpinned.get(pin.id)).toEqual({ by: alice, at: 5 })
    sync(doc, other)
    expect(pinnedMessages(other)).toEqual([])
  })

  it("refuses to unpin a message that is not sticky, and drops a deleted pin", () => {
    const doc = groupDoc()
    const plain = sendMessage(doc, bob, { body: "plain" })
    expect(() => unpinMessage(doc, bob, plain.id)).toThrow(/not pinned/)
    const pin = sendMessage(doc, bob, { body: "pinned", priority: "sticky" })
    deleteMessage(doc, bob, pin.id)
    expect(pinnedMessages(doc)).toEqual([])
  })

  it("stay listed after the relay seals them into history, with their edits, and unpin from the copy", () => {
    const doc = groupDoc()
    const pin = sendMessage(doc, alice, { body: "Read the rules", priority: "sticky" })
    for (let i = 0; i < 20; i++) sendMessage(doc, bob, { body: `m${i}` })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const plan = planSeal(doc, "g~test" as ConversationId, {
      segmentSize: 10,
      keepLive: 5,
      epochClientIds: 1000,
    })
    expect(plan?.ids.has(pin.id)).toBe(true)
    applySeal(doc, plan!, null)
    expect(sealedThrough(doc)).toBeGreaterThan(0)
    // A replica that never held the segment still lists it.
    const fresh = replicaOf(doc)
    expect(pinnedMessages(fresh).map((m) => [m.id, m.body])).toEqual([[pin.id, "Read the rules"]])
    unpinMessage(fresh, alice, pin.id)
    expect(pinnedMessages(fresh)).toEqual([])
    // The copy (which holds the text) goes with the unpinning.
    expect(typesOf(fresh).pins.has(pin.id)).toBe(false)
  })
})

describe("emergency messages", () => {
  it("flag the reader's inbox entry until their read marker passes them", () => {
    const doc = groupDoc()
    sendMessage(doc, alice, { body: "normal" })
    const alarm = sendMessage(doc, alice, { body: "Fire drill now", priority: "emergency" })
    expect(unreadEmergency(doc, bob)).toEqual([alarm.id])
    // Not flagged for its author.
    expect(unreadEmergency(doc, alice)).toEqual([])
    assignSequenceNumbers(doc, nextFromDocument(doc))
    expect(inboxEntryFor(doc, bob)?.emergency).toEqual([alarm.id])
    markRead(doc, bob, "latest")
    expect(inboxEntryFor(doc, bob)?.emergency).toBeUndefined()
    expect(inboxEntryFor(doc, carol)?.emergency).toEqual([alarm.id])
  })
})

describe("fleeting messages", () => {
  it("expire after the conversation's setting, which only managers change", () => {
    const doc = groupDoc()
    expect(fleetingSecondsOf(doc)).toBe(DEFAULT_FLEETING_SECONDS)
    expect(() => setFleetingSeconds(doc, bob, 60)).toThrow(refused(Rule.adminOnly))
    expect(() => setFleetingSeconds(doc, alice, 0)).toThrow(/fleetingSeconds/)
    changeRole(doc, alice, carol, "admin")
    setFleetingSeconds(doc, carol, 60)
    expect(fleetingSecondsOf(doc)).toBe(60)
    const m = sendMessage(doc, bob, { body: "Gone soon", priority: "fleeting" })
    const view = getMessage(doc, m.id)!
    const expiry = fleetingExpiry(view, 60)!
    expect(expiry).toBe(view.createdAt + 60_000)
    expect(isExpired(doc, view, expiry - 1)).toBe(false)
    expect(isExpired(doc, view, expiry)).toBe(true)
    // A createdAt set in the future is bounded by when the relay took it.
    expect(fleetingExpiry({ priority: "fleeting", createdAt: 9e12 }, 60, 1_000)).toBe(61_000)
  })

  it("tell observers when the setting changes (conversation.updated, field fleetingSeconds)", () => {
    const doc = groupDoc()
    const events: ChangeEvent[] = []
    observeChanges(doc, (e) => events.push(...e))
    setFleetingSeconds(doc, alice, 30)
    setFleetingSeconds(doc, alice, undefined)
    expect(events.map((e) => e.type === "conversation.updated" && e.fields)).toEqual([
      ["fleetingSeconds"],
      ["fleetingSeconds"],
    ])
    expect(getConversation(doc)?.fleetingSeconds).toBeUndefined()
  })

  it("become a deletion placeholder when the relay expires them, edits and reactions gone", () => {
    const doc = groupDoc()
    const m = sendMessage(doc, bob, { body: "Secret-Fleeting", priority: "fleeting" })
    const plain = sendMessage(doc, bob, { body: "stays" })
    expect(expireMessage(doc, plain.id)).toBe(false)
    expect(expireMessage(doc, m.id, { now: 42 })).toBe(true)
    expect(getMessage(doc, m.id)?.deleted).toEqual({ at: 42, by: bob })
    expect(JSON.stringify(typesOf(doc).messages.toJSON())).not.toContain("Secret-Fleeting")
    expect(expireMessage(doc, m.id)).toBe(false)
  })

  it("are gone for readers once expired, live or sealed: no 'deleted' placeholder, nor in the inbox preview", () => {
    const doc = groupDoc()
    const old = sendMessage(doc, bob, { body: "sealed-fleeting", priority: "fleeting" })
    for (let i = 0; i < 20; i++) sendMessage(doc, bob, { body: `m${i}` })
    const last = sendMessage(doc, bob, { body: "live-fleeting", priority: "fleeting" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    applySeal(
      doc,
      planSeal(doc, "g~test" as ConversationId, { segmentSize: 10, keepLive: 5, epochClientIds: 1000 })!,
      null,
    )
    expect(sealedThrough(doc)).toBeGreaterThan(0)
    expect(expireMessage(doc, old.id, { now: 42 })).toBe(true)
    expect(expireMessage(doc, last.id, { now: 43 })).toBe(true)
    // On a device whose clock is far behind the relay's too: the relay said the time is up.
    for (const id of [old.id, last.id]) {
      const view = getMessage(doc, id)!
      expect(view.deleted).toBeDefined()
      expect(isExpired(doc, view, 0)).toBe(true)
    }
    const replica = replicaOf(doc)
    expect(isExpired(replica, getMessage(replica, last.id)!, 0)).toBe(true)
    // Before, the preview said "deleted" for a message readers never saw deleted.
    expect(inboxEntryFor(replica, alice)?.lastMessage).toMatchObject({ text: "m19", deleted: false })
    // A deletion by its author is still shown as one.
    const plain = sendMessage(replica, bob, { body: "plain" })
    deleteMessage(replica, bob, plain.id)
    expect(isExpired(replica, getMessage(replica, plain.id)!, Date.now())).toBe(false)
    expect(inboxEntryFor(replica, alice)?.lastMessage).toMatchObject({ id: plain.id, deleted: true })
  })
})
