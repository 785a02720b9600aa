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
  /** Most bytes of struct encoding in one part (one struct larger than this goes alone). */
  readonly maxBytes: number
}

/**
 * Half the relay's default caps (700 structs, 1,000 values, 1 MiB frames),
 * so that a relay configured somewhat below its defaults still takes every
 * part, and no part costs the relay more than half of what its caps allow.
 * (A mixed offline backlog, with deletions, edits, reactions and marker moves,
 * costs the relay more per struct than the plain frames the caps are sized by.)
 */
export const DEFAULT_UPDATE_PART_LIMITS: UpdatePartLimits = {
  maxStructs: 350,
  maxValues: 500,
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

const encodedSize = (s: Struct): number => {
  const encoder = new Y.UpdateEncoderV1()
  s.write(encoder, 0)
  return encoder.toUint8Array().length
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
 * what it carries.
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
): Uint8Array[] {
  if (update.length <= SMALL_UPDATE_BYTES) return [update]
  const { structs, ds } = Y.decodeUpdate(update) as { structs: (Struct | Y.Skip)[]; ds: DecodedDeleteSet }
  let values = 0
  for (const s of structs) {
    if (s instanceof Y.Skip) return [update] // gaps: not an update of one document's state, leave it be
    values += valuesOf(s)
  }
  if (structs.length <= limits.maxStructs && values <= limits.maxValues && update.length <= limits.maxBytes)
    return [update]

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

  const parts: Uint8Array[] = []
  let remaining = structs.length
  while (remaining > 0) {
    const part = new Map<number, Struct[]>()
    let count = 0
    let bytes = 0
    values = 0
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
              run.splice(i + 1, 0, splitItem(s, room))
              remaining++
            } else if (count > 0) {
              full = true
              break
            }
          }
          let size = encodedSize(s)
          // Cut a merged item whose bytes do not fit, in proportion (then again, should its values differ in size).
          while (
            bytes + size > limits.maxBytes &&
            s.length > 1 &&
            s instanceof Y.Item &&
            s.content.isCountable()
          ) {
            const k = Math.floor((s.length * (limits.maxBytes - bytes)) / size)
            if (k < 1 && count > 0) break
            run.splice(i + 1, 0, splitItem(s, Math.max(1, Math.min(k, s.length - 1))))
            remaining++
            size = encodedSize(s)
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
          bytes += size
          frontier.set(client, s.id.clock + s.length)
          next.set(client, i + 1)
          progressed = true
          if (values >= limits.maxValues) full = true
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
    // Deletions whose targets the receiver has once this part is applied travel with it.
    const deletes = new Map<number, DeleteRange[]>()
    for (const [client, ranges] of pendingDeletes) {
      const ready =
        remaining === 0 ? ranges : ranges.filter((r) => has(Y.createID(client, r.clock + r.len - 1)))
      if (ready.length === 0) continue
      deletes.set(client, ready)
      const left = ranges.filter((r) => !ready.includes(r))
      if (left.length > 0) pendingDeletes.set(client, left)
      else pendingDeletes.delete(client)
    }
    parts.push(encodePart(part, deletes))
  }
  return parts
}
