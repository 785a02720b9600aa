import * as encoding from "lib0/encoding"
import * as Y from "yjs"

/**
 * How large each part of a split update may be. The relay refuses an update
 * over its per-update caps (structs, values, frame bytes; relay/README.md
 * "Update cost limits"); a device that was offline for a long time holds more
 * than that, and sending it whole would be refused on every reconnect.
 */
export interface UpdatePartLimits {
  /** Most structs (items and GC ranges) in one part. */
  readonly maxStructs: number
  /** Most values (array elements, map values, characters) one part writes. */
  readonly maxValues: number
  /** Most elements its values hold: each value and every entry of the arrays and objects in it. */
  readonly maxElements: number
  /** Most bytes of struct encoding in one part (one struct larger than this goes alone). */
  readonly maxBytes: number
}

/**
 * Half the relay's default caps (700 structs, 1,000 values, 32,768 elements, 1 MiB frames),
 * so that a relay configured somewhat below its defaults still takes every
 * part, and no part costs the relay more than half of what its caps allow.
 * (A mixed offline backlog, with deletions, edits, reactions and marker moves,
 * costs the relay more per struct than the plain frames the caps are sized by.)
 */
export const DEFAULT_UPDATE_PART_LIMITS: UpdatePartLimits = {
  maxStructs: 350,
  maxValues: 500,
  maxElements: 16_384,
  maxBytes: 512 * 1024,
}

// Below this no update can exceed the part limits: it takes at least a byte per value and per struct.
const SMALL_UPDATE_BYTES = 512

type Struct = Y.Item | Y.GC
type DeleteRange = { clock: number; len: number }
type DecodedDeleteSet = { clients: Map<number, DeleteRange[]> }

/** The values Yjs's content writes, as the relay counts them (deleted content and GC ranges write none). */
const valuesOf = (s: Struct): number =>
  s instanceof Y.Item && !(s.content instanceof Y.ContentDeleted) ? s.length : 0

/** UTF-8 bytes of `text`, without encoding it. */
function utf8Bytes(text: string): number {
  let n = text.length
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c >= 0x80) n += c >= 0x800 && (c < 0xd800 || c > 0xdfff) ? 2 : 1
  }
  return n
}

/**
 * Elements of a value as the relay counts them: itself, every entry nested in
 * it, and one more per 8 UTF-8 bytes of each object key (relay `KEY_BYTES_SHIFT`).
 */
function elementsOfValue(value: unknown): number {
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return 1
  let n = 1
  if (Array.isArray(value)) for (const v of value) n += elementsOfValue(v)
  else for (const [key, v] of Object.entries(value)) n += (utf8Bytes(key) >>> 3) + elementsOfValue(v)
  return n
}

/** Elements of the first `count` values of a struct's content (all by default). */
function elementsOf(s: Struct, count = s.length): number {
  if (!(s instanceof Y.Item) || s.content instanceof Y.ContentDeleted) return 0
  if (!(s.content instanceof Y.ContentAny)) return count
  let n = 0
  for (let i = 0; i < count; i++) n += elementsOfValue(s.content.arr[i])
  return n
}

/** How many of a content-any item's first values hold at most `room` elements. */
function valuesWithin(s: Y.Item, room: number): number {
  if (!(s.content instanceof Y.ContentAny)) return Math.min(room, s.length)
  let n = 0
  for (let i = 0; i < s.length; i++) {
    n += elementsOfValue(s.content.arr[i])
    if (n > room) return i
  }
  return s.length
}

const encodedSize = (s: Struct): number => {
  const encoder = new Y.UpdateEncoderV1()
  s.write(encoder, 0)
  return encoding.length(encoder.restEncoder)
}

/** Bytes of `n` written as a variable-length unsigned integer. */
const varUintSize = (n: number): number => {
  let size = 1
  for (let rest = Math.floor(n / 128); rest > 0; rest = Math.floor(rest / 128)) size++
  return size
}

/** Sums of the sizes (or element counts) of an item's values: `at[j]` covers the first `j`. */
interface ValueSums {
  readonly bytes: Float64Array
  readonly elements: Float64Array
  /** Where the item's first value falls in the sums (items cut from one share them). */
  readonly from: number
  /** Bytes the item writes besides its values: its header and their count. */
  readonly header: number
}

/**
 * Sizes and element counts of the update's structs, each value measured
 * once. Measuring a merged item by encoding it again for each cut (a burst
 * of offline messages is one item) made splitting a large backlog quadratic:
 * seconds of a blocked main thread for 3,000 long messages. An item of plain
 * values (`ContentAny`, every message record) is its header plus its values,
 * each encoded once; the items cut from it share those sums.
 */
class Measure {
  private readonly sums = new Map<Y.Item, ValueSums>()

  /** Bytes of `s`'s encoding. */
  bytes(s: Struct): number {
    const sums = this.sumsOf(s)
    if (!sums) return encodedSize(s)
    const item = s as Y.Item
    return (
      sums.header + varUintSize(item.length) + sums.bytes[sums.from + item.length]! - sums.bytes[sums.from]!
    )
  }

  /** Elements of `s`'s values (see {@link elementsOf}). */
  elements(s: Struct): number {
    const sums = this.sumsOf(s)
    if (!sums) return elementsOf(s)
    return sums.elements[sums.from + s.length]! - sums.elements[sums.from]!
  }

  /** How many of the first values of `s` (a countable item) fit in `room` bytes with its header: 0 if none. */
  valuesWithinBytes(s: Y.Item, room: number): number | undefined {
    const sums = this.sumsOf(s)
    if (!sums) return undefined
    const base = sums.bytes[sums.from]!
    let lo = 0
    let hi = s.length
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1
      if (sums.header + varUintSize(mid) + sums.bytes[sums.from + mid]! - base <= room) lo = mid
      else hi = mid - 1
    }
    return lo
  }

  /** `rest` was cut from `item` after its first `k` values: it shares `item`'s sums. */
  cut(item: Y.Item, k: number, rest: Y.Item): void {
    const sums = this.sums.get(item)
    // The header of the rest names the last value kept as its origin: measured anew, once.
    if (sums) this.sums.set(rest, { ...sums, from: sums.from + k, header: headerSize(rest) })
  }

  private sumsOf(s: Struct): ValueSums | undefined {
    if (!(s instanceof Y.Item) || !(s.content instanceof Y.ContentAny)) return undefined
    let sums = this.sums.get(s)
    if (sums) return sums
    const values = s.content.arr
    const bytes = new Float64Array(values.length + 1)
    const elements = new Float64Array(values.length + 1)
    for (let j = 0; j < values.length; j++) {
      const encoder = encoding.createEncoder()
      encoding.writeAny(encoder, values[j] as Parameters<typeof encoding.writeAny>[1])
      bytes[j + 1] = bytes[j]! + encoding.length(encoder)
      elements[j + 1] = elements[j]! + elementsOfValue(values[j])
    }
    sums = { bytes, elements, from: 0, header: headerSize(s) }
    this.sums.set(s, sums)
    return sums
  }
}

/** Bytes an item writes before its content's values (their count excluded). */
function headerSize(item: Y.Item): number {
  const empty = new Y.Item(
    item.id,
    null,
    item.origin,
    null,
    item.rightOrigin,
    item.parent,
    item.parentSub,
    new Y.ContentAny([]),
  )
  // The empty content writes its count: one byte.
  return encodedSize(empty) - 1
}

/** The ids an item needs to have been integrated before it (origins, and a parent named by id). */
function dependencies(s: Struct): Y.ID[] {
  if (!(s instanceof Y.Item)) return []
  const ids: Y.ID[] = []
  if (s.origin) ids.push(s.origin)
  if (s.rightOrigin) ids.push(s.rightOrigin)
  if (s.parent instanceof Y.ID) ids.push(s.parent)
  return ids
}

/** A struct of the update that stands in for a deleted clock (see {@link standInsOf}). */
interface StandIn {
  readonly clock: number
  readonly by: Y.Item
}

/**
 * The update's structs that stand in for something its delete set removes,
 * per client of the removed clock, sorted by that clock. The receiver checks
 * a deletion together with what replaces it (a read marker is moved, never
 * removed; a deleted message leaves its placeholder), so a part must not
 * carry the deletion without its stand-in. Yjs says which struct that is: a
 * map value names the value it overwrites as its origin; the SDK inserts a
 * deleted message's placeholder just before the message, which it names as
 * its right origin. (An element appended after a deleted one names it as its
 * origin without standing in for it.)
 */
function standInsOf(structs: readonly Struct[], replica: Y.Doc | undefined): Map<number, StandIn[]> {
  const isMapValue = mapValues(structs, replica)
  const byClient = new Map<number, StandIn[]>()
  for (const s of structs) {
    if (!(s instanceof Y.Item)) continue
    const map = isMapValue(s)
    if (map === undefined) continue
    const target = map ? s.origin : s.rightOrigin
    if (!target) continue
    const list = byClient.get(target.client)
    if (list) list.push({ clock: target.clock, by: s })
    else byClient.set(target.client, [{ clock: target.clock, by: s }])
  }
  for (const list of byClient.values()) list.sort((a, b) => a.clock - b.clock)
  return byClient
}

/**
 * Whether an item of the update is a map value (true) or a list element
 * (false), undefined when neither the update nor `replica` tells. Yjs writes
 * an item's parent and key only when it has no origin (the receiver takes
 * them from the origin), so an item with one is told by what its origin is:
 * in the update, or in the replica the update was encoded from.
 */
function mapValues(
  structs: readonly Struct[],
  replica: Y.Doc | undefined,
): (item: Y.Item) => boolean | undefined {
  const items = new Map<number, Y.Item[]>()
  for (const s of structs)
    if (s instanceof Y.Item) {
      const list = items.get(s.id.client)
      if (list) list.push(s)
      else items.set(s.id.client, [s])
    }
  const known = new Map<Y.Item, boolean | undefined>()
  const find = (id: Y.ID): Y.Item | undefined => {
    const list = items.get(id.client)
    const own = list && findByClock(list, id.clock)
    if (own) return own
    const stored = replica?.store.clients.get(id.client)
    if (!stored || id.clock >= Y.getState(replica!.store, id.client)) return undefined
    const struct = stored[Y.findIndexSS(stored, id.clock)]
    return struct instanceof Y.Item ? struct : undefined
  }
  const isMapValue = (item: Y.Item): boolean | undefined => {
    if (known.has(item)) return known.get(item)
    let answer: boolean | undefined
    // Along the chain of origins to an item that names its parent (iteratively: a long chain of map values).
    const chain: Y.Item[] = []
    for (let at: Y.Item | undefined = item; at; ) {
      if (known.has(at)) {
        answer = known.get(at)
        break
      }
      chain.push(at)
      if (!at.origin && !at.rightOrigin) {
        answer = at.parentSub !== null
        break
      }
      // A replica's item knows its key; a decoded one only when it has no origin.
      if (!(at.parent instanceof Y.ID) && at.parent !== null && typeof at.parent !== "string") {
        answer = at.parentSub !== null
        break
      }
      at = find(at.origin ?? at.rightOrigin!)
    }
    for (const at of chain) known.set(at, answer)
    return answer
  }
  return isMapValue
}

/** The item of `list` (one client's, sorted by clock) that holds `clock`. */
function findByClock(list: readonly Y.Item[], clock: number): Y.Item | undefined {
  let lo = 0
  let hi = list.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const item = list[mid]!
    if (clock < item.id.clock) hi = mid - 1
    else if (clock >= item.id.clock + item.length) lo = mid + 1
    else return item
  }
  return undefined
}

/**
 * `part` with each map value that a later value of the update overwrote, and
 * that this part would leave as its key's newest, written with the value its
 * key ends with. Such a value arrives deleted (its content is gone from the
 * replica), so applying the part would leave the key without a value until
 * the part holding the live one: a read marker removed, which the relay
 * refuses. Written live, it holds the key's final value meanwhile; the part
 * that overwrites it deletes it, and the receiver ends as the replica did.
 */
function withLiveValues(
  part: Map<number, Struct[]>,
  standIns: ReadonlyMap<number, readonly StandIn[]>,
  has: (id: Y.ID) => boolean,
): Map<number, Struct[]> {
  /** The map value that overwrote `item` (its stand-in that is a map value), if the update holds one. */
  const overwrittenBy = (item: Y.Item): Y.Item | undefined => {
    const list = standIns.get(item.id.client)
    if (!list) return undefined
    const last = item.id.clock + item.length - 1
    for (let i = firstAtOrAfter(list, last); i < list.length && list[i]!.clock === last; i++)
      if (list[i]!.by.origin?.clock === last && list[i]!.by.origin?.client === item.id.client)
        return list[i]!.by
    return undefined
  }
  let out: Map<number, Struct[]> | undefined
  for (const [client, structs] of part) {
    structs.forEach((s, i) => {
      if (!(s instanceof Y.Item) || !(s.content instanceof Y.ContentDeleted) || s.length !== 1) return
      let next = overwrittenBy(s)
      if (!next || has(next.id)) return
      // The key's final value: along the overwrites to one that is not deleted (none: the key ends deleted).
      while (next.content instanceof Y.ContentDeleted) {
        const after = overwrittenBy(next)
        if (!after) return
        next = after
      }
      if (next.length !== 1) return
      out ??= new Map([...part].map(([c, list]) => [c, [...list]]))
      out.get(client)![i] = new Y.Item(
        s.id,
        null,
        s.origin,
        null,
        s.rightOrigin,
        s.parent,
        s.parentSub,
        next.content.copy(),
      )
    })
  }
  return out ?? part
}

/** Index of the first stand-in of `list` (sorted by clock) at or after `clock`. */
function firstAtOrAfter(list: readonly StandIn[], clock: number): number {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (list[mid]!.clock < clock) lo = mid + 1
    else hi = mid
  }
  return lo
}

/**
 * Splits a countable item after its first `k` values (as Yjs's own split
 * does, without a document): the item keeps the first part, the returned
 * item holds the rest, its origin the last value kept.
 */
function splitItem(item: Y.Item, k: number): Y.Item {
  let at = k
  // Never between the halves of a surrogate pair (Yjs would replace both with U+FFFD).
  if (item.content instanceof Y.ContentString) {
    const code = item.content.str.charCodeAt(at - 1)
    if (at > 1 && code >= 0xd800 && code <= 0xdbff) at--
  }
  const rest = item.content.splice(at)
  item.length = at
  const { client, clock } = item.id
  return new Y.Item(
    Y.createID(client, clock + at),
    null,
    Y.createID(client, clock + at - 1),
    null,
    item.rightOrigin,
    item.parent,
    item.parentSub,
    rest,
  )
}

/** Encodes structs (per client, consecutive clocks) and delete ranges as one V1 update. */
function encodePart(part: Map<number, Struct[]>, deletes: Map<number, DeleteRange[]>): Uint8Array {
  const encoder = new Y.UpdateEncoderV1()
  encoding.writeVarUint(encoder.restEncoder, part.size)
  // Higher client ids first, as Yjs writes them (not required, but the relay's logs read the same).
  for (const [client, structs] of [...part].sort((a, b) => b[0] - a[0])) {
    encoding.writeVarUint(encoder.restEncoder, structs.length)
    encoder.writeClient(client)
    encoding.writeVarUint(encoder.restEncoder, structs[0]!.id.clock)
    for (const s of structs) s.write(encoder, 0)
  }
  encoding.writeVarUint(encoder.restEncoder, deletes.size)
  for (const [client, ranges] of deletes) {
    encoder.resetDsCurVal()
    encoding.writeVarUint(encoder.restEncoder, client)
    encoding.writeVarUint(encoder.restEncoder, ranges.length)
    for (const r of ranges) {
      encoder.writeDsClock(r.clock)
      encoder.writeDsLen(r.len)
    }
  }
  return encoder.toUint8Array()
}

/**
 * Splits a Yjs update (V1) into parts that, applied in order, have the same
 * effect as the whole, each within `limits`, and each depending only on what
 * the receiver had before the first part and on earlier parts: no part
 * leaves the receiver holding structs or deletions it cannot integrate yet
 * (the relay refuses such an update). Deletions travel with the first part
 * whose receiver has what they delete, so a part deletes on arrival at most
 * what it carries, but never ahead of the struct that stands in for them (a
 * marker's new value, a deleted message's placeholder), which the receiver
 * checks them with. `replica`, the document the update was encoded from,
 * tells map values from list elements where the update does not (without
 * it, a value that overwrites one the receiver already has is not told, and
 * its old value's deletion may go one part ahead of it).
 *
 * An update within the limits comes back as the only part, unchanged. If the
 * update's own structs depend on each other in a way no order of parts can
 * satisfy (they never do when they come from one document's
 * `encodeStateAsUpdate`), the rest goes in one last part, as it would have
 * gone whole.
 */
export function splitUpdate(
  update: Uint8Array,
  limits: UpdatePartLimits = DEFAULT_UPDATE_PART_LIMITS,
  replica?: Y.Doc,
): Uint8Array[] {
  return [...splitUpdateParts(update, limits, replica)]
}

/**
 * {@link splitUpdate}, one part at a time: each part is worked out when it is
 * asked for, so that a caller can give the event loop back between parts of
 * a long backlog. Decoding the update happens at the first part. `replica`
 * must not lose structs meanwhile (documents never do).
 */
export function* splitUpdateParts(
  update: Uint8Array,
  limits: UpdatePartLimits = DEFAULT_UPDATE_PART_LIMITS,
  replica?: Y.Doc,
): Generator<Uint8Array, void, undefined> {
  if (update.length <= SMALL_UPDATE_BYTES) {
    yield update
    return
  }
  const { structs, ds } = Y.decodeUpdate(update) as { structs: (Struct | Y.Skip)[]; ds: DecodedDeleteSet }
  let values = 0
  let elements = 0
  for (const s of structs) {
    // Gaps: not an update of one document's state, leave it be.
    if (s instanceof Y.Skip) {
      yield update
      return
    }
    values += valuesOf(s)
    elements += elementsOf(s)
  }
  if (
    structs.length <= limits.maxStructs &&
    values <= limits.maxValues &&
    elements <= limits.maxElements &&
    update.length <= limits.maxBytes
  ) {
    yield update
    return
  }

  // Each client's structs in clock order, and how far the receiver will have each client after the parts so far.
  const runs = new Map<number, Struct[]>()
  for (const s of structs as Struct[]) {
    const run = runs.get(s.id.client)
    if (run) run.push(s)
    else runs.set(s.id.client, [s])
  }
  const next = new Map<number, number>([...runs.keys()].map((c) => [c, 0]))
  const frontier = new Map<number, number>([...runs].map(([c, run]) => [c, run[0]!.id.clock]))
  // A client the update does not write under: the receiver is assumed to have it (or refuses either way).
  const has = (id: Y.ID) => id.clock < (frontier.get(id.client) ?? Number.POSITIVE_INFINITY)
  const pendingDeletes = new Map(ds.clients)
  const standIns = standInsOf(structs as Struct[], replica)
  // Of a delete range the receiver has, the clocks a stand-in not yet sent still holds back.
  const heldBack = (client: number, r: DeleteRange): number[] => {
    const list = standIns.get(client)
    if (!list) return []
    const held: number[] = []
    for (let i = firstAtOrAfter(list, r.clock); i < list.length && list[i]!.clock < r.clock + r.len; i++)
      if (!has(list[i]!.by.id)) held.push(list[i]!.clock)
    return held
  }

  const measure = new Measure()
  const cut = (s: Y.Item, k: number): Y.Item => {
    const rest = splitItem(s, k)
    measure.cut(s, k, rest)
    return rest
  }

  let remaining = structs.length
  while (remaining > 0) {
    const part = new Map<number, Struct[]>()
    let count = 0
    let bytes = 0
    values = 0
    elements = 0
    let full = false
    // Passes over the clients until nothing more fits or nothing more is ready (cross-client dependencies).
    for (let progressed = true; progressed && !full; ) {
      progressed = false
      for (const [client, run] of runs) {
        while (!full && next.get(client)! < run.length) {
          const i = next.get(client)!
          const s = run[i]!
          if (!dependencies(s).every(has)) break
          if (count > 0 && count + 1 > limits.maxStructs) {
            full = true
            break
          }
          if (values + valuesOf(s) > limits.maxValues) {
            const room = limits.maxValues - values
            // A merged item (Yjs merges a burst of messages into one) is cut to what still fits.
            if (room > 0 && s instanceof Y.Item && s.content.isCountable()) {
              run.splice(i + 1, 0, cut(s, room))
              remaining++
            } else if (count > 0) {
              full = true
              break
            }
          }
          if (elements + measure.elements(s) > limits.maxElements) {
            const fit =
              s instanceof Y.Item && s.content.isCountable()
                ? valuesWithin(s, limits.maxElements - elements)
                : 0
            // A merged item is cut to the values whose elements still fit (one value goes alone, whatever it holds).
            if (fit > 0 && fit < s.length) {
              run.splice(i + 1, 0, cut(s as Y.Item, fit))
              remaining++
            } else if (count > 0) {
              full = true
              break
            }
          }
          let size = measure.bytes(s)
          if (bytes + size > limits.maxBytes && s.length > 1 && s instanceof Y.Item) {
            // A merged item of plain values is cut where its bytes stop fitting (one value goes alone, whatever its size).
            const fit = measure.valuesWithinBytes(s, limits.maxBytes - bytes)
            if (fit !== undefined && fit < s.length && (fit > 0 || count === 0)) {
              run.splice(i + 1, 0, cut(s, Math.max(1, fit)))
              remaining++
              size = measure.bytes(s)
            }
          }
          // Other content is cut in proportion (then again, should its values differ in size).
          while (
            bytes + size > limits.maxBytes &&
            s.length > 1 &&
            s instanceof Y.Item &&
            s.content.isCountable()
          ) {
            const k = Math.floor((s.length * (limits.maxBytes - bytes)) / size)
            if (k < 1 && count > 0) break
            run.splice(i + 1, 0, cut(s, Math.max(1, Math.min(k, s.length - 1))))
            remaining++
            size = measure.bytes(s)
          }
          if (count > 0 && bytes + size > limits.maxBytes) {
            full = true
            break
          }
          const list = part.get(client)
          if (list) list.push(s)
          else part.set(client, [s])
          count++
          remaining--
          values += valuesOf(s)
          elements += measure.elements(s)
          bytes += size
          frontier.set(client, s.id.clock + s.length)
          next.set(client, i + 1)
          progressed = true
          if (values >= limits.maxValues || elements >= limits.maxElements) full = true
        }
        if (full) break
      }
    }
    if (count === 0) {
      // Nothing ready: dependencies no order satisfies. Send the rest as it would have gone.
      for (const [client, run] of runs) {
        const rest = run.slice(next.get(client)!)
        if (rest.length > 0) part.set(client, rest)
        frontier.set(client, Number.POSITIVE_INFINITY)
      }
      remaining = 0
    }
    // Deletions whose targets the receiver has once this part is applied travel with it, but never
    // ahead of what stands in for them (see `standInsOf`): those clocks wait for their stand-in's part.
    const deletes = new Map<number, DeleteRange[]>()
    for (const [client, ranges] of pendingDeletes) {
      const ready: DeleteRange[] = []
      const left: DeleteRange[] = []
      for (const r of ranges) {
        if (remaining !== 0 && !has(Y.createID(client, r.clock + r.len - 1))) {
          left.push(r)
          continue
        }
        const held = remaining === 0 ? [] : heldBack(client, r)
        let from = r.clock
        for (const clock of held) {
          if (clock > from) ready.push({ clock: from, len: clock - from })
          left.push({ clock, len: 1 })
          from = clock + 1
        }
        if (from < r.clock + r.len) ready.push({ clock: from, len: r.clock + r.len - from })
      }
      if (ready.length > 0) deletes.set(client, ready)
      if (left.length > 0) pendingDeletes.set(client, left)
      else pendingDeletes.delete(client)
    }
    yield encodePart(withLiveValues(part, standIns, has), deletes)
  }
}
