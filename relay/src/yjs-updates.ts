import { ErrorCode, isMessageId, type MessageId, ParleyError, storedRecordId, TopLevel } from "@parley/shared"
import * as Y from "yjs"

/** What the update path needs to know about an incoming update, learnt without applying it. */
export interface InspectedUpdate {
  /** The Yjs client ids whose structs the update carries. */
  readonly clientIds: ReadonlySet<number>
  /** For each of those clients, the clock just past the update's last struct of it. */
  readonly ends: ReadonlyMap<number, number>
  /** True when applying it would change nothing (everything in it is already in the document). */
  readonly noop: boolean
  /**
   * True when its delete set names a participant's record the document has
   * deleted already: a re-sent removal, or one that a concurrent write made
   * remove nothing (which the rules refuse, see `checkStaleRemovals`).
   */
  readonly redeletesParticipants: boolean
  /**
   * Clients of which the update re-sends structs the document already holds,
   * with the document's clock for each (a client re-sending pending work); empty
   * in the usual case.
   */
  readonly known: ReadonlyMap<number, number>
  /**
   * Clients whose structs in the update begin past what the document has of
   * them, with the document's clock for each: the update follows changes of
   * that client the relay never stored (refused while storage failed, or lost
   * with a relay that had not acknowledged them). Empty in the usual case.
   */
  readonly gaps: ReadonlyMap<number, number>
}

type Decoded = ReturnType<typeof Y.decodeUpdate>

/** The usual case: no client's structs begin past what the document has. */
const NO_GAPS: ReadonlyMap<number, number> = new Map()
const decodedUpdates = new WeakMap<Uint8Array, Decoded>()

/**
 * `Y.decodeUpdate`, once per update: the update path inspects an update and
 * the policy reads it again; both get the same decoded structs (read, never
 * changed). Throws what Yjs throws.
 */
export function decodeOnce(update: Uint8Array): Decoded {
  let decoded = decodedUpdates.get(update)
  if (!decoded) {
    decoded = Y.decodeUpdate(update)
    decodedUpdates.set(update, decoded)
  }
  return decoded
}

/**
 * The message ids of every stored record (message or placeholder) `update`
 * may write, wherever it writes it: values of its items that have a record's
 * id field. More than the records it writes (a superset is what is wanted:
 * the ids to look up in sealed history before the rules judge the update),
 * from the decoding the rules read again. Throws what Yjs throws.
 */
export function recordIdsIn(update: Uint8Array): MessageId[] {
  const ids: MessageId[] = []
  for (const struct of decodeOnce(update).structs) {
    if (!(struct instanceof Y.Item) || !(struct.content instanceof Y.ContentAny)) continue
    for (const value of struct.content.arr) {
      const id = storedRecordId(value)
      if (id !== undefined && isMessageId(id)) ids.push(id)
    }
  }
  return ids
}

/**
 * Decodes `update` against `doc` without touching it. Throws INVALID_UPDATE
 * when Yjs cannot decode it, so that such bytes are never stored.
 */
export function inspectUpdate(doc: Y.Doc, update: Uint8Array): InspectedUpdate {
  let decoded: ReturnType<typeof Y.decodeUpdate>
  try {
    decoded = decodeOnce(update)
  } catch (error) {
    throw new ParleyError(ErrorCode.INVALID_UPDATE, "the update cannot be decoded", { cause: error })
  }
  const clientIds = new Set<number>()
  const ends = new Map<number, number>()
  // New when it reaches past what the document has of its client (compared client by client:
  // encoding the document's whole state vector would cost one step per client it ever had).
  let news = false
  const known = new Map<number, number>()
  let gaps: Map<number, number> | undefined
  for (const struct of decoded.structs) {
    const client = struct.id.client
    clientIds.add(client)
    const state = Y.getState(doc.store, client)
    // A client's structs come in clock order: its first one says whether earlier ones are missing.
    if (!ends.has(client) && struct.id.clock > state) {
      gaps ??= new Map()
      gaps.set(client, state)
    }
    const end = struct.id.clock + struct.length
    if (end > (ends.get(client) ?? 0)) ends.set(client, end)
    if (end > state) news = true
    if (struct.id.clock < state) known.set(client, state)
  }
  const redeleted = { participants: false }
  const noop = !news && deletesAlreadyApplied(doc, decoded.ds, redeleted)
  return {
    clientIds,
    ends,
    noop,
    known,
    gaps: gaps ?? NO_GAPS,
    redeletesParticipants: noop && redeleted.participants,
  }
}

// Every reconnecting client re-sends its whole delete set in sync step 2; storing
// it again each time would grow the log for nothing.
function deletesAlreadyApplied(
  doc: Y.Doc,
  ds: ReturnType<typeof Y.decodeUpdate>["ds"],
  redeleted: { participants: boolean },
): boolean {
  const participants = doc.share.get(TopLevel.participants)
  for (const [client, ranges] of ds.clients) {
    const structs = doc.store.clients.get(client)
    if (!structs || structs.length === 0) return false
    const last = structs[structs.length - 1]!
    const known = last.id.clock + last.length
    for (const { clock, len } of ranges) {
      if (clock + len > known) return false
      for (let i = Y.findIndexSS(structs, clock); i < structs.length; i++) {
        const struct = structs[i]!
        if (struct.id.clock >= clock + len) break
        if (!struct.deleted) return false
        if (participants && struct instanceof Y.Item && struct.parent === participants)
          redeleted.participants = true
      }
    }
  }
  return true
}

/**
 * The entry of `list` (sorted by clock, ranges not overlapping) whose range
 * `[start, start + length)` holds `clock`, by binary search.
 */
export function findByClock<T>(
  list: readonly T[],
  clock: number,
  start: (entry: T) => number,
  length: (entry: T) => number,
): T | undefined {
  let lo = 0
  let hi = list.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1
    const entry = list[mid]!
    if (clock < start(entry)) hi = mid - 1
    else if (clock >= start(entry) + length(entry)) lo = mid + 1
    else return entry
  }
  return undefined
}
