import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  editMessage,
  HistoryDefaults,
  type MessageId,
  nextFromDocument,
  react,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { epochValueBytes, sealGarbageBound } from "../src/history/epoch.js"
import { applySeal, planSeal } from "../src/history/sealing.js"

const users = ["alice", "bob", "carol", "dave-with-a-longer-user-id"] as UserId[]
const id = "g~epochgarbage000" as ConversationId
const garbageOf = (doc: Y.Doc) => Y.encodeStateAsUpdate(doc).length - epochValueBytes(doc)

describe("the garbage a seal leaves", () => {
  it("is at most sealGarbageBound of its plan, whatever the messages carry, and within three times it with overlays", () => {
    const sealing = { ...HistoryDefaults, segmentSize: 60, keepLive: 20 }
    for (const [reactions, edits] of [
      [0, 0],
      [1, 0],
      [3, 1],
    ] as const) {
      const doc = new Y.Doc()
      createConversation(doc, users[0]!, { kind: "group", id, participants: users })
      // Two devices in turn (two client ids), as a conversation's items interleave.
      const devices = [new Y.Doc(), new Y.Doc()]
      for (const device of devices) Y.applyUpdate(device, Y.encodeStateAsUpdate(doc))
      for (let round = 0; round < 8; round++) {
        const device = devices[round % 2]!
        Y.applyUpdate(device, Y.encodeStateAsUpdate(doc, Y.encodeStateVector(device)))
        const before = Y.encodeStateVector(device)
        const sent: MessageId[] = []
        for (let i = 0; i < 10; i++) {
          const author = users[(round + i) % users.length]!
          const message = sendMessage(device, author, { body: `round ${round} message ${i}` }).id
          sent.push(message)
          for (let r = 0; r < reactions; r++) react(device, users[r]!, message, ["👍", "🎉", "❤️"][r]!)
          if (edits) editMessage(device, author, message, `round ${round} message ${i}, edited`)
        }
        Y.applyUpdate(doc, Y.encodeStateAsUpdate(device, before))
        assignSequenceNumbers(doc, nextFromDocument(doc), sent)
      }
      const plan = planSeal(doc, id, sealing)
      expect(plan).toBeDefined()
      const before = garbageOf(doc)
      applySeal(doc, plan!, null)
      const added = garbageOf(doc) - before
      const bound = sealGarbageBound([plan!])
      expect(added).toBeGreaterThan(0)
      expect(added).toBeLessThanOrEqual(bound)
      // Folded overlays are most of a seal's garbage: there the bound stays within a few times it, so
      // that the check after a seal is not due at every seal.
      if (reactions > 0) expect(bound).toBeLessThan(3 * added)
    }
  })
})
