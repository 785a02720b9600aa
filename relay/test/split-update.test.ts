import {
  createConversation,
  DEFAULT_UPDATE_PART_LIMITS,
  deleteMessage,
  editMessage,
  encodeStoredRecord,
  getConversation,
  Limits,
  listMessages,
  type MessageId,
  newConversationId,
  newMessageId,
  react,
  sendMessage,
  splitUpdate,
  typesOf,
  type UserId,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { createLogger } from "../src/log.js"
import { RelayMetrics } from "../src/metrics.js"
import { AuthorizationPolicy } from "../src/policy/authorization-policy.js"
import { MemoryClientBindingStore } from "../src/policy/client-bindings.js"
import { RelayCore } from "../src/relay-core.js"
import { MemoryStorage } from "../src/storage/memory.js"
import { checkUpdateCost, DEFAULT_UPDATE_COST_LIMITS } from "../src/update-cost.js"
import { FakeSession, until, updateFrame } from "./helpers/core-session.js"
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

  it("keeps parts within the element limit: voice messages whose metadata holds a waveform, sent one by one and in one burst", () => {
    const seed = seedConversation(newConversationId(), 30)
    const device = relayDoc(seed.stored)
    device.clientID = 0x23000000
    const waveform = Array.from({ length: 100 }, (_, i) => (i * 37) % 64)
    for (let i = 0; i < 200; i++) sendMessage(device, alice, { body: `voice ${i}`, metadata: { waveform } })
    // One insert in one transaction: a single item of 300 values, each holding the waveform's 100 numbers.
    typesOf(device).messages.push(
      Array.from({ length: 300 }, (_, i) =>
        encodeStoredRecord({
          id: newMessageId(),
          author: alice,
          body: `burst ${i}`,
          createdAt: 1,
          metadata: { waveform },
        }),
      ),
    )
    const relay = relayDoc(seed.stored)
    const whole = Y.encodeStateAsUpdate(device, Y.encodeStateVector(relay))
    // Within the value and struct caps, yet whole it holds more than the relay decodes for one update.
    expect(() => checkUpdateCost(relay, whole, DEFAULT_UPDATE_COST_LIMITS)).toThrow(
      expect.objectContaining({ rule: "update-elements" }),
    )
    const parts = splitUpdate(whole)
    expect(parts.length).toBeGreaterThanOrEqual(4)
    applyParts(relay, parts)
    expectSameDocument(relay, device)
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

  it("encodes a long backlog about once while splitting it, not once more for every part it cuts", () => {
    const seed = seedConversation(newConversationId(), 30)
    const device = relayDoc(seed.stored)
    device.clientID = 0x24000000
    // Sent one by one offline: Yjs merges them into one item, which the split cuts part by part.
    for (let i = 0; i < 300; i++) sendMessage(device, alice, { body: `${i} ${"x".repeat(2_000)}` })
    const relay = relayDoc(seed.stored)
    const whole = Y.encodeStateAsUpdate(device, Y.encodeStateVector(relay))
    let written = 0
    const write = Y.Item.prototype.write
    Y.Item.prototype.write = function (this: Y.Item, encoder: Y.UpdateEncoderV1, offset: number) {
      const before = encoding.length(encoder.restEncoder)
      write.call(this, encoder, offset)
      written += encoding.length(encoder.restEncoder) - before
    }
    let parts: Uint8Array[]
    try {
      parts = splitUpdate(whole, { ...DEFAULT_UPDATE_PART_LIMITS, maxBytes: 60_000 })
    } finally {
      Y.Item.prototype.write = write
    }
    expect(parts.length).toBeGreaterThanOrEqual(10)
    for (const part of parts) expect(part.length).toBeLessThan(60_000)
    // The parts themselves are one encoding of the backlog; measuring them must not cost another per cut.
    expect(written).toBeLessThan(2 * whole.length)
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

  it("sends a marker's move and a message's deletion in the part that holds its new value or placeholder: the relay's rules accept every part", async () => {
    const id = newConversationId()
    const seed = seedConversation(id, 300)
    const storage = new MemoryStorage()
    await storage.append(id, [seed.stored])
    const core = new RelayCore({
      storage,
      log: createLogger("silent"),
      metrics: new RelayMetrics({ defaultMetrics: false }),
      extensions: [new AuthorizationPolicy(new MemoryClientBindingStore())],
      limits: { userUpdatesPerSecond: 0 },
    })
    try {
      const session = new FakeSession({ kind: "user", user: alice })
      const connection = await core.connect(id, session)
      const device = relayDoc(seed.stored)
      const t = typesOf(device)
      // The relay holds alice's markers (and a message of hers) from before she went offline.
      const mine: MessageId[] = []
      let before = Y.encodeStateVector(device)
      mine.push(sendMessage(device, alice, { body: "online" }).id)
      t.read.set(alice, 10)
      t.delivered.set(alice, 10)
      connection.receive(updateFrame(Y.encodeStateAsUpdate(device, before)))
      await until(() => session.parley().length > 0)
      expect(session.parley()[0]).toMatchObject({ type: "saved" })
      // An offline period: 600 messages, some deleted, the markers moved now and then and once more at the end.
      before = Y.encodeStateVector(device)
      for (let i = 0; i < 600; i++) {
        mine.push(sendMessage(device, alice, { body: `offline ${i}` }).id)
        if (i % 40 === 39) deleteMessage(device, alice, mine[i - 20]!)
        if (i % 100 === 99) t.read.set(alice, 10 + i / 10)
      }
      t.read.set(alice, 290)
      t.delivered.set(alice, 300)
      const parts = splitUpdate(Y.encodeStateAsUpdate(device, before), undefined, device)
      expect(parts.length).toBeGreaterThanOrEqual(2)
      for (const [n, part] of parts.entries()) {
        connection.receive(updateFrame(part))
        await until(() => session.parley().length > n + 1)
        expect(
          session.parley()[n + 1],
          `part ${n + 1} of ${parts.length}: ${JSON.stringify(session.parley()[n + 1])}`,
        ).toMatchObject({ type: "saved" })
      }
      const relay = await core.read(id, (doc: Y.Doc) => relayDoc(Y.encodeStateAsUpdate(doc)))
      expect(typesOf(relay).read.get(alice)).toBe(typesOf(device).read.get(alice))
      expect(typesOf(relay).delivered.get(alice)).toBe(typesOf(device).delivered.get(alice))
      // Every message there, the deleted ones as placeholders (the relay numbered them: compare as sets).
      const state = (doc: Y.Doc) =>
        listMessages(doc, { last: 2_000 })
          .filter((m) => mine.includes(m.id))
          .map((m) => `${m.id} ${m.deleted ? "deleted" : m.body}`)
          .sort()
      expect(state(relay)).toEqual(state(device))
      expect(state(relay).filter((m) => m.endsWith("deleted"))).toHaveLength(15)
    } finally {
      await core.close()
    }
  })

  it("sends the creation of a group of the most participants in parts the relay's rules accept: the creation first, then the members", async () => {
    const id = newConversationId()
    const core = new RelayCore({
      storage: new MemoryStorage(),
      log: createLogger("silent"),
      metrics: new RelayMetrics({ defaultMetrics: false }),
      extensions: [new AuthorizationPolicy(new MemoryClientBindingStore())],
      limits: { userUpdatesPerSecond: 0, userParticipantsPerMinute: 0 },
    })
    try {
      const session = new FakeSession({ kind: "user", user: alice })
      const connection = await core.connect(id, session)
      const device = new Y.Doc()
      const others = Array.from({ length: Limits.participants - 1 }, (_, i) => `member${i}` as UserId)
      createConversation(device, alice, { kind: "group", id, participants: others, title: "everyone" })
      const parts = splitUpdate(Y.encodeStateAsUpdate(device), undefined, device)
      expect(parts.length).toBeGreaterThanOrEqual(3)
      for (const [n, part] of parts.entries()) {
        connection.receive(updateFrame(part))
        await until(() => session.parley().length > n)
        expect(
          session.parley()[n],
          `part ${n + 1} of ${parts.length}: ${JSON.stringify(session.parley()[n])}`,
        ).toMatchObject({ type: "saved" })
      }
      const relay = await core.read(id, (doc: Y.Doc) => relayDoc(Y.encodeStateAsUpdate(doc)))
      expect(getConversation(relay)).toEqual(getConversation(device))
      expect(typesOf(relay).participants.size).toBe(Limits.participants)
      expect(typesOf(relay).participants.get(alice)).toMatchObject({ role: "owner", addedBy: alice })
    } finally {
      await core.close()
    }
  })
})
