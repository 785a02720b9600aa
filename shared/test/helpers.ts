import * as Y from "yjs"
import { type ConversationId, createConversation, type UserId } from "../src/index.js"

export const alice = "alice" as UserId
export const bob = "bob" as UserId
export const carol = "carol" as UserId
export const dave = "dave" as UserId

/** A group conversation of alice (owner), bob and carol (members). */
export function groupDoc(id = "g~test"): Y.Doc {
  const doc = new Y.Doc()
  createConversation(doc, alice, {
    kind: "group",
    id: id as ConversationId,
    participants: [bob, carol],
    title: "Team",
  })
  return doc
}

/** A copy of `doc` (a second replica). */
export function replicaOf(doc: Y.Doc): Y.Doc {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  return copy
}

/** Brings two replicas in sync both ways. */
export function sync(a: Y.Doc, b: Y.Doc): void {
  Y.applyUpdate(b, Y.encodeStateAsUpdate(a, Y.encodeStateVector(b)))
  Y.applyUpdate(a, Y.encodeStateAsUpdate(b, Y.encodeStateVector(a)))
}
