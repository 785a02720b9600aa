import { foldedHistory, type MessageId, sealedHistory, sealedSegments, sealedThrough } from "@parley/shared"
import type * as Y from "yjs"
import { type IdFilter, idHashes } from "./id-filter.js"

/**
 * The relay's filters of a loaded conversation's sealed message ids, one per
 * segment by index (see `IdFilter`), so that the rules can tell a new
 * message's id from every sealed one without reading sealed history: a
 * segment is read only when its filter says it may hold the id.
 */
export class SealedIdFilters {
  private readonly filters: IdFilter[] = []

  /** Segments `0 ..= covered - 1` have their filter here. */
  get covered(): number {
    return this.filters.length
  }

  /**
   * Holds segment `index`'s filter: the next one (or one held already, as
   * the same ids: a purge keeps them); one past a gap is left for a later
   * load from the store.
   */
  set(index: number, filter: IdFilter): void {
    if (index <= this.filters.length) this.filters[index] = filter
  }

  /** Segments whose filter says they may hold `id`, ascending. */
  candidates(id: MessageId): number[] {
    const [h1, h2] = idHashes(id)
    const found: number[] = []
    for (let i = 0; i < this.filters.length; i++) if (this.filters[i]!.mayHoldHashed(h1, h2)) found.push(i)
    return found
  }
}

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
 * - `unchecked`: the filters attached do not cover every segment, or one
 *   that may hold it is not held: the update path settles this first
 *   (`HistoryKeeper.settleSealedIds`), so the rules see it only when that
 *   failed, and refuse.
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
  if (filters.covered < namedSegments(doc)) return "unchecked"
  for (const index of filters.candidates(id)) if (!history.has(index)) return "unchecked"
  return "absent"
}
