import { TopLevel, typesOf } from "@parley/shared"
import * as Y from "yjs"

/**
 * What the replica that made a client's update had seen of the document, as
 * far as the relay can tell from the frame it came in. Yjs deletions carry no
 * clock: a delete set alone does not say whether its sender removed an entry
 * or re-sends a removal it received (every sync step 2 carries the replica's
 * whole delete set, and so do the SDK's resends and what one tab forwards of
 * another's).
 *
 * - `state-vector`: a sync step 2, made when the replica read the relay's
 *   sync step 1 (sent before anything else on the connection): it had what
 *   the state vector of its sync request says, `stateVector` (absent when it
 *   sent none).
 * - `live`: a sync update, made at any time since the connection joined the
 *   document `joinedMs` ago: besides what its sync request said, the replica
 *   has what the relay applied while it was joined, or before, once that had
 *   time to reach it ({@link REACH_MS}).
 *
 * Updates the relay or its API makes on the document as it is have none.
 */
export type ReplicaView =
  | { readonly kind: "state-vector"; readonly stateVector: Uint8Array | undefined }
  | { readonly kind: "live"; readonly stateVector: Uint8Array | undefined; readonly joinedMs: number }

/**
 * How long what the relay applied takes to reach a connected replica and be
 * part of what it writes: a removal crossing a change sent to it less than
 * this before counts as made without it (a round trip on a slow network).
 */
export const REACH_MS = 3_000

/** Each view's state vector, decoded at its first question (rarely asked: see `checkStaleRemovals`). */
const decoded = new WeakMap<ReplicaView, ReadonlyMap<number, number>>()

/** When this relay applied each participant record it has seen written (`performance.now()`), per document. */
const appliedAt = new WeakMap<Y.Doc, WeakMap<Y.Item, number>>()

/**
 * Starts timing `doc`'s participant records as they are applied (once per
 * document; records applied before count as old). Called by the rules on
 * every update they judge, before the update is applied.
 */
export function timeParticipantRecords(doc: Y.Doc): void {
  if (appliedAt.has(doc)) return
  const times = new WeakMap<Y.Item, number>()
  appliedAt.set(doc, times)
  const participants = typesOf(doc).participants
  participants.observe((event) => {
    const now = performance.now()
    for (const key of event.keysChanged) {
      const item = (participants as unknown as { _map: Map<string, Y.Item> })._map.get(key)
      if (item) times.set(item, now)
    }
  })
}

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

/**
 * Whether the replica had `item` (of `doc`) when it made the update: the
 * state vector covers it, or (a sync update) the relay applied it long
 * enough ago for it to have reached a replica joined long enough.
 */
export function replicaHad(view: ReplicaView, doc: Y.Doc, item: Y.Item): boolean {
  let known = decoded.get(view)
  if (!known) {
    known = new Map()
    try {
      if (view.stateVector) known = Y.decodeStateVector(view.stateVector)
    } catch {}
    decoded.set(view, known)
  }
  if ((known.get(item.id.client) ?? 0) > item.id.clock) return true
  if (view.kind !== "live" || view.joinedMs < REACH_MS) return false
  const at = appliedAt.get(doc)?.get(item)
  return at === undefined || performance.now() - at >= REACH_MS
}
