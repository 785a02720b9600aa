import {
  assignSequenceNumbers,
  baselineSource,
  type ConversationId,
  checkEpochRecord,
  createConversation,
  endOfEpoch,
  epochBaseline,
  epochCount,
  listMessages,
  nextFromDocument,
  rebasePendingWork,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { startEpoch } from "../src/history/epoch.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const id = "g~epochrecords000" as ConversationId

/** A copy of `doc`, as a device keeps its replica. */
const copyOf = (doc: Y.Doc) => {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  return copy
}

/** `user` writes `count` messages on a device of its own (a new client id) and the relay takes them. */
function session(relay: Y.Doc, user: UserId, count: number): void {
  const device = copyOf(relay)
  const before = Y.encodeStateVector(device)
  for (let i = 0; i < count; i++) sendMessage(device, user, { body: `${user} ${i}` })
  Y.applyUpdate(relay, Y.encodeStateAsUpdate(device, before))
  assignSequenceNumbers(relay, nextFromDocument(relay))
}

const epochOfRelayWithRecords = (doc: Y.Doc) =>
  startEpoch(doc, endOfEpoch(doc, id, Y.decodeStateVector(Y.encodeStateVector(doc))))

describe("epoch records across an upgrade from relays that kept every client in epochFrom", () => {
  it("rebases a replica of the first live document or of any earlier epoch with record 0, its pending work once", () => {
    const first = new Y.Doc()
    createConversation(first, alice, { kind: "group", id, participants: [bob] })
    session(first, alice, 2)
    // Alice's device of the first live document, with a message the relay never got.
    const oldest = copyOf(first)
    const pending = sendMessage(oldest, alice, { body: "from the first live document" })
    session(first, bob, 2)

    // Two epochs of a relay before records: epochFrom accumulates, no count.
    const legacyA = startEpoch(first)
    session(legacyA, bob, 2)
    const ofA = copyOf(legacyA)
    const pendingOfA = sendMessage(ofA, alice, { body: "from legacy epoch A" })
    session(legacyA, alice, 2)
    const legacyB = startEpoch(legacyA)
    expect(epochCount(legacyB)).toBe(0)
    session(legacyB, bob, 2)

    // The upgraded relay: two epochs with records.
    const withRecords = epochOfRelayWithRecords(legacyB)
    const record0 = endOfEpoch(legacyB, id, Y.decodeStateVector(Y.encodeStateVector(legacyB)))
    expect(epochCount(withRecords)).toBe(1)
    session(withRecords, bob, 2)
    const current = epochOfRelayWithRecords(withRecords)
    expect(epochCount(current)).toBe(2)
    // The live document names only the previous epoch's clients, not the legacy ones.
    expect(epochBaseline(current).size).toBeLessThan(epochBaseline(withRecords).size)

    for (const [replica, message] of [
      [oldest, pending],
      [ofA, pendingOfA],
    ] as const) {
      expect(baselineSource(replica, current)).toEqual({ record: 0 })
      const baseline = checkEpochRecord(record0, replica, id, 0)
      const onto = copyOf(current)
      const result = rebasePendingWork(replica, onto, alice, baseline)
      expect(result.failed).toEqual([])
      expect(result.reapplied).toEqual([expect.objectContaining({ kind: "message.send", id: message.id })])
      const bodies = listMessages(onto, { last: 100 }).map((m) => m.body)
      expect(bodies.filter((b) => b === message.body)).toHaveLength(1)
    }
  })
})
