import * as prng from "lib0/prng"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  allMarkers,
  assignSequenceNumbers,
  deleteMessage,
  getMessage,
  lastMessage,
  lastSequence,
  listMessages,
  markDelivered,
  markRead,
  messageCount,
  messageIndex,
  nextFromDocument,
  SEQUENCE_RUN_LENGTH,
  sendMessage,
  typesOf,
  type UserId,
  unreadCount,
  unsequencedMessages,
  writeSequenceNumbers,
} from "../src/index.js"
import { alice, bob, carol, groupDoc, replicaOf, sync } from "./helpers.js"

function conversationWith(count: number) {
  const doc = groupDoc()
  const ids = Array.from(
    { length: count },
    (_, i) => sendMessage(doc, i % 2 ? bob : alice, { body: `m${i + 1}` }).id,
  )
  assignSequenceNumbers(doc, nextFromDocument(doc))
  return { doc, ids }
}
const bodies = (views: { body: string }[]) => views.map((m) => m.body)

describe("sequence numbers and canonical order", () => {
  it("numbers unsequenced messages in order and only once", () => {
    const { doc, ids } = conversationWith(3)
    expect(ids.map((id) => getMessage(doc, id)?.seq)).toEqual([1, 2, 3])
    expect(assignSequenceNumbers(doc, nextFromDocument(doc))).toEqual([])
    const more = sendMessage(doc, carol, { body: "m4" })
    expect(unsequencedMessages(doc)).toEqual([more.id])
    expect(assignSequenceNumbers(doc, () => 10, [more.id])).toEqual([more.id])
    expect(getMessage(doc, more.id)?.seq).toBe(10)
    expect(lastSequence(doc)).toBe(10)
  })

  it("orders by sequence, not array position: late offline messages land after what the relay ordered", () => {
    const relay = groupDoc()
    const offline = replicaOf(relay)
    const early = sendMessage(offline, bob, { body: "written offline first" }, { now: 1 })
    sendMessage(relay, alice, { body: "a1" }, { now: 2 })
    sendMessage(relay, alice, { body: "a2" }, { now: 3 })
    assignSequenceNumbers(relay, nextFromDocument(relay))
    sync(relay, offline)
    // Before the relay sequences it, the offline message sorts after sequenced ones on both replicas.
    expect(bodies(listMessages(offline, { last: 10 }))).toEqual(["a1", "a2", "written offline first"])
    assignSequenceNumbers(relay, nextFromDocument(relay))
    sync(relay, offline)
    expect(getMessage(offline, early.id)?.seq).toBe(3)
    expect(bodies(listMessages(offline, { last: 10 }))).toEqual(bodies(listMessages(relay, { last: 10 })))
  })

  it("keeps the relay's order runs short and its client ids to two, however many messages it numbers", () => {
    const relay = groupDoc()
    const device = replicaOf(relay)
    const clientsBefore = new Set(relay.store.clients.keys())
    const total = SEQUENCE_RUN_LENGTH * 3 + 5
    for (let i = 0; i < total; i++) {
      const sent = sendMessage(device, bob, { body: `m${i}` })
      Y.applyUpdate(relay, Y.encodeStateAsUpdate(device, Y.encodeStateVector(relay)))
      assignSequenceNumbers(relay, nextFromDocument(relay), [sent.id])
    }
    const writers = [...relay.store.clients.keys()].filter(
      (client) => !clientsBefore.has(client) && client !== device.clientID,
    )
    expect(writers).toHaveLength(1) // the relay's first id wrote before the device joined
    const orderWriters = new Set<number>()
    let longest = 0
    for (let item = typesOf(relay).order._start; item; item = item.right) {
      orderWriters.add(item.id.client)
      longest = Math.max(longest, item.length)
    }
    expect(orderWriters.size).toBe(2)
    expect(longest).toBeLessThanOrEqual(SEQUENCE_RUN_LENGTH)
    expect(lastSequence(relay)).toBe(total)
    const replica = replicaOf(relay)
    expect(listMessages(replica, { last: 2 }).map((m) => m.seq)).toEqual([total - 1, total])
  })

  it("numbers an offline burst in the order its writer put it, deletion placeholders in place", () => {
    const relay = groupDoc()
    const offline = replicaOf(relay)
    const before = Y.encodeStateVector(offline)
    const first = sendMessage(offline, bob, { body: "first" })
    const second = sendMessage(offline, bob, { body: "second" })
    const third = sendMessage(offline, bob, { body: "third" })
    deleteMessage(offline, bob, second.id)
    expect(listMessages(relay, { last: 3 })).toEqual([]) // the relay's index exists before the burst arrives
    Y.applyUpdate(relay, Y.encodeStateAsUpdate(offline, before))
    assignSequenceNumbers(relay, nextFromDocument(relay), [third.id, second.id, first.id])
    expect([first, second, third].map((m) => getMessage(relay, m.id)?.seq)).toEqual([1, 2, 3])
    expect(listMessages(relay, { last: 3 }).map((m) => m.type)).toEqual(["text", "deleted", "text"])
  })

  it("keeps the lowest number when a message was numbered twice", () => {
    const { doc, ids } = conversationWith(2)
    writeSequenceNumbers(doc, 7, [ids[0]!])
    expect(getMessage(doc, ids[0]!)?.seq).toBe(1)
  })
})

describe("windows", () => {
  it("reads the last N, before, after and around a message", () => {
    const { doc, ids } = conversationWith(10)
    expect(bodies(listMessages(doc, { last: 3 }))).toEqual(["m8", "m9", "m10"])
    expect(bodies(listMessages(doc, { before: ids[4]!, limit: 2 }))).toEqual(["m3", "m4"])
    expect(bodies(listMessages(doc, { after: ids[7]!, limit: 5 }))).toEqual(["m9", "m10"])
    expect(bodies(listMessages(doc, { around: ids[4]!, limit: 3 }))).toEqual(["m4", "m5", "m6"])
    expect(bodies(listMessages(doc, { around: ids[0]!, limit: 3 }))).toEqual(["m1", "m2", "m3"])
    expect(bodies(listMessages(doc, { around: ids[9]!, limit: 4 }))).toEqual(["m7", "m8", "m9", "m10"])
    expect(listMessages(doc, { before: "unknown-id-123" as never, limit: 3 })).toEqual([])
    expect(lastMessage(doc)?.body).toBe("m10")
    expect(messageCount(doc)).toBe(10)
  })

  it("shows deleted messages as placeholders in place", () => {
    const { doc, ids } = conversationWith(3)
    deleteMessage(doc, bob, ids[1]!)
    expect(listMessages(doc, { last: 3 }).map((m) => m.type)).toEqual(["text", "deleted", "text"])
    expect(getMessage(doc, ids[1]!)?.seq).toBe(2)
  })
})

describe("unread counts and markers", () => {
  it("counts messages above my marker that I did not write, deleted ones excluded", () => {
    const { doc, ids } = conversationWith(6) // alice wrote 1,3,5; bob 2,4,6
    expect(unreadCount(doc, alice)).toBe(3)
    expect(unreadCount(doc, carol)).toBe(6)
    markRead(doc, carol, ids[2]!)
    expect(unreadCount(doc, carol)).toBe(3)
    deleteMessage(doc, bob, ids[5]!)
    expect(unreadCount(doc, carol)).toBe(2)
  })

  it("counts an offline device's late message as unread even behind my marker position", () => {
    const relay = groupDoc()
    const offline = replicaOf(relay)
    sendMessage(offline, bob, { body: "late" })
    sendMessage(relay, alice, { body: "on time" })
    assignSequenceNumbers(relay, nextFromDocument(relay))
    markRead(relay, carol)
    expect(unreadCount(relay, carol)).toBe(0)
    sync(relay, offline)
    assignSequenceNumbers(relay, nextFromDocument(relay))
    expect(unreadCount(relay, carol)).toBe(1)
  })

  it("counts like a walk over every message would, through random sends, deletions, late numbering and reads", () => {
    const users = [alice, bob, carol]
    for (let seed = 1; seed <= 10; seed++) {
      const gen = prng.create(seed)
      const relay = groupDoc()
      const devices = users.map(() => replicaOf(relay))
      const walk = (doc: Y.Doc, user: UserId) => {
        const index = messageIndex(doc)
        const marker = typesOf(doc).read.get(user) ?? 0
        let count = 0
        for (const [id, record] of index.records) {
          const seq = index.seqOf.get(id)
          if (record.author !== user && !index.deleted.has(id) && (seq === undefined || seq > marker)) count++
        }
        return count
      }
      for (let step = 0; step < 300; step++) {
        const at = prng.int32(gen, 0, users.length - 1)
        const user = users[at]!
        const device = devices[at]!
        const roll = prng.int32(gen, 0, 9)
        if (roll < 5) sendMessage(device, user, { body: `m${step}` })
        else if (roll < 6) {
          const own = [...messageIndex(device).records.values()].filter((r) => r.author === user)
          if (own.length > 0) deleteMessage(device, user, prng.oneOf(gen, own).id)
        } else if (roll < 8) {
          // The relay hears from this device (in either direction) and numbers what it got.
          sync(relay, device)
          if (prng.bool(gen)) assignSequenceNumbers(relay, nextFromDocument(relay))
        } else {
          sync(relay, device)
          markRead(device, user, lastSequence(device))
        }
        for (const doc of [relay, device]) {
          for (const u of users) expect(unreadCount(doc, u), `seed ${seed} step ${step}`).toBe(walk(doc, u))
        }
      }
    }
  })

  it("lists every user's markers for seen-by displays", () => {
    const { doc } = conversationWith(4)
    markRead(doc, bob, 2)
    markDelivered(doc, carol, 4)
    expect(allMarkers(doc)).toEqual({ bob: { read: 2, delivered: 2 }, carol: { read: 0, delivered: 4 } })
  })

  it("keeps the index current across replicas and transactions", () => {
    const { doc } = conversationWith(2)
    const other = new Y.Doc()
    expect(messageCount(other)).toBe(0)
    Y.applyUpdate(other, Y.encodeStateAsUpdate(doc))
    expect(messageCount(other)).toBe(2)
    expect(typesOf(other).order.length).toBe(1)
  })
})
