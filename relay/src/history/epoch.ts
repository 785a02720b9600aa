import {
  type EpochRecord,
  encodeEpochBaseline,
  epochBaseline,
  MetaKey,
  TOP_LEVEL_ARRAYS,
  TOP_LEVEL_MAPS,
  typesOf,
} from "@parley/shared"
import * as Y from "yjs"
import type { SealPlan } from "./sealing.js"

/**
 * A fresh live document (a new epoch) holding `doc`'s current values, all
 * written under one new client id: Yjs keeps every client id a document ever
 * saw, and does work per client id in every transaction, so a document used
 * by many device sessions over years gets slower to change. Starting over
 * drops them. `meta.epoch` names the new id; `meta.epochFrom` records how far
 * the relay had `doc`'s clients, so that a replica of `doc` can tell its
 * pending work from what the epoch already holds (shared
 * `rebasePendingWork`). With `record` (the relay keeps epoch records: see
 * shared `EpochRecord`), `epochFrom` is that record's baseline, `doc`'s
 * clients only, and `meta.epochs` counts the records; without, it
 * accumulates every earlier epoch's clients, as before records.
 */
export function startEpoch(doc: Y.Doc, record?: EpochRecord): Y.Doc {
  const fresh = new Y.Doc()
  let from: ReadonlyMap<number, number> | undefined = record?.baseline
  if (!from) {
    const cumulative = epochBaseline(doc)
    for (const [client, clock] of Y.decodeStateVector(Y.encodeStateVector(doc))) cumulative.set(client, clock)
    from = cumulative
  }
  fresh.transact(() => {
    for (const name of TOP_LEVEL_MAPS) {
      const source = doc.getMap<unknown>(name)
      const target = fresh.getMap<unknown>(name)
      for (const [key, value] of source) {
        // Written last below: a document is a conversation once it has createdAt.
        if (name === "meta" && key === MetaKey.createdAt) continue
        target.set(key, value)
      }
    }
    for (const name of TOP_LEVEL_ARRAYS) {
      const values = doc.getArray<unknown>(name).toArray()
      if (values.length > 0) fresh.getArray<unknown>(name).push(values)
    }
    const meta = typesOf(fresh).meta
    meta.set(MetaKey.epoch, fresh.clientID)
    meta.set(MetaKey.epochFrom, encodeEpochBaseline(from))
    if (record) meta.set(MetaKey.epochs, record.number + 1)
    // Without records the count would name records this epoch did not write.
    else meta.delete(MetaKey.epochs)
    const createdAt = typesOf(doc).meta.get(MetaKey.createdAt)
    if (createdAt !== undefined) meta.set(MetaKey.createdAt, createdAt)
  })
  return fresh
}

/**
 * Bytes of `doc` rewritten as a fresh epoch: its values alone, without what
 * Yjs keeps of removed ones. A snapshot's size less this is the document's
 * garbage, which every joiner downloads and a fresh epoch drops.
 */
export function epochValueBytes(doc: Y.Doc): number {
  const fresh = startEpoch(doc)
  try {
    return Y.encodeStateAsUpdate(fresh).length
  } finally {
    fresh.destroy()
  }
}

/**
 * At most what Yjs keeps of what `plans` removed from the live document, in
 * bytes: a struct per removed record, `order` element and folded summary
 * (an item's header: info, two ids, a parent name, a length: under 40
 * bytes), and a map entry per folded reaction and edit (the same and its
 * key). Garbage is measured by encoding the document twice
 * (`epochValueBytes`); this bound lets the relay's check after a seal wait
 * until the seals since the last measure may have passed its budget.
 */
export function sealGarbageBound(plans: readonly SealPlan[]): number {
  const ITEM = 40
  let bound = 0
  for (const plan of plans) {
    bound += ITEM * (plan.orderPositions.length + (plan.fold ? plan.fold.folded.size + 1 : 0))
    for (const { record, overlays } of plan.segment.entries) {
      bound += ITEM
      // Ids are ASCII (one byte a character); an emoji at most three bytes a UTF-16 unit.
      for (const [emoji, user] of overlays?.reactions ?? [])
        bound += ITEM + record.id.length + user.length + 3 * emoji.length + 2
      if (overlays?.edit) bound += ITEM + record.id.length
    }
  }
  return bound
}
