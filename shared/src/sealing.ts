import type * as Y from "yjs"
import { typesOf } from "./document.js"
import {
  applyFold,
  encodeSegment,
  encodeSegmentSummary,
  encodeTombstone,
  type FoldPlan,
  foldedHistory,
  HistoryDefaults,
  planFold,
  type SealedEntry,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  summarizeSegment,
} from "./history.js"
import type { ConversationId, MessageId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import { encodePin } from "./priorities.js"
import {
  type DeletedMessageRecord,
  decodeSequenceRecord,
  encodeSequenceRecord,
  isDeletedRecord,
  Limits,
  type MessageRecord,
  storedRecordId,
} from "./schema.js"

/** When the relay seals: see shared `HistoryDefaults`. */
export interface SealingOptions {
  /** Sequenced messages per segment. */
  readonly segmentSize: number
  /** Sequenced messages the live document keeps after sealing. */
  readonly keepLive: number
  /** Client ids in the live document beyond which sealing also starts a fresh epoch (see `startEpoch`). */
  readonly epochClientIds: number
  /** Segment summaries the live document keeps after a fold (default `HistoryDefaults.keepSummaries`). */
  readonly keepSummaries?: number
  /** Summaries folded into one directory page at once; 0 = never fold (default `HistoryDefaults.foldSize`). */
  readonly foldSize?: number
}

/** A segment ready to store, and what sealing it removes from the live document. */
export interface SealPlan {
  readonly segment: Segment
  readonly bytes: Uint8Array
  readonly summary: SegmentSummary
  /** Positions in `order` of the sequence records it seals (the last one perhaps only in part). */
  readonly orderPositions: readonly number[]
  /**
   * When the segment ends inside a sequence record: that record's numbers
   * after the segment, as a new `order` element (encoded) that replaces it.
   */
  readonly rest?: string
  readonly ids: ReadonlySet<MessageId>
  /**
   * The fold due with this seal, if one is: a directory page to store
   * (before the live document changes, like the segment) and what it moves
   * out of the live document.
   */
  readonly fold?: FoldPlan
}

/**
 * Whether `doc`'s live document holds enough sequenced messages for a seal
 * ({@link planSeal} would plan one, unless a missing placeholder holds it
 * back): cheap, without building the segment.
 */
export function sealDue(doc: Y.Doc, options: SealingOptions): boolean {
  return messageIndex(doc).sequencedAfter(sealedThrough(doc)).length >= options.keepLive + options.segmentSize
}

/**
 * The next segment to seal from `doc`, or undefined when the live document
 * holds fewer than `keepLive + segmentSize` sequenced messages. Oldest
 * messages first, at most `segmentSize` of them: a segment that ends inside
 * an `order` record (one device's backlog of thousands, numbered at once)
 * takes that record's first numbers, and the record is replaced by one of
 * the rest ({@link SealPlan.rest}: the same numbers for the same messages, so
 * every replica's index keeps them; a `messages.sequenced` for them repeats).
 * What one seal costs is thus bounded by `segmentSize`, not by the largest
 * change ever numbered; a longer backlog is sealed one segment at a time
 * (the relay seals again in a later turn of the document's queue while
 * {@link sealDue}, so a frame pays for one segment at most).
 */
export function planSeal(
  doc: Y.Doc,
  conversation: ConversationId,
  options: SealingOptions,
): SealPlan | undefined {
  if (!sealDue(doc, options)) return undefined
  const index = messageIndex(doc)
  const through = sealedThrough(doc)
  const records: { position: number; from: number; ids: readonly MessageId[] }[] = []
  typesOf(doc).order.forEach((value, position) => {
    const record = decodeSequenceRecord(value)
    if (record) records.push({ position, from: record.from, ids: record.ids })
  })
  records.sort((a, b) => a.from - b.from)
  const orderPositions: number[] = []
  const entries: SealedEntry[] = []
  const ids = new Set<MessageId>()
  let to = through
  let rest: string | undefined
  for (const record of records) {
    if (entries.length >= options.segmentSize) break
    // A message whose record (or placeholder) this replica does not hold right now — a deletion
    // whose placeholder has not arrived — is not sealed yet, nor anything after it: its number
    // must not be dropped with its sequence record.
    const taken: SealedEntry[] = []
    let complete = true
    // How many of the record's numbers the segment takes: all, or up to the segment's size.
    let cut = record.ids.length
    for (let i = 0; i < record.ids.length; i++) {
      if (entries.length + taken.length >= options.segmentSize) {
        cut = i
        break
      }
      const id = record.ids[i]!
      const seq = record.from + i
      // A message numbered twice counts under its lowest number only.
      if (index.seqOf.get(id) !== seq || ids.has(id)) continue
      const entry = index.deleted.get(id) ?? index.records.get(id)
      if (entry) taken.push({ seq, record: entry as MessageRecord | DeletedMessageRecord })
      else {
        complete = false
        break
      }
    }
    if (!complete) break
    orderPositions.push(record.position)
    to = Math.max(to, record.from + cut - 1)
    for (const entry of taken) {
      ids.add(entry.record.id)
      entries.push(entry)
    }
    if (cut < record.ids.length) {
      rest = encodeSequenceRecord({ from: record.from + cut, ids: record.ids.slice(cut) })
      break
    }
  }
  if (entries.length === 0) return undefined
  entries.sort((a, b) => a.seq - b.seq)
  const previous = sealedSegments(doc).at(-1)
  const segment: Segment = {
    conversation,
    index: previous ? previous.index + 1 : (foldedHistory(doc)?.segments ?? 0),
    from: through + 1,
    to,
    entries,
  }
  const bytes = encodeSegment(segment)
  const summary = summarizeSegment(segment, bytes)
  const fold = planFold(
    doc,
    conversation,
    {
      keepSummaries: options.keepSummaries ?? HistoryDefaults.keepSummaries,
      foldSize: options.foldSize ?? HistoryDefaults.foldSize,
    },
    summary,
  )
  return {
    segment,
    bytes,
    summary,
    orderPositions,
    ...(rest !== undefined ? { rest } : {}),
    ids,
    ...(fold ? { fold } : {}),
  }
}

/**
 * Removes what `plan` sealed from the live document and adds its summary, in
 * one transaction: the records (and placeholders) of its messages, their
 * sequence records (the last one replaced by the rest of its numbers when
 * the segment ends inside it); and the fold, if one is due (the oldest
 * summaries move into a directory page). Edits and reactions stay: they are
 * the sealed messages' overlays. Call once the segment (and directory page)
 * is durable.
 */
export function applySeal(doc: Y.Doc, plan: SealPlan, origin: unknown): void {
  const t = typesOf(doc)
  doc.transact(() => {
    const positions: number[] = []
    t.messages.forEach((value, position) => {
      const id = storedRecordId(value)
      if (id !== undefined && plan.ids.has(id)) positions.push(position)
    })
    deleteRuns(t.messages, positions)
    deleteRuns(
      t.order,
      [...plan.orderPositions].sort((a, b) => a - b),
    )
    if (plan.rest !== undefined) t.order.push([plan.rest])
    t.segments.push([encodeSegmentSummary(plan.summary)])
    if (plan.fold) applyFold(doc, plan.fold)
    // Pinned messages stay listed without their segment: the live document keeps a copy of each.
    for (const { seq, record } of plan.segment.entries)
      if (
        !isDeletedRecord(record) &&
        record.priority === "sticky" &&
        !t.unpinned.has(record.id) &&
        t.pins.size < Limits.sealedPins
      )
        t.pins.set(record.id, encodePin({ seq, record }))
  }, origin)
  sealedHistory(doc).add(plan.segment)
}

/**
 * Deletes the elements at `positions` (ascending, distinct) from `array`, one
 * delete per run of adjacent positions, right to left so that positions still
 * to visit do not move. What is sealed is the oldest messages, nearly all
 * adjacent: a run is one walk to its start instead of one per element.
 */
function deleteRuns<T>(array: Y.Array<T>, positions: readonly number[]): void {
  let end = positions.length - 1
  while (end >= 0) {
    let start = end
    while (start > 0 && positions[start - 1] === positions[start]! - 1) start--
    array.delete(positions[start]!, end - start + 1)
    end = start - 1
  }
}

/**
 * Placeholders sent for sealed messages (a device deleted one it still held
 * live) become tombstones: the record is in an immutable segment, and a
 * placeholder in the live array would be numbered as a new message. Returns
 * the ids converted.
 */
export function placeholdersToTombstones(
  doc: Y.Doc,
  ids: readonly MessageId[],
  origin: unknown,
): MessageId[] {
  const history = sealedHistory(doc)
  const index = messageIndex(doc)
  const converted: MessageId[] = []
  const t = typesOf(doc)
  doc.transact(() => {
    for (const id of ids) {
      const entry = history.entry(id)
      const placeholder = index.deleted.get(id)
      if (!entry || !placeholder) continue
      if (!isDeletedRecord(entry.record) && !t.tombstones.has(id))
        t.tombstones.set(
          id,
          encodeTombstone({
            author: entry.record.author,
            seq: entry.seq,
            deletedAt: placeholder.deletedAt,
            deletedBy: placeholder.deletedBy,
          }),
        )
      if (t.pins.has(id)) t.pins.delete(id)
      const positions: number[] = []
      t.messages.forEach((value, position) => {
        if (storedRecordId(value) === id) positions.push(position)
      })
      for (let i = positions.length - 1; i >= 0; i--) t.messages.delete(positions[i]!, 1)
      converted.push(id)
    }
  }, origin)
  return converted
}
