import {
  type ConversationId,
  createConversation,
  deleteConversation,
  deleteMessage,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { chargedWorkIn } from "../src/charged-work.js"

const alice = "alice" as UserId

/** The update `change` makes to a replica of `doc`. */
function updateOf(doc: Y.Doc, change: (d: Y.Doc) => void): Uint8Array {
  const replica = new Y.Doc()
  Y.applyUpdate(replica, Y.encodeStateAsUpdate(doc))
  const before = Y.encodeStateVector(replica)
  change(replica)
  return Y.encodeStateAsUpdate(replica, before)
}

/** `update` with every one-byte key length 1 before `key` written in two bytes (lib0 reads both alike). */
function longLengths(update: Uint8Array, key: string): Uint8Array {
  const out: number[] = []
  for (let i = 0; i < update.length; i++) {
    if (update[i] === 1 && update[i + 1] === key.charCodeAt(0)) out.push(0x81, 0x00)
    else out.push(update[i]!)
  }
  return Uint8Array.from(out)
}

describe("the work an update is charged for later", () => {
  it("counts deletions and fleeting sends from decoded values, however their keys' lengths are written", () => {
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: "g~charged" as ConversationId, participants: [] })
    const sent = sendMessage(doc, alice, { body: "to delete" })
    const deletion = updateOf(doc, (d) => deleteMessage(d, alice, sent.id))
    const fleeting = updateOf(doc, (d) => {
      for (let i = 0; i < 3; i++) sendMessage(d, alice, { body: `f${i}`, priority: "fleeting" })
    })
    expect(chargedWorkIn(deletion)).toMatchObject({ deletions: 1, fleeting: 0 })
    expect(chargedWorkIn(fleeting)).toMatchObject({ deletions: 0, fleeting: 3 })
    // Before: a byte search for the key, which an outside probe escaped this way (1,800 deletions for 600).
    const longDeletion = longLengths(deletion, "x")
    const longFleeting = longLengths(fleeting, "p")
    expect(longDeletion.length).toBeGreaterThan(deletion.length)
    expect(Y.decodeUpdate(longDeletion)).toEqual(Y.decodeUpdate(deletion))
    expect(chargedWorkIn(longDeletion)).toMatchObject({ deletions: 1 })
    expect(chargedWorkIn(longFleeting)).toMatchObject({ fleeting: 3 })
  })

  it("tells a conversation's deletion, which purges every member's inbox", () => {
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: "g~charged2" as ConversationId, participants: [] })
    expect(chargedWorkIn(updateOf(doc, (d) => deleteConversation(d, alice)))).toMatchObject({
      deletesConversation: true,
    })
    expect(chargedWorkIn(updateOf(doc, (d) => sendMessage(d, alice, { body: "deletedAt" })))).toMatchObject({
      deletesConversation: false,
    })
  })
})
