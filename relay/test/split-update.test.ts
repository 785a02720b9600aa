import {
  DEFAULT_UPDATE_PART_LIMITS,
  deleteMessage,
  editMessage,
  encodeStoredRecord,
  listMessages,
  type MessageId,
  newConversationId,
  newMessageId,
  react,
  sendMessage,
  splitUpdate,
  typesOf,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { checkUpdateCost, DEFAULT_UPDATE_COST_LIMITS } from "../src/update-cost.js"
import { alice, seedConversation } from "./helpers/frame-shapes.js"

type Pending = { store: { pendingStructs: unknown; pendingDs: unknown } }

/** The relay's document as the seed stored it. */
function relayDoc(stored: Uint8Array): Y.Doc {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, stored)
  return doc
}

/** Applies each part as the relay would: cost check first, and nothing may be left pending after it. */
function applyParts(relay: Y.Doc, parts: readonly Uint8Array[]): void {
  for (const part of parts) {
    checkUpdateCost(relay, part, DEFAULT_UPDATE_COST_LIMITS)
    Y.applyUpdate(relay, part)
    expect((relay as unknown as Pending).store.pendingStructs).toBeNull()
    expect((relay as unknown as Pending).store.pendingDs).toBeNull()
  }
}

/** Same state vector, delete set and content of every root type. */
function expectSameDocument(a: Y.Doc, b: Y.Doc): void {
  expect(Y.equalSnapshots(Y.snapshot(a), Y.snapshot(b))).toBe(true)
  // Root types are known to a document once read: read every one on both.
  typesOf(a)
  typesOf(b)
  expect([...a.share.keys()].sort()).toEqual([...b.share.keys()].sort())
  for (const key of b.share.keys()) expect(a.share.get(key)!.toJSON()).toEqual(b.share.get(key)!.toJSON())
}

describe("splitting a long offline period's update into parts the relay accepts", () => {
  it("splits 2,600 messages with read markers, reactions, edits and deletions over two sessions", () => {
    const seed = seedConversation(newConversationId(), 300)
    const device = relayDoc(seed.before)
    const others = listMessages(device, { last: 300 }).filter((m) => m.author !== alice)
    const mine: MessageId[] = []
    for (let session = 0; session < 2; session++) {
      device.clientID = 0x20000000 + session
      for (let i = 0; i < 1_300; i++) {
        mine.push(sendMessage(device, alice, { body: `offline ${session}.${i}` }).id)
        if (i % 4 === 0) react(device, alice, others[i % others.length]!.id, "👍")
        if (i % 7 === 0) editMessage(device, alice, mine[mine.length - 1]!, `edited ${session}.${i}`)
        if (i % 50 === 0) deleteMessage(device, alice, mine[mine.length - 2] ?? mine[0]!)
        typesOf(device).read.set(alice, i + 1)
      }
    }
    const relay = relayDoc(seed.stored)
    const whole = Y.encodeStateAsUpdate(device, Y.encodeStateVector(relay))
    // Sent whole, the relay refuses it, as it would on every reconnect.
    expect(() => checkUpdateCost(relay, whole, DEFAULT_UPDATE_COST_LIMITS)).toThrow(/at most/)

    const parts = splitUpdate(whole)
    expect(parts.length).toBeGreaterThan(3)
    applyParts(relay, parts)

    const expected = relayDoc(seed.stored)
    Y.applyUpdate(expected, whole)
    expectSameDocument(relay, expected)
    const held = new Set(listMessages(relay, { last: 3_000 }).map((m) => m.id))
    expect(mine.filter((id) => !held.has(id))).toEqual([])
  })

  it("cuts one merged item of two and a half parts' values into parts within the value limit", () => {
    const seed = seedConversation(newConversationId(), 30)
    const device = relayDoc(seed.stored)
    device.clientID = 0x21000000
    const records = Array.from({ length: DEFAULT_UPDATE_PART_LIMITS.maxValues * 2.5 }, (_, i) =>
      encodeStoredRecord({ id: newMessageId(), author: alice, body: `burst ${i}`, createdAt: 1 }),
    )
    // One insert in one transaction: Yjs keeps it as a single item of all those values.
    typesOf(device).messages.push(records)
    const relay = relayDoc(seed.stored)
    const whole = Y.encodeStateAsUpdate(device, Y.encodeStateVector(relay))
    expect(Y.decodeUpdate(whole).structs).toHaveLength(1)

    const parts = splitUpdate(whole)
    expect(parts).toHaveLength(3)
    for (const part of parts)
      expect(Y.decodeUpdate(part).structs.reduce((n, s) => n + s.length, 0)).toBeLessThanOrEqual(
        DEFAULT_UPDATE_PART_LIMITS.maxValues,
      )
    applyParts(relay, parts)
    expect(typesOf(relay).messages.toJSON()).toEqual(typesOf(device).messages.toJSON())
  })

  it("keeps parts under the byte limit", () => {
    const seed = seedConversation(newConversationId(), 30)
    const device = relayDoc(seed.stored)
    device.clientID = 0x22000000
    for (let i = 0; i < 6; i++) sendMessage(device, alice, { body: `${i} ${"x".repeat(15_000)}` })
    const relay = relayDoc(seed.stored)
    const whole = Y.encodeStateAsUpdate(device, Y.encodeStateVector(relay))
    const parts = splitUpdate(whole, { ...DEFAULT_UPDATE_PART_LIMITS, maxBytes: 40_000 })
    expect(parts).toHaveLength(3)
    for (const part of parts) expect(part.length).toBeLessThan(40_000)
    applyParts(relay, parts)
    expectSameDocument(relay, device)
  })

  it("returns an update within the limits as it is", () => {
    const seed = seedConversation(newConversationId(), 30)
    const device = relayDoc(seed.stored)
    for (let i = 0; i < 100; i++) sendMessage(device, alice, { body: `short ${i}` })
    const whole = Y.encodeStateAsUpdate(device, Y.encodeStateVector(relayDoc(seed.stored)))
    const parts = splitUpdate(whole)
    expect(parts).toEqual([whole])
    expect(parts[0]).toBe(whole)
  })
})
