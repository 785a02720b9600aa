import {
  isReactionRemoval,
  type MessageId,
  parseReactionKey,
  reactionKey,
  type SealPlan,
  storedRecordId,
  typesOf,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import * as Y from "yjs"

/** An update's delete set, as Yjs decodes it. */
type DeleteSet = ReturnType<typeof Y.decodeUpdate>["ds"]

/** A Yjs item's id. */
export interface ItemId {
  readonly client: number
  readonly clock: number
}

/** A reaction a seal folded: the item that held it under `key`, and the item of its message's record. */
interface Folded {
  readonly clock: number
  readonly key: string
  readonly record: ItemId
}

/** A folded reaction as stored: {@link Folded} with its item's client. */
export interface FoldedReaction extends Folded {
  readonly client: number
}

/**
 * Folded reactions one loaded document remembers at most (about 150 bytes
 * each; the lowest clocks are forgotten first): enough for the devices
 * offline across a few seals, bounded whatever the conversation.
 */
const MAX_REMEMBERED = 10_000

/** Version of {@link encodeFoldedReactions}' layout. */
const FOLDED_FORMAT = 1

/** Version of {@link FoldDirectory}'s layout. */
const FOLD_DIRECTORY_FORMAT = 1

/**
 * The folded reactions of one segment as the history store keeps them beside
 * it: var-uint format (1), var-uint count, then per reaction var-uint client,
 * var-uint clock, var-string key, var-uint record client, var-uint record clock.
 */
export function encodeFoldedReactions(folds: readonly FoldedReaction[]): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, FOLDED_FORMAT)
  encoding.writeVarUint(encoder, folds.length)
  for (const f of folds) {
    encoding.writeVarUint(encoder, f.client)
    encoding.writeVarUint(encoder, f.clock)
    encoding.writeVarString(encoder, f.key)
    encoding.writeVarUint(encoder, f.record.client)
    encoding.writeVarUint(encoder, f.record.clock)
  }
  return encoding.toUint8Array(encoder)
}

/**
 * Which segments hold folded reactions of which Yjs client: the history
 * store keeps it in one row per conversation (`FOLD_DIRECTORY_INDEX`),
 * written with the folds. A document loaded again reads the folds of its
 * latest segments only; a device's deletion naming a client of its own user
 * whose folds lie in older segments has those read too (see `olderFolds` in
 * the update path), however long it was away. It lists one epoch's folds
 * (`epoch`, the live document's): a device of an earlier epoch rebases its
 * pending work instead (the SDK), so a fresh epoch starts it empty, and it
 * never grows with the conversation's whole history.
 */
export class FoldDirectory {
  /** Per client, its segments, ascending. */
  private constructor(
    readonly epoch: number,
    private readonly bySegments: Map<number, number[]>,
  ) {}

  /** A directory of epoch `epoch` listing nothing. */
  static empty(epoch: number): FoldDirectory {
    return new FoldDirectory(epoch, new Map())
  }

  /**
   * The directory of epoch `epoch` that `bytes` hold; empty when they hold
   * another epoch's or are not such a row. Layout: var-uint format (1),
   * var-uint epoch, var-uint count of clients, then per client var-uint
   * client, var-uint count of segments, the segments as var-uint gaps (ascending).
   */
  static decode(bytes: Uint8Array, epoch: number): FoldDirectory {
    const clients = new Map<number, number[]>()
    try {
      const decoder = decoding.createDecoder(bytes)
      if (decoding.readVarUint(decoder) !== FOLD_DIRECTORY_FORMAT) return FoldDirectory.empty(epoch)
      if (decoding.readVarUint(decoder) !== epoch) return FoldDirectory.empty(epoch)
      for (let n = decoding.readVarUint(decoder); n > 0; n--) {
        const client = decoding.readVarUint(decoder)
        const segments: number[] = []
        let previous = 0
        for (let k = decoding.readVarUint(decoder); k > 0; k--) {
          previous += decoding.readVarUint(decoder)
          segments.push(previous)
        }
        clients.set(client, segments)
      }
    } catch {
      return FoldDirectory.empty(epoch)
    }
    return new FoldDirectory(epoch, clients)
  }

  /** The row's bytes, in the layout {@link FoldDirectory.decode} reads. */
  encode(): Uint8Array {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, FOLD_DIRECTORY_FORMAT)
    encoding.writeVarUint(encoder, this.epoch)
    encoding.writeVarUint(encoder, this.bySegments.size)
    for (const [client, segments] of this.bySegments) {
      encoding.writeVarUint(encoder, client)
      encoding.writeVarUint(encoder, segments.length)
      let previous = 0
      for (const segment of segments) {
        encoding.writeVarUint(encoder, segment - previous)
        previous = segment
      }
    }
    return encoding.toUint8Array(encoder)
  }

  /** Notes that segment `segment` holds `folds`; whether anything was new. */
  add(segment: number, folds: readonly FoldedReaction[]): boolean {
    let added = false
    for (const { client } of folds) {
      const segments = this.bySegments.get(client) ?? []
      if (segments.includes(segment)) continue
      segments.push(segment)
      segments.sort((a, b) => a - b)
      this.bySegments.set(client, segments)
      added = true
    }
    return added
  }

  /** The segments holding folds of `client`, ascending (none when it has none). */
  segmentsOf(client: number): readonly number[] {
    return this.bySegments.get(client) ?? []
  }
}

/** The folded reactions `bytes` hold; none when they are not such a row (an unknown format). */
export function decodeFoldedReactions(bytes: Uint8Array): FoldedReaction[] {
  try {
    const decoder = decoding.createDecoder(bytes)
    if (decoding.readVarUint(decoder) !== FOLDED_FORMAT) return []
    const folds: FoldedReaction[] = []
    for (let n = decoding.readVarUint(decoder); n > 0; n--) {
      const client = decoding.readVarUint(decoder)
      const clock = decoding.readVarUint(decoder)
      const key = decoding.readVarString(decoder)
      const record = { client: decoding.readVarUint(decoder), clock: decoding.readVarUint(decoder) }
      folds.push({ client, clock, key, record })
    }
    return folds
  } catch {
    return []
  }
}

/**
 * The reactions `plans` fold, by plan (the same order), from `doc` as it is
 * before they are applied (the items still hold their keys and records):
 * what {@link FoldedReactions.hold} remembers and the history store keeps
 * beside each segment. Call just before storing the plans.
 */
export function reactionsFolded(doc: Y.Doc, plans: readonly SealPlan[]): FoldedReaction[][] {
  const wanted = new Set<MessageId>()
  for (const plan of plans)
    for (const { record, overlays } of plan.segment.entries) if (overlays?.reactions) wanted.add(record.id)
  if (wanted.size === 0) return plans.map(() => [])
  const t = typesOf(doc)
  const records = new Map<MessageId, ItemId>()
  for (let item = t.messages._start; item !== null && records.size < wanted.size; item = item.right) {
    if (item.deleted || !(item.content instanceof Y.ContentAny)) continue
    const values = item.content.getContent()
    for (let j = 0; j < values.length; j++) {
      const id = storedRecordId(values[j])
      if (id !== undefined && wanted.has(id))
        records.set(id, { client: item.id.client, clock: item.id.clock + j })
    }
  }
  return plans.map((plan) => {
    const folds: (readonly [string, ItemId])[] = []
    for (const { record, overlays } of plan.segment.entries) {
      const recordItem = records.get(record.id)
      if (recordItem)
        for (const [emoji, user] of overlays?.reactions ?? [])
          folds.push([reactionKey(record.id, user, emoji), recordItem])
    }
    return keyedReactions(doc, folds)
  })
}

/**
 * The reactions under `keys` that a re-sealing folds (see `planRefold`),
 * from `doc` as it is before it is applied, with `record`: the item the same
 * change deletes (the segment's summary, or the folded record naming its
 * directory page), which a device that knew of the re-sealing deletes too
 * whenever it sends its whole delete set.
 */
export function keysFolded(doc: Y.Doc, keys: readonly string[], record: ItemId): FoldedReaction[] {
  return keyedReactions(
    doc,
    keys.map((key) => [key, record]),
  )
}

/** The item each key holds a reaction under now (not a removal), with the record deleted with it. */
function keyedReactions(doc: Y.Doc, folds: readonly (readonly [string, ItemId])[]): FoldedReaction[] {
  const reactions = typesOf(doc).reactions
  const entries = (reactions as unknown as { _map: Map<string, Y.Item> })._map
  const out: FoldedReaction[] = []
  for (const [key, record] of folds) {
    const item = entries.get(key)
    if (!item || item.deleted || isReactionRemoval(reactions.get(key))) continue
    out.push({ client: item.id.client, clock: item.id.clock, key, record })
  }
  return out
}

/**
 * The reactions this relay's seals folded into segments, by the Yjs item that
 * held each. A seal removes a folded reaction's key from the live document; a
 * device that did not know of the seal and removed the reaction meanwhile
 * (offline, or in flight) sends a deletion of that item, which then changes
 * nothing Yjs can see, and the reaction would stay in the segment. Such a
 * deletion is told from one a device merely learned from the seal by the
 * message's record: the seal removed both at once, so a device that knew of
 * it deletes both whenever it sends its whole delete set (a sync step 2, a
 * resend of pending work), and a device that removed the reaction itself
 * deletes only the reaction's item. The history store keeps each segment's
 * folds beside it (`HistoryKeeper.storeSeals`, `storeFolds`), and a document
 * loaded again reads those of its latest segments before it first needs
 * them ({@link loaded}), and older ones that a user's deletion names items
 * of its own clients in ({@link FoldDirectory}): a device that comes back
 * after an unload or a restart, however long it was away, is told apart as well.
 */
export class FoldedReactions {
  /** Per client, sorted by clock. */
  private readonly byClient = new Map<number, Folded[]>()
  private size = 0
  /** Whether the stored folds of the latest segments were read into this (see `loadFolds` in the update path). */
  loaded = false
  /** The conversation's fold directory, read with the latest segments' folds. */
  directory: FoldDirectory | undefined
  /**
   * Segments whose stored folds were read into this: each is read once per
   * loaded document (not again once its folds are forgotten, so that no
   * update can make the relay read rows over and over).
   */
  readonly read = new Set<number>()

  /** Remembers `folds` (those already held are not held twice). */
  hold(folds: readonly FoldedReaction[]): void {
    // The clocks each touched list held before this call: a fold read back from storage and also
    // remembered by this process's own seal is held once.
    const touched = new Map<Folded[], Set<number>>()
    for (const { client, clock, key, record } of folds) {
      let list = this.byClient.get(client)
      if (!list) {
        list = []
        this.byClient.set(client, list)
      }
      let held = touched.get(list)
      if (!held) {
        held = new Set(list.map((f) => f.clock))
        touched.set(list, held)
      }
      if (held.has(clock)) continue
      held.add(clock)
      list.push({ clock, key, record })
      this.size++
    }
    for (const list of touched.keys()) list.sort((a, b) => a.clock - b.clock)
    if (this.size > MAX_REMEMBERED) this.forgetOldest(this.size - MAX_REMEMBERED)
  }

  /**
   * The keys of `user`'s folded reactions that `deleteSet` removes without
   * their message's record: removals made on a device that did not know of
   * the seal. Each is forgotten once returned.
   */
  removedBy(deleteSet: DeleteSet, user: string): string[] {
    if (this.size === 0) return []
    const removed: string[] = []
    for (const [client, ranges] of deleteSet.clients) {
      const list = this.byClient.get(client)
      if (!list) continue
      for (const { clock, len } of ranges) {
        for (let i = firstAtOrAfter(list, clock); i < list.length && list[i]!.clock < clock + len; i++) {
          const folded = list[i]!
          if (parseReactionKey(folded.key)?.user !== user) continue
          if (deletes(deleteSet, folded.record)) continue
          removed.push(folded.key)
        }
      }
    }
    for (const key of removed) this.forget(key)
    return removed
  }

  private forget(key: string): void {
    for (const list of this.byClient.values()) {
      const at = list.findIndex((f) => f.key === key)
      if (at >= 0) {
        list.splice(at, 1)
        this.size--
        return
      }
    }
  }

  /** Forgets `count` of the lowest clocks, client by client: what the seals long ago folded. */
  private forgetOldest(count: number): void {
    for (const list of this.byClient.values()) {
      const n = Math.min(count, list.length)
      list.splice(0, n)
      this.size -= n
      count -= n
      if (count <= 0) return
    }
  }
}

/** Index of the first entry of sorted `list` whose clock is at least `clock`. */
function firstAtOrAfter(list: readonly Folded[], clock: number): number {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (list[mid]!.clock < clock) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Whether `deleteSet` deletes the item `id`. */
function deletes(deleteSet: DeleteSet, id: ItemId): boolean {
  for (const { clock, len } of deleteSet.clients.get(id.client) ?? []) {
    if (id.clock >= clock && id.clock < clock + len) return true
  }
  return false
}
