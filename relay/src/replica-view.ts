import { TopLevel } from "@parley/shared"
import * as Y from "yjs"

/**
 * What the replica that made a client's update had seen of the document, as
 * far as the relay can tell from its connection: the state vector it last
 * sent, in its sync request or in a view (a Parley `view` message, sent by
 * the SDK right before an update that carries its whole delete set);
 * `undefined` when it sent none. Yjs deletions carry no clock: a delete set
 * alone does not say whether its sender removed an entry or re-sends a
 * removal it received (every sync step 2 carries the replica's whole delete
 * set, and so do the SDK's resends).
 *
 * What the replica received later is not counted, and need not be: an update
 * of one transaction deletes only what its replica held live, so a removal in
 * it of a record the relay has seen replaced is one made without seeing the
 * replacement, whatever the relay sent meanwhile. Only a whole delete set
 * re-sent needs the state vector it was made at, and the SDK sends its view
 * with it. (A removal judged by the time the relay had sent the replacement
 * was acknowledged and lost whenever the replica's downlink was slower than
 * that: an outside probe.)
 *
 * Updates the relay or its API makes on the document as it is have none.
 */
export interface ReplicaView {
  readonly stateVector: Uint8Array | undefined
}

/**
 * Each state vector, decoded at its first question (rarely asked: see
 * `checkStaleRemovals`) and kept with its bytes: a connection's views of its
 * updates share its last state vector (decoded per update, a forged 41 KB one
 * cost 2 ms of every later update: an outside probe).
 */
const decoded = new WeakMap<Uint8Array, ReadonlyMap<number, number>>()

/**
 * Options of every document the relay holds: the values of participant
 * records stay when they are deleted (Yjs otherwise drops a deleted item's
 * content). A removal re-sent in a delete set names a record long replaced;
 * whether the record under the key now is the same membership (who added the
 * user, and when) tells a removal a concurrent change swallowed from one
 * that happened before the user was added again. About 60 bytes per role
 * change or removal, stored with the document.
 */
export const RELAY_DOC_OPTIONS = {
  gcFilter: (item: Y.Item): boolean => {
    const parent = item.parent as Y.AbstractType<unknown> | null
    return !(item.parentSub !== null && parent?.doc?.share.get(TopLevel.participants) === parent)
  },
} as const

/** Who added the user and when, of a participant record item, if its value is still known. */
export function membershipOf(item: Y.Item): string | undefined {
  return item.content instanceof Y.ContentAny ? membership(item.content.getContent()[0]) : undefined
}

/** Who added the user and when, of a participant record's value. */
export function membership(record: unknown): string | undefined {
  if (!record || typeof record !== "object") return undefined
  const { addedBy, addedAt } = record as { addedBy?: unknown; addedAt?: unknown }
  return `${String(addedBy)}\u0000${String(addedAt)}`
}

/** Whether the replica had `item` when it made the update: its state vector covers it. */
export function replicaHad(view: ReplicaView, item: Y.Item): boolean {
  const bytes = view.stateVector
  if (!bytes) return false
  let known = decoded.get(bytes)
  if (!known) {
    known = new Map()
    try {
      known = Y.decodeStateVector(bytes)
    } catch {}
    decoded.set(bytes, known)
  }
  return (known.get(item.id.client) ?? 0) > item.id.clock
}
