import {
  createConversation,
  decodePin,
  deleteMessage,
  ErrorCode,
  encodeTombstone,
  getMessage,
  newConversationId,
  pinnedMessages,
  Rule,
  sealedSegments,
  sendMessage,
  typesOf,
  type UserId,
  unpinMessage,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { MemoryBackend } from "../../src/backend/memory.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"
import { TestClient } from "../helpers/clients.js"
import { signToken } from "../helpers/relay-process.js"

const SECRET = "pins-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

async function relay(): Promise<RunningRelay> {
  const r = await startRelay({
    backend: new MemoryBackend(),
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    history: { segmentSize: 10, keepLive: 5 },
  })
  relays.push(r)
  return r
}

async function joinAs(r: RunningRelay, user: UserId, id: string): Promise<TestClient> {
  const client = new TestClient(r.url, id, await signToken(SECRET, user))
  clients.push(client)
  await client.synced()
  return client
}

/** The update `change` makes to `doc`. */
function captured(doc: Y.Doc, change: () => void): Uint8Array {
  const before = Y.encodeStateVector(doc)
  change()
  return Y.encodeStateAsUpdate(doc, before)
}

describe("pinned messages on the relay", () => {
  it("refuses a member unpinning another's message with a typed error, and takes the author's unpin", async () => {
    const r = await relay()
    const id = newConversationId()
    const a = await joinAs(r, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob, carol] })
    const b = await joinAs(r, bob, id)
    const sticky = sendMessage(b.doc, bob, { body: "Standup at 10", priority: "sticky" })
    await b.allSaved()
    const c = await joinAs(r, carol, id)
    expect(pinnedMessages(c.doc).map((m) => m.id)).toEqual([sticky.id])

    // Carol (a member) writes the unpin by hand, past the SDK's check: the relay refuses it.
    const forged = captured(c.doc, () => typesOf(c.doc).unpinned.set(sticky.id, { by: carol, at: 1 }))
    c.sendUpdate(forged)
    await c.until(() => c.errors.length > 0)
    expect(c.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.unpinAuthorOrAdmin })

    unpinMessage(b.doc, bob, sticky.id)
    await b.allSaved()
    await a.until(() => pinnedMessages(a.doc).length === 0)
  })

  it("keeps a sealed sticky message listed for a device that never loads its segment; an admin unpins it", async () => {
    const r = await relay()
    const id = newConversationId()
    const a = await joinAs(r, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    const sticky = sendMessage(a.doc, alice, { body: "House rules", priority: "sticky" })
    await a.allSaved()
    for (let i = 0; i < 20; i++) {
      sendMessage(a.doc, alice, { body: `filler ${i}` })
      await a.allSaved()
    }
    await a.until(() => sealedSegments(a.doc).length >= 1)
    const b = await joinAs(r, bob, id)
    expect(typesOf(b.doc).messages.toArray().length).toBeLessThan(21)
    expect(pinnedMessages(b.doc).map((m) => [m.id, m.body])).toEqual([[sticky.id, "House rules"]])

    // Bob may not remove the relay's copy, nor unpin alice's message.
    expect(() => unpinMessage(b.doc, bob, sticky.id)).toThrow(
      expect.objectContaining({ rule: Rule.unpinAuthorOrAdmin }),
    )
    const forged = captured(b.doc, () => typesOf(b.doc).pins.delete(sticky.id))
    b.sendUpdate(forged)
    await b.until(() => b.errors.length > 0)
    expect(b.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN })

    unpinMessage(a.doc, alice, sticky.id)
    await a.allSaved()
    const b2 = await joinAs(r, bob, id)
    expect(pinnedMessages(b2.doc)).toEqual([])
    expect(typesOf(b2.doc).pins.size).toBe(0)
  })

  it("drops the pinned copy of a sealed message deleted by a device that left it in place", async () => {
    const r = await relay()
    const id = newConversationId()
    const a = await joinAs(r, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    const sticky = sendMessage(a.doc, alice, { body: "Secret-Pinned-Text", priority: "sticky" })
    await a.allSaved()
    for (let i = 0; i < 20; i++) {
      sendMessage(a.doc, alice, { body: `filler ${i}` })
      await a.allSaved()
    }
    await a.until(() => typesOf(a.doc).pins.has(sticky.id))
    const copy = decodePin(typesOf(a.doc).pins.get(sticky.id))!
    // A tombstone alone (as an older SDK writes it), the copy with the text left in place.
    a.doc.transact(() =>
      typesOf(a.doc).tombstones.set(
        sticky.id,
        encodeTombstone({ author: alice, seq: copy.seq, deletedAt: 1, deletedBy: alice }),
      ),
    )
    await a.allSaved()
    await a.until(() => !typesOf(a.doc).pins.has(sticky.id))
    const b = await joinAs(r, bob, id)
    expect(pinnedMessages(b.doc)).toEqual([])
    expect(JSON.stringify(typesOf(b.doc).pins.toJSON())).not.toContain("Secret-Pinned-Text")
  })

  it("takes an unpin and a deletion made offline together, sent as one update", async () => {
    const r = await relay()
    const id = newConversationId()
    const b = await joinAs(r, bob, id)
    createConversation(b.doc, bob, { kind: "group", id, participants: [alice] })
    const sticky = sendMessage(b.doc, bob, { body: "temporary pin", priority: "sticky" })
    await b.allSaved()
    const offline = new Y.Doc()
    Y.applyUpdate(offline, Y.encodeStateAsUpdate(b.doc))
    const update = captured(offline, () => {
      unpinMessage(offline, bob, sticky.id)
      deleteMessage(offline, bob, sticky.id)
    })
    const a = await joinAs(r, alice, id)
    expect(pinnedMessages(a.doc)).toHaveLength(1)
    b.sendUpdate(update)
    await a.until(() => typesOf(a.doc).unpinned.has(sticky.id) || b.errors.length > 0)
    expect(b.errors).toEqual([])
    expect(pinnedMessages(a.doc)).toEqual([])
    expect(getMessage(a.doc, sticky.id)?.deleted?.by).toBe(bob)
  })
})
