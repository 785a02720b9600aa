import { foldedHistory, type MessageId, sealedHistory, sealedSegments, sealedThrough } from "@parley/shared"
import type * as Y from "yjs"
import { type IdFilter, idHashes } from "./id-filter.js"

/**
 * The filters of one size (and number of probes), bit-sliced: for each bit
 * `p` of the filters and each group of 32 consecutive segments (a slot), one
 * word whose bit `i` is bit `p` of segment `32 · group + i`'s filter, the
 * slots' words for one bit side by side (`words[p · stride + slot]`). A
 * probe then tests every segment at once, reading adjacent words: an id no
 * segment holds is told in a dozen passes over a few cache lines, where
 * probing each filter (or each group's words apart) cost a cache miss per
 * filter.
 */
interface Slices {
  readonly size: number
  readonly probes: number
  /** Group number of each slot. */
  readonly groups: number[]
  readonly slotOf: Map<number, number>
  /** Slots the words have room for. */
  stride: number
  words: Int32Array
  /** Per slot, while a check runs: the segments still possible. */
  maybe: Int32Array
}

/**
 * The relay's filters of a loaded conversation's sealed message ids, one per
 * segment by index (see `IdFilter`), so that the rules can tell a new
 * message's id from every sealed one without reading sealed history: a
 * segment is read only when its filter says it may hold the id. Held
 * bit-sliced ({@link Slices}): the same memory as the filters.
 */
export class SealedIdFilters {
  private count = 0
  /** By size and probes (nearly always one: full segments). */
  private readonly slices = new Map<string, Slices>()
  /** Names these filters in {@link answers} (a number: an answer must not keep the filters alive). */
  private readonly serial = nextSerial++

  /** Segments `0 ..= covered - 1` have their filter here. */
  get covered(): number {
    return this.count
  }

  /**
   * Holds the filter of segment `index` when it is the next one; any other is
   * left (one held already keeps its ids: a purge keeps them; one past a gap
   * is read from the store later).
   */
  set(index: number, filter: IdFilter): void {
    if (index !== this.count) return
    const key = `${filter.size}:${filter.probes}`
    let slices = this.slices.get(key)
    if (!slices) {
      slices = {
        size: filter.size,
        probes: filter.probes,
        groups: [],
        slotOf: new Map(),
        stride: 0,
        words: new Int32Array(0),
        maybe: new Int32Array(0),
      }
      this.slices.set(key, slices)
    }
    const group = index >>> 5
    let slot = slices.slotOf.get(group)
    if (slot === undefined) slot = addSlot(slices, group)
    filter.sliceInto(slices.words, slot, slices.stride, 1 << (index & 31))
    this.count++
  }

  /** Segments whose filter says they may hold `id`, ascending. */
  candidates(id: MessageId): readonly number[] {
    const known = answers.get(id)
    if (known !== undefined && known.serial === this.serial && known.count === this.count)
      return known.candidates
    const [h1, h2] = idHashes(id)
    let found: number[] | undefined
    for (const { size, probes, groups, stride, words, maybe } of this.slices.values()) {
      const slots = groups.length
      maybe.fill(-1, 0, slots)
      let possible = slots
      let bit = h1 % size
      let step = h2 % size
      for (let i = 0; i < probes && possible > 0; i++) {
        const base = bit * stride
        for (let slot = 0; slot < slots; slot++) {
          const was = maybe[slot]!
          if (was === 0) continue
          const now = was & words[base + slot]!
          maybe[slot] = now
          if (now === 0) possible--
        }
        bit = (bit + step) % size
        step = (step + i) % size
      }
      if (possible === 0) continue
      found ??= []
      for (let slot = 0; slot < slots; slot++)
        for (let left = maybe[slot]!; left !== 0; left &= left - 1)
          found.push(groups[slot]! * 32 + 31 - Math.clz32(left & -left))
    }
    const candidates = found ? found.sort((a, b) => a - b) : NONE
    if (answers.size >= MAX_ANSWERS) answers.clear()
    answers.set(id, { serial: this.serial, count: this.count, candidates })
    return candidates
  }
}

/** Gives `group` a slot in `slices`, doubling the room (words copied to the new stride) when full. */
function addSlot(slices: Slices, group: number): number {
  const slot = slices.groups.length
  if (slot >= slices.stride) {
    const stride = Math.max(4, slices.stride * 2)
    const words = new Int32Array(slices.size * stride)
    // Word by word: a view per bit (`subarray`, ~12,000 of them for a full segment's filter) cost
    // about 5 ms on the conversation's first change, for at most a few words each.
    const was = slices.words
    const wasStride = slices.stride
    for (let bit = 0; bit < slices.size && slot > 0; bit++)
      for (let s = 0, from = bit * wasStride, to = bit * stride; s < slot; s++) words[to + s] = was[from + s]!
    slices.words = words
    slices.stride = stride
    slices.maybe = new Int32Array(stride)
  }
  slices.groups.push(group)
  slices.slotOf.set(group, slot)
  return slot
}

const NONE: readonly number[] = []

let nextSerial = 0

/**
 * Answers the filters gave lately, of every loaded conversation (bounded per
 * relay, not per conversation): the update path asks about every id of a
 * change twice (settling which segments to read, then the rules), all of the
 * first pass before any of the second. An answer holds for the filters that
 * gave it while they hold the same segments (`count`).
 */
const answers = new Map<
  MessageId,
  { readonly serial: number; readonly count: number; readonly candidates: readonly number[] }
>()

/** Answers kept at most: the ids of a few changes at the caps. */
const MAX_ANSWERS = 4_096

const registry = new WeakMap<Y.Doc, SealedIdFilters>()

/** The sealed id filters the relay holds for `doc`, if it has attached them. */
export const sealedIdFilters = (doc: Y.Doc): SealedIdFilters | undefined => registry.get(doc)

/** Attaches (empty) sealed id filters to `doc`, or returns those attached already. */
export function attachSealedIdFilters(doc: Y.Doc): SealedIdFilters {
  let filters = registry.get(doc)
  if (!filters) {
    filters = new SealedIdFilters()
    registry.set(doc, filters)
  }
  return filters
}

/** How many segments `doc`'s live document names (indexes `0 ..= n - 1`: folded ones, then listed ones). */
export function namedSegments(doc: Y.Doc): number {
  const last = sealedSegments(doc).at(-1)
  return last ? last.index + 1 : (foldedHistory(doc)?.segments ?? 0)
}

/**
 * What the relay knows of `id` in `doc`'s sealed history:
 * - `sealed`: a segment the relay holds has it;
 * - `absent`: no segment has it (each whose filter may hold it is held, and
 *   does not), or nothing is sealed;
 * - `unchecked`: a segment that may hold it is not held (its filter says
 *   so, or it has none here): the update path settles this first
 *   (`HistoryKeeper.settleSealedIds`), so the rules see it only when that
 *   could not be done (the change needed more segments than it may read: a
 *   retryable refusal comes first), and refuse.
 *
 * Without filters attached (a relay that does not seal), what the held
 * segments say, as before filters existed.
 */
export function sealedIdStatus(doc: Y.Doc, id: MessageId): "sealed" | "absent" | "unchecked" {
  const history = sealedHistory(doc)
  if (history.entry(id)) return "sealed"
  if (sealedThrough(doc) === 0) return "absent"
  const filters = registry.get(doc)
  if (!filters) return "absent"
  // A segment without its filter here is known only when held.
  for (let index = filters.covered, named = namedSegments(doc); index < named; index++)
    if (!history.has(index)) return "unchecked"
  for (const index of filters.candidates(id)) if (!history.has(index)) return "unchecked"
  return "absent"
}
