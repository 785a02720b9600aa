import { ErrorCode, ParleyError, Rule } from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as Y from "yjs"
import { findByClock } from "./yjs-updates.js"

/**
 * Bounds on what one update may make Yjs do. `Y.applyUpdate` integrates
 * concurrent inserts at one position in time quadratic in their number, walks
 * a map key's whole history for a write without origin, copies an item's
 * content at every split, and every new client id stays in the document (and
 * slows every later apply) for good. These caps refuse such updates before
 * anything decodes them into objects, from work linear in their bytes.
 */
export interface UpdateCostLimits {
  /** Most structs (items, GC and skip ranges) in one update. */
  readonly maxUpdateStructs: number
  /** Most values (array elements, map values, characters) one update writes. */
  readonly maxUpdateValues: number
  /**
   * Most elements one update's values hold: each value, and every entry of
   * the arrays and objects nested in it (Yjs builds each one when it decodes
   * the update, before any rule can judge it).
   */
  readonly maxUpdateElements: number
  /** Structs may not be denser than one per this many bytes (beyond a first 64). */
  readonly minBytesPerStruct: number
  /** Most client ids one update writes under. */
  readonly maxUpdateClientIds: number
  /** Most client ids one user may add to one document per day, after a first `maxUpdateClientIds`. */
  readonly clientIdsPerUserPerDay: number
  /** Most structs of an update that its own delete set removes ("deleted on arrival"). */
  readonly maxDeletedOnArrival: number
  /** Most items of one update inserted at one position (one origin, or one map key without origin). */
  readonly maxSiblings: number
  /** Most steps Yjs may spend resolving concurrent inserts and splitting content for one update. */
  readonly maxIntegrationSteps: number
  /** Most ranges in one update's delete set. */
  readonly maxDeleteRanges: number
  /** Most structs of the document one update's delete set may visit. */
  readonly maxDeleteVisits: number
}

/** Defaults of {@link UpdateCostLimits} (see relay/README.md, "Update cost limits"). */
export const DEFAULT_UPDATE_COST_LIMITS: UpdateCostLimits = {
  // Halved from 1,500 / 2,000 (session 12): at those a frame at the caps cost the relay 60–100 ms of
  // CPU end to end; the SDK sends parts of half these (DEFAULT_UPDATE_PART_LIMITS).
  maxUpdateStructs: 700,
  maxUpdateValues: 1_000,
  // One value counts once as a value, however much it holds: a single 1 MB array or object cost
  // 100–375 ms to decode (an outside probe). 32,768 elements decode in 2–18 ms by shape (a single
  // object of that many keys the dearest); 1,000 messages of four fields are 5,000.
  maxUpdateElements: 32_768,
  minBytesPerStruct: 4,
  maxUpdateClientIds: 256,
  clientIdsPerUserPerDay: 200,
  maxDeletedOnArrival: 1_000,
  maxSiblings: 32,
  maxIntegrationSteps: 50_000,
  // 100,000 ranges (400 KB) cost 63–250 ms to scan and judge (an outside probe); a sync step 2 holds
  // its replica's whole delete set, which merges adjacent deletions: tens to hundreds of ranges in a
  // live document (epochs bound its garbage to 32 KiB).
  maxDeleteRanges: 10_000,
  maxDeleteVisits: 2_000_000,
}

/** The `rule` of a refusal by a cost limit, as the error frame carries it. */
export const CostRule = {
  structs: "update-structs",
  values: "update-values",
  elements: "update-elements",
  density: "struct-density",
  clientIds: "update-client-ids",
  clientIdGrowth: "client-id-growth",
  deletedOnArrival: "deleted-on-arrival",
  siblings: "siblings",
  integration: "integration-cost",
  deleteRanges: "delete-ranges",
  deleteVisits: "delete-visits",
} as const
/** Name of a {@link CostRule}. */
export type CostRule = (typeof CostRule)[keyof typeof CostRule]

/** What the cost check learnt about an update it let through. */
export interface UpdateCost {
  /** Client ids the update writes under that the document does not have yet. */
  readonly newClientIds: readonly number[]
  /** Structs in the update. */
  readonly structs: number
  /** Values it writes (array elements, map values, characters): what its messages, reactions and markers number. */
  readonly values: number
  /** The estimate of integration steps that was checked against the limit. */
  readonly integrationSteps: number
  /**
   * Whether its delete set reaches past what the document and the update
   * hold of some client: the rules refuse it (`schema`), and what its delete
   * set would visit was not checked (see {@link refuseUnknownDeletions}).
   */
  readonly deletesUnknown: boolean
}

/** The refusal of an update whose {@link UpdateCost.deletesUnknown}, as the rules word it. */
export function refuseUnknownDeletions(): never {
  throw new ParleyError(ErrorCode.FORBIDDEN, "the update deletes content the relay does not have", {
    rule: Rule.schema,
  })
}

/**
 * How far the cost scan got: the values it read before it let the update
 * through or refused it (a refusal by a limit or a decode failure past some
 * structs still cost the relay their reading), for charging a refused update
 * what it made the relay do.
 */
export interface ScanProgress {
  values: number
}

type Struct = Y.Item | Y.GC
type StoreInternals = { clients: Map<number, Struct[]> }
type TypeInternals = { _start: Y.Item | null; _map: Map<string, Y.Item> }

/** One struct as the scan reads it: only what integration cost depends on. */
interface Scanned {
  readonly client: number
  readonly clock: number
  readonly length: number
  /** False for GC and skip ranges, which Yjs never links into a type. */
  readonly item: boolean
  readonly deletedContent: boolean
  readonly originClient: number
  readonly originClock: number
  readonly rightClient: number
  readonly rightClock: number
  readonly parent: string | null
  readonly key: string | null
}

const scannedStart = (x: Scanned) => x.clock
const scannedLength = (x: Scanned) => x.length

const NONE = -1

function refuse(rule: CostRule, message: string, code: ErrorCode = ErrorCode.INVALID_UPDATE): never {
  throw new ParleyError(code, message, { rule })
}

/** Moves past `n` bytes, refusing to move past the end. */
function skipBytes(decoder: decoding.Decoder, n: number): void {
  if (decoder.pos + n > decoder.arr.length) throw new Error("unexpected end of update")
  decoder.pos += n
}

const skipString = (decoder: decoding.Decoder) => skipBytes(decoder, decoding.readVarUint(decoder))

/**
 * Deepest nesting of arrays and objects in a value the scan reads on: the
 * rules refuse values nested deeper than 32 (`isPlainJson`), and Yjs decodes
 * nesting by recursion, so a deep value would cost a stack overflow first.
 */
const MAX_NESTING = 64

/**
 * An object key counts as one more element per 2^3 = 8 of its UTF-8 bytes:
 * an object of 32,766 keys of 30 characters (1 MB) decoded in 60–150 ms
 * though it held no more elements than the cap (an outside probe), while
 * the schema's own keys are a letter or a word.
 */
export const KEY_BYTES_SHIFT = 3

/**
 * Moves past one lib0 `writeAny` value without building it (no strings
 * decoded, no objects made), with an explicit stack: nesting depth costs
 * memory, not call stack. Returns how many values it held (itself, and every
 * entry of the arrays and objects in it): what decoding it would build.
 */
function skipAny(decoder: decoding.Decoder): number {
  // Values still to skip per open array or object (objects: a key before each value).
  const left: number[] = [1]
  const objects: boolean[] = [false]
  let read = 0
  while (left.length > 0) {
    const top = left.length - 1
    if (left[top] === 0) {
      left.pop()
      objects.pop()
      continue
    }
    left[top]!--
    read++
    if (objects[top]) {
      // A key costs its bytes too (Yjs makes each a property name): one element per 8.
      const keyBytes = decoding.readVarUint(decoder)
      skipBytes(decoder, keyBytes)
      read += keyBytes >>> KEY_BYTES_SHIFT
    }
    const type = decoding.readUint8(decoder)
    switch (type) {
      case 127: // undefined
      case 126: // null
      case 121: // false
      case 120: // true
        break
      case 125:
        decoding.readVarInt(decoder)
        break
      case 124:
        skipBytes(decoder, 4)
        break
      case 123:
      case 122:
        skipBytes(decoder, 8)
        break
      case 119: // string
      case 116: // Uint8Array
        skipString(decoder)
        break
      case 118: // object
      case 117: // array
        if (left.length >= MAX_NESTING)
          refuse(CostRule.elements, `values nest arrays and objects at most ${MAX_NESTING} deep`)
        left.push(decoding.readVarUint(decoder))
        objects.push(type === 118)
        break
      default:
        throw new Error(`unknown value type ${type}`)
    }
  }
  return read
}

/**
 * Elements a JSON text of `bytes` may decode into (Yjs parses ContentJSON,
 * embeds and formats with `JSON.parse`): one per two bytes, as in `[0,0,0]`.
 */
const jsonElements = (bytes: number) => Math.ceil(bytes / 2)

/** Moves past a string; returns its length in bytes. */
function skipStringBytes(decoder: decoding.Decoder): number {
  const n = decoding.readVarUint(decoder)
  skipBytes(decoder, n)
  return n
}

/** What one item's content is: its clock length, and the elements decoding it builds. */
interface ContentSize {
  length: number
  elements: number
}

/** Reads past one item's content into `size`. */
function skipContent(decoder: decoding.Decoder, ref: number, size: ContentSize): void {
  let length = 1
  let elements = 1
  switch (ref) {
    case 1: // ContentDeleted
      length = decoding.readVarUint(decoder)
      elements = 0
      break
    case 2: {
      // ContentJSON
      length = decoding.readVarUint(decoder)
      elements = 0
      for (let i = 0; i < length; i++) elements += jsonElements(skipStringBytes(decoder))
      break
    }
    case 3: // ContentBinary
      skipString(decoder)
      break
    case 4: // ContentString: Yjs counts UTF-16 units
      length = decoding.readVarString(decoder).length
      elements = length
      break
    case 5: // ContentEmbed
      elements = jsonElements(skipStringBytes(decoder))
      break
    case 6: // ContentFormat
      skipString(decoder)
      elements = jsonElements(skipStringBytes(decoder))
      break
    case 7: {
      // ContentType: XmlElement and XmlHook carry a name
      const typeRef = decoding.readVarUint(decoder)
      if (typeRef === 3 || typeRef === 5) skipString(decoder)
      break
    }
    case 8: {
      // ContentAny
      length = decoding.readVarUint(decoder)
      elements = 0
      for (let i = 0; i < length; i++) elements += skipAny(decoder)
      break
    }
    case 9: // ContentDoc: a guid, and options Yjs builds a Doc with
      skipString(decoder)
      elements = skipAny(decoder)
      break
    default:
      throw new Error(`unknown content ${ref}`)
  }
  size.length = length
  size.elements = elements
}

/**
 * Reads the update's struct section without building Yjs objects, refusing as
 * soon as a count passes its limit: the client count is the first number of
 * the update and each client's struct count precedes its structs, so an
 * oversized update is refused after reading a few bytes, never all of them.
 */
function scanStructs(
  decoder: decoding.Decoder,
  bytes: number,
  limits: UpdateCostLimits,
  scanned: ScanProgress,
): { structs: Scanned[]; values: number } {
  const clients = decoding.readVarUint(decoder)
  if (clients > limits.maxUpdateClientIds)
    refuse(CostRule.clientIds, `an update writes under at most ${limits.maxUpdateClientIds} client ids`)
  const maxStructs = Math.min(
    limits.maxUpdateStructs,
    64 + Math.floor(bytes / Math.max(1, limits.minBytesPerStruct)),
  )
  const structs: Scanned[] = []
  let values = 0
  let elements = 0
  const size: ContentSize = { length: 0, elements: 0 }
  for (let c = 0; c < clients; c++) {
    const count = decoding.readVarUint(decoder)
    const client = decoding.readVarUint(decoder)
    let clock = decoding.readVarUint(decoder)
    if (structs.length + count > maxStructs) {
      if (structs.length + count > limits.maxUpdateStructs)
        refuse(CostRule.structs, `an update holds at most ${limits.maxUpdateStructs} structs`)
      refuse(CostRule.density, `an update holds at most one struct per ${limits.minBytesPerStruct} bytes`)
    }
    for (let i = 0; i < count; i++) {
      const info = decoding.readUint8(decoder)
      const ref = info & 0b11111
      if (ref === 0 || ref === 10) {
        // GC or skip: a clock range with no content.
        const length = decoding.readVarUint(decoder)
        structs.push({
          client,
          clock,
          length,
          item: false,
          deletedContent: true,
          originClient: NONE,
          originClock: 0,
          rightClient: NONE,
          rightClock: 0,
          parent: null,
          key: null,
        })
        clock += length
        continue
      }
      let originClient = NONE
      let originClock = 0
      let rightClient = NONE
      let rightClock = 0
      if (info & 0x80) {
        originClient = decoding.readVarUint(decoder)
        originClock = decoding.readVarUint(decoder)
      }
      if (info & 0x40) {
        rightClient = decoding.readVarUint(decoder)
        rightClock = decoding.readVarUint(decoder)
      }
      let parent: string | null = null
      let key: string | null = null
      if ((info & 0xc0) === 0) {
        if (decoding.readVarUint(decoder) === 1) parent = decoding.readVarString(decoder)
        else {
          // A nested parent, named by id: what it is costs nothing to know here.
          decoding.readVarUint(decoder)
          decoding.readVarUint(decoder)
          parent = ""
        }
        if (info & 0x20) key = decoding.readVarString(decoder)
      }
      skipContent(decoder, ref, size)
      const length = size.length
      // Content Yjs keeps costs per value (messages are indexed, sequenced, judged one by one).
      if (ref !== 1) {
        values += length
        scanned.values = values
        if (values > limits.maxUpdateValues)
          refuse(CostRule.values, `an update writes at most ${limits.maxUpdateValues} values`)
      }
      elements += size.elements
      if (elements > limits.maxUpdateElements)
        refuse(CostRule.elements, `an update's values hold at most ${limits.maxUpdateElements} elements`)
      structs.push({
        client,
        clock,
        length,
        item: true,
        deletedContent: ref === 1,
        originClient,
        originClock,
        rightClient,
        rightClock,
        parent,
        key,
      })
      clock += length
    }
  }
  return { structs, values }
}

/**
 * A client's delete ranges, flat: clock, length, clock, length, … in clock
 * order, merged. Flat, because a delete set of 10,000 ranges as 10,000 pairs
 * (and as many again once merged) cost more in allocation than in reading.
 */
type Ranges = number[]

/** Reads the delete set, merged per client and sorted, refusing past `maxDeleteRanges`. */
function scanDeleteSet(decoder: decoding.Decoder, limits: UpdateCostLimits): Map<number, Ranges> {
  const ranges = new Map<number, Ranges>()
  const clients = decoding.readVarUint(decoder)
  let total = 0
  for (let c = 0; c < clients; c++) {
    const client = decoding.readVarUint(decoder)
    const count = decoding.readVarUint(decoder)
    total += count
    if (total > limits.maxDeleteRanges)
      refuse(CostRule.deleteRanges, `an update's delete set holds at most ${limits.maxDeleteRanges} ranges`)
    let list = ranges.get(client)
    if (!list) {
      list = []
      ranges.set(client, list)
    }
    for (let i = 0; i < count; i++) list.push(decoding.readVarUint(decoder), decoding.readVarUint(decoder))
  }
  for (const [client, list] of ranges) ranges.set(client, merged(list))
  return ranges
}

/** `list` (flat ranges in any order) sorted by clock, overlapping and adjacent ones merged. */
function merged(list: Ranges): Ranges {
  // Yjs writes each client's ranges sorted and merged: only another writer's need sorting.
  let sorted = true
  for (let i = 2; i < list.length && sorted; i += 2) sorted = list[i - 2]! <= list[i]!
  let source = list
  if (!sorted) {
    const order = Array.from({ length: list.length / 2 }, (_, i) => i)
    order.sort((a, b) => list[2 * a]! - list[2 * b]!)
    source = []
    for (const i of order) source.push(list[2 * i]!, list[2 * i + 1]!)
  }
  const out: Ranges = []
  for (let i = 0; i < source.length; i += 2) {
    const clock = source[i]!
    const len = source[i + 1]!
    const last = out.length - 2
    if (last >= 0 && clock <= out[last]! + out[last + 1]!)
      out[last + 1] = Math.max(out[last + 1]!, clock + len - out[last]!)
    else out.push(clock, len)
  }
  return out
}

const covers = (list: Ranges | undefined, clock: number, end: number): boolean => {
  if (!list) return false
  let lo = 0
  let hi = list.length / 2 - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const start = list[2 * mid]!
    if (end <= start) hi = mid - 1
    else if (clock >= start + list[2 * mid + 1]!) lo = mid + 1
    else return true
  }
  return false
}

/**
 * Refuses (throws a {@link ParleyError}, `INVALID_UPDATE` with a {@link CostRule}
 * as `rule`) an update whose integration into `doc` would cost more than the
 * limits allow, and says what it adds otherwise. Reads `doc`, never changes it.
 * An update Yjs cannot decode is refused as `INVALID_UPDATE` without a rule.
 *
 * Cost: linear in the update's bytes, plus binary searches in the document's
 * struct lists and walks of its linked lists that stop at `maxIntegrationSteps`.
 * `scanned` is told the values read, refused or not.
 */
export function checkUpdateCost(
  doc: Y.Doc,
  update: Uint8Array,
  limits: UpdateCostLimits,
  scanned: ScanProgress = { values: 0 },
): UpdateCost {
  let structs: Scanned[]
  let values: number
  let deletes: Map<number, Ranges>
  const decoder = decoding.createDecoder(update)
  try {
    ;({ structs, values } = scanStructs(decoder, update.length, limits, scanned))
    deletes = scanDeleteSet(decoder, limits)
  } catch (error) {
    if (error instanceof ParleyError) throw error
    throw new ParleyError(ErrorCode.INVALID_UPDATE, "the update cannot be decoded", { cause: error })
  }
  // Yjs stops reading after the delete set: bytes after it would be stored and sent to every member
  // as they came, content no rule reads (an outside probe had 1 MB of its own after each message).
  if (decoder.pos !== update.length)
    throw new ParleyError(
      ErrorCode.INVALID_UPDATE,
      `the update has ${update.length - decoder.pos} bytes after its end`,
    )
  const store = (doc.store as unknown as StoreInternals).clients
  const stateOf = (client: number): number => {
    const list = store.get(client)
    if (!list || list.length === 0) return 0
    const last = list[list.length - 1]!
    return last.id.clock + last.length
  }
  const structAt = (client: number, clock: number): Struct | undefined => {
    const list = store.get(client)
    if (!list || clock < 0 || clock >= stateOf(client)) return undefined
    return list[Y.findIndexSS(list as Y.Item[], clock)]
  }

  // Client ids, and what is new: Yjs skips what the document already has.
  const writers = new Set<number>()
  const fresh: Scanned[] = []
  for (const s of structs) {
    writers.add(s.client)
    if (s.clock + s.length > stateOf(s.client)) fresh.push(s)
  }
  if (writers.size > limits.maxUpdateClientIds)
    refuse(CostRule.clientIds, `an update writes under at most ${limits.maxUpdateClientIds} client ids`)
  const newClientIds = [...writers].filter((client) => stateOf(client) === 0)

  let deletedOnArrival = 0
  for (const s of fresh) if (covers(deletes.get(s.client), s.clock, s.clock + s.length)) deletedOnArrival++
  if (deletedOnArrival > limits.maxDeletedOnArrival)
    refuse(
      CostRule.deletedOnArrival,
      `an update may delete at most ${limits.maxDeletedOnArrival} of its own structs on arrival`,
    )

  // Items at one position: one origin, or (without origin) one map key or one array start.
  const positionOf = (s: Scanned): string =>
    s.originClient !== NONE
      ? `${s.originClient}:${s.originClock}`
      : s.rightClient !== NONE
        ? `r${s.rightClient}:${s.rightClock}`
        : `p${s.parent}\u0000${s.key ?? ""}`
  const siblings = new Map<string, number>()
  let items = 0
  for (const s of fresh) {
    if (!s.item) continue
    items++
    const position = positionOf(s)
    const n = (siblings.get(position) ?? 0) + 1
    siblings.set(position, n)
    if (n > limits.maxSiblings)
      refuse(CostRule.siblings, `an update inserts at most ${limits.maxSiblings} items at one position`)
  }

  let steps = 0
  const spend = (n: number): void => {
    steps += n
    if (steps > limits.maxIntegrationSteps)
      refuse(CostRule.integration, "the update would cost the relay too much to integrate")
  }
  // Splitting an item copies the part of its content after the split.
  const split = (client: number, clock: number): void => {
    const struct = structAt(client, clock)
    if (struct && struct.id.clock !== clock)
      spend(1 + (struct.deleted ? 0 : struct.length - (clock - struct.id.clock)))
  }
  const chainLengths = new Map<string, number>()
  const rooted = rootedCounts()
  const firsts = new Map<string, Scanned>()
  for (const s of fresh) if (s.item) firsts.set(`${s.client}:${s.clock}`, s)
  // Positions where one sibling is inserted right before the other (its right origin); Yjs integrates
  // that one second (it waits for its right origin), right next to the first: no conflict to resolve.
  const paired = new Set<string>()
  for (const s of fresh) {
    if (!s.item || s.rightClient === NONE) continue
    const right = firsts.get(`${s.rightClient}:${s.rightClock}`)
    if (right && right !== s && positionOf(right) === positionOf(s)) paired.add(positionOf(s))
  }

  for (const s of fresh) {
    if (!s.item) continue
    const position = positionOf(s)
    // Each sibling's conflict resolution may pass over every item this update brings (a map
    // write without origin twice: back to the key's first item, then forward). One exception
    // costs nothing: a pair where one is inserted right before the other, as a deleted message's
    // placeholder is before the record it replaces.
    const group = siblings.get(position)!
    if (group > 1 && !(group === 2 && paired.has(position)))
      spend(s.originClient === NONE && s.rightClient === NONE && s.key !== null ? 2 * items : items)
    if (s.originClient !== NONE) {
      split(s.originClient, s.originClock)
      if (s.rightClient !== NONE) split(s.rightClient, s.rightClock)
      const origin = structAt(s.originClient, s.originClock)
      if (origin instanceof Y.Item) spend(scanAfter(origin, s))
    } else if (s.rightClient !== NONE) {
      split(s.rightClient, s.rightClock)
      const right = structAt(s.rightClient, s.rightClock)
      // Inserted at a type's start: conflicts are resolved from its first item on.
      if (right instanceof Y.Item && right.left !== null) spend(scanFrom(right.left, s))
    } else if (s.parent !== null && s.parent !== "") {
      const type = doc.share.get(s.parent) as unknown as TypeInternals | undefined
      if (!type) continue
      if (s.key === null) {
        if (type._start) spend(scanFrom(type._start, s))
        continue
      }
      // A map write without origin walks the key's whole history back to its first item.
      const k = `${s.parent}\u0000${s.key}`
      let chain = chainLengths.get(k)
      if (chain === undefined) {
        chain = 0
        for (let o = type._map.get(s.key) ?? null; o !== null; o = o.left) {
          chain++
          if (steps + chain > limits.maxIntegrationSteps)
            refuse(CostRule.integration, "the update would cost the relay too much to integrate")
        }
        chainLengths.set(k, chain)
      }
      if (chain > 0) spend(2 * chain + items)
    }
  }

  // Deleting what neither the document nor the update holds, which the rules refuse (Yjs would keep it
  // pending): told from the numbers read, so that the caller refuses it before anything decodes it.
  // Not when the update follows changes of its own the relay lacks (a gap before a client's first
  // struct): the path tells its sender to send its pending work again, which holds what it deletes.
  const updateEnds = new Map<number, number>()
  let gap = false
  for (const s of structs) {
    if (!updateEnds.has(s.client) && s.clock > stateOf(s.client)) gap = true
    updateEnds.set(s.client, Math.max(updateEnds.get(s.client) ?? 0, s.clock + s.length))
  }
  let deletesUnknown = false
  if (!gap)
    for (const [client, list] of deletes) {
      const last = list.length - 2
      if (last >= 0 && list[last]! + list[last + 1]! > Math.max(stateOf(client), updateEnds.get(client) ?? 0))
        deletesUnknown = true
    }
  if (deletesUnknown)
    return { newClientIds, structs: structs.length, values, integrationSteps: steps, deletesUnknown }

  // The delete set: every struct of the document in a range is visited; live ones may be split.
  let visits = 0
  for (const [client, list] of deletes) {
    const structList = store.get(client)
    if (!structList || structList.length === 0) continue
    const end = stateOf(client)
    for (let i = 0; i < list.length; i += 2) {
      const clock = list[i]!
      const len = list[i + 1]!
      // An empty range (which Yjs never writes, and applies as nothing) reaches no struct.
      if (clock >= end || len <= 0) continue
      const from = Y.findIndexSS(structList as Y.Item[], clock)
      const to = Y.findIndexSS(structList as Y.Item[], Math.min(end, clock + len) - 1)
      visits += to - from + 1
      if (visits > limits.maxDeleteVisits)
        refuse(CostRule.deleteVisits, "the update's delete set reaches too much of the document")
      split(client, clock)
      if (clock + len < end) split(client, clock + len)
    }
  }
  return { newClientIds, structs: structs.length, values, integrationSteps: steps, deletesUnknown }

  /**
   * Replays Yjs's conflict resolution (`Item.integrate`) over the document's
   * items after `origin`, for an item of the update inserted there: the steps
   * it takes over content the document already has. Items of the update that
   * land in between are paid for by the sibling rule above.
   */
  function scanAfter(origin: Y.Item, s: Scanned): number {
    // Inside an item, the split-off rest is the first item after the origin (and descends from it).
    const interior = s.originClock < origin.id.clock + origin.length - 1
    if (interior && s.rightClient === s.originClient && s.rightClock === s.originClock + 1) return 0
    const start = interior ? origin : origin.right
    if (!interior && start !== null && s.rightClient !== NONE) {
      // Adjacent to its right origin: nothing to resolve.
      if (start.id.client === s.rightClient && start.id.clock === s.rightClock) return 0
    }
    return start === null ? 0 : scanFrom(start, s, interior ? origin : undefined)
  }

  /**
   * For each item of the document, how many new items of the update descend
   * from it (their origin, or their origin's origin and so on, is that item):
   * Yjs places them after it, where a conflict scan passing it passes them too.
   */
  function rootedCounts(): Map<Struct, number> {
    const byClient = new Map<number, Scanned[]>()
    for (const x of fresh) {
      if (!x.item) continue
      const list = byClient.get(x.client)
      if (list) list.push(x)
      else byClient.set(x.client, [x])
    }
    const updateItemAt = (client: number, clock: number): Scanned | undefined => {
      const list = byClient.get(client)
      return list && findByClock(list, clock, scannedStart, scannedLength)
    }
    const roots = new Map<Scanned, Struct | null>()
    const counts = new Map<Struct, number>()
    for (const x of fresh) {
      if (!x.item) continue
      const path: Scanned[] = []
      const onPath = new Set<Scanned>()
      let current = x
      let root: Struct | null = null
      for (;;) {
        const known = roots.get(current)
        if (known !== undefined) {
          root = known
          break
        }
        path.push(current)
        onPath.add(current)
        if (current.originClient === NONE) break
        if (current.originClock < stateOf(current.originClient)) {
          root = structAt(current.originClient, current.originClock) ?? null
          break
        }
        const next = updateItemAt(current.originClient, current.originClock)
        // Missing or circular origins never integrate (the policy refuses them).
        if (!next || onPath.has(next)) break
        current = next
      }
      for (const p of path) roots.set(p, root)
      if (root) counts.set(root, (counts.get(root) ?? 0) + 1)
    }
    return counts
  }

  function scanFrom(first: Y.Item, s: Scanned, seen?: Y.Item): number {
    const scanned = new Set<Struct>()
    if (seen) scanned.add(seen)
    let n = 0
    for (let o: Y.Item | null = seen ? first.right : first; o !== null; o = o.right) {
      if (s.rightClient !== NONE && o.id.client === s.rightClient && s.rightClock >= o.id.clock)
        if (s.rightClock < o.id.clock + o.length) break
      // The update's own items placed after a document item the scan passes are passed too.
      n += 1 + (rooted.get(o) ?? 0)
      if (steps + n > limits.maxIntegrationSteps)
        refuse(CostRule.integration, "the update would cost the relay too much to integrate")
      scanned.add(o)
      const oo = o.origin
      const sameOrigin =
        oo === null
          ? s.originClient === NONE
          : oo.client === s.originClient && oo.clock === s.originClock && s.originClient !== NONE
      if (sameOrigin) {
        if (o.id.client < s.client) continue
        const ro = o.rightOrigin
        const sameRight =
          ro === null
            ? s.rightClient === NONE
            : ro.client === s.rightClient && ro.clock === s.rightClock && s.rightClient !== NONE
        if (sameRight) break
        continue
      }
      const parent = oo ? structAt(oo.client, oo.clock) : undefined
      if (parent && scanned.has(parent)) continue
      break
    }
    return n
  }
}

/**
 * Structs and values of `update` as the caps count them (values outside
 * deleted content), by decoding it whole: for building updates that fit the
 * caps (the warm-up, the frame-cost shapes), not for checking one on arrival
 * ({@link checkUpdateCost} does that without decoding content).
 */
export function capCounts(update: Uint8Array): { structs: number; values: number } {
  const { structs } = Y.decodeUpdate(update)
  let values = 0
  for (const s of structs)
    if (s instanceof Y.Item && !(s.content instanceof Y.ContentDeleted)) values += s.length
  return { structs: structs.length, values }
}
