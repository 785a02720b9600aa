import * as Y from "yjs"

/**
 * What the replica that made a client's update had seen of the document, as
 * far as the relay can tell from the frame it came in. Yjs deletions carry no
 * clock: a delete set alone does not say whether its sender removed an entry
 * or only re-sends a removal it received. The frame does:
 *
 * - `transaction`: a sync update, which Yjs makes from one transaction (or
 *   several merged) and which deletes only what was live in the replica when
 *   it was made;
 * - `state-vector`: a sync step 2, which carries the replica's whole delete
 *   set, made when it read the relay's state vector; `stateVector` is the one
 *   the replica sent with its sync request on this connection (before the
 *   relay answered it), absent when it sent none.
 *
 * Updates the relay or its API makes on the document as it is have none.
 */
export type ReplicaView =
  | { readonly kind: "transaction" }
  | { readonly kind: "state-vector"; readonly stateVector: Uint8Array | undefined }

/** The view of a sync update (see {@link ReplicaView}). */
export const TRANSACTION_VIEW: ReplicaView = { kind: "transaction" }

/** Each step 2's state vector, decoded at its first question (rarely asked: see `checkStaleRemovals`). */
const decoded = new WeakMap<ReplicaView, ReadonlyMap<number, number>>()

/**
 * Whether the replica had `item` when it made the update. A sync update's
 * replica had nothing the relay's removals and replacements since: false, as
 * for a step 2 without a request (unknown).
 */
export function replicaHad(view: ReplicaView, item: Y.Item): boolean {
  if (view.kind === "transaction" || !view.stateVector) return false
  let known = decoded.get(view)
  if (!known) {
    try {
      known = Y.decodeStateVector(view.stateVector)
    } catch {
      known = new Map()
    }
    decoded.set(view, known)
  }
  return (known.get(item.id.client) ?? 0) > item.id.clock
}
