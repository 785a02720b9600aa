import type * as Y from "yjs"
import { typesOf } from "./document.js"
import {
  applyFold,
  decodeTombstone,
  encodeSegment,
  encodeSegmentSummary,
  encodeTombstone,
  type FoldPlan,
  foldedHistory,
  HistoryDefaults,
  planFold,
  type SealedEntry,
  type SealedOverlays,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  segmentHash,
  summarizeSegment,
} from "./history.js"
import type { ConversationId, MessageId, UserId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import { encodePin } from "./priorities.js"
import {
  type DeletedMessageRecord,
  decodeSequenceRecord,
  type EditRecord,
  encodeSequenceRecord,
  isDeletedRecord,
  Limits,
  type MessageRecord,
  reactionKey,
  recordChars,
  storedRecordId,
} from "./schema.js"

/** When the relay seals: see shared `HistoryDefaults`. */
export interface SealingOptions {
  /** Sequenced messages per segment. */
  readonly segmentSize: number
  /** Sequenced messages the live document keeps after sealing. */
  readonly keepLive: number
  /** Characters of records per segment (default `HistoryDefaults.segmentChars`): a segment ends at whichever bound comes first. */
  readonly segmentChars?: number
  /** Characters of records the live document keeps after sealing (default `HistoryDefaults.keepLiveChars`). */
  readonly keepLiveChars?: number
  /** Client ids in the live document beyond which sealing also starts a fresh epoch (see `startEpoch`). */
  readonly epochClientIds: number
  /** Segment summaries the live document keeps after a fold (default `HistoryDefaults.keepSummaries`). */
  readonly keepSummaries?: number
  /** Summaries folded into one directory page at once; 0 = never fold (default `HistoryDefaults.foldSize`). */
  readonly foldSize?: number
  /**
   * Sealed messages with overlays in the live document (written after they
   * were sealed) from which the relay folds them into their segments at a
   * compaction (default `HistoryDefaults.refoldMessages`).
   */
  readonly refoldMessages?: number
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
  /** Position in `order` of the record {@link rest} replaces (as the document was when planning began). */
  readonly restOf?: number
  readonly ids: ReadonlySet<MessageId>
  /**
   * The fold due with this seal, if one is: a directory page to store
   * (before the live document changes, like the segment) and what it moves
   * out of the live document.
   */
  readonly fold?: FoldPlan
}

/** The character bounds of `options`, defaults filled in. */
const charBounds = (options: SealingOptions) => ({
  segment: Math.max(1, options.segmentChars ?? HistoryDefaults.segmentChars),
  keep: Math.max(0, options.keepLiveChars ?? HistoryDefaults.keepLiveChars),
})

/** Whether `count` sequenced messages of `chars` characters in all are more than the live document keeps. */
function overBounds(options: SealingOptions, count: number, chars: number): boolean {
  if (count >= options.keepLive + options.segmentSize) return true
  const bounds = charBounds(options)
  return count > 0 && chars >= bounds.keep + bounds.segment
}

/**
 * Whether `doc`'s live document holds enough sequenced messages for a seal
 * ({@link planSeal} would plan one, unless a missing placeholder holds it
 * back): `keepLive + segmentSize` messages, or `keepLiveChars +
 * segmentChars` characters of them. Cheap, without building the segment.
 */
export function sealDue(doc: Y.Doc, options: SealingOptions): boolean {
  const index = messageIndex(doc)
  return overBounds(options, index.countSequencedAfter(sealedThrough(doc)), index.sequencedChars())
}

/**
 * The next segment to seal from `doc`, or undefined when no seal is due (see
 * {@link sealDue}). Oldest messages first, at most `segmentSize` of them and
 * no more than the first to reach `segmentChars` characters (a message larger
 * than that is a segment alone): a segment that ends inside
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
  return planSeals(doc, conversation, options, 1)[0]
}

/**
 * The overlays a seal folds into `record`'s entry (see history's
 * `SealedOverlays`): its reactions and its edit as the live document holds
 * them. None for a deleted message (its overlays went with it) nor for a
 * sticky one: the live document keeps a copy of a pinned message to list it
 * without its segment, and its overlays with it.
 */
function overlaysToFold(
  doc: Y.Doc,
  record: MessageRecord | DeletedMessageRecord,
): SealedOverlays | undefined {
  if (isDeletedRecord(record) || record.priority === "sticky") return undefined
  const reactions: [string, UserId][] = []
  for (const [emoji, users] of messageIndex(doc).reactions.get(record.id) ?? [])
    for (const user of users) reactions.push([emoji, user])
  reactions.sort(byEmojiThenUser)
  const edit = decodeEdit(typesOf(doc).edits.get(record.id))
  if (reactions.length === 0 && !edit) return undefined
  return { ...(reactions.length > 0 ? { reactions } : {}), ...(edit ? { edit } : {}) }
}

/**
 * `segment` (summarized as `summary`) with the overlays `doc` holds of its
 * messages folded into their entries, as a seal folds them (see
 * `overlaysToFold`): what was written after the message was sealed — a
 * reaction, a removal of a folded one, an edit — so that the live document
 * does not keep it for good. Also returns the keys of `reactions` and the
 * ids of `edits` the re-sealed segment now holds, for the caller to remove
 * from the live document in the change that names the segment's new hash.
 * A message deleted since its seal (tombstoned) is written as its
 * placeholder, as a purge writes it, so that no version of a segment ever
 * named again holds a deleted message's content. Undefined when there is
 * nothing to fold or purge (sticky messages keep their overlays live).
 */
export function refoldSegment(
  doc: Y.Doc,
  segment: Segment,
  summary: SegmentSummary,
):
  | { segment: Segment; bytes: Uint8Array; summary: SegmentSummary; keys: string[]; edits: MessageId[] }
  | undefined {
  const index = messageIndex(doc)
  const t = typesOf(doc)
  const keys: string[] = []
  const edits: MessageId[] = []
  let purged = false
  const entries = segment.entries.map((entry): SealedEntry => {
    const { record } = entry
    if (isDeletedRecord(record)) return entry
    // Deleted since it was sealed: never named again with its content, whatever version this is (the
    // purge of the deletion may still be due, or this may be a version stored but never named).
    const tombstone = decodeTombstone(t.tombstones.get(record.id))
    if (tombstone) {
      purged = true
      return {
        seq: entry.seq,
        record: {
          id: record.id,
          author: record.author,
          createdAt: record.createdAt,
          deletedAt: tombstone.deletedAt,
          deletedBy: tombstone.deletedBy,
          ...(tombstone.priority !== undefined ? { priority: tombstone.priority } : {}),
        },
      }
    }
    if (record.priority === "sticky") return entry
    // Not for an id the live document holds a message under (written under a sealed id before the relay refused that).
    if (index.records.has(record.id) || index.deleted.has(record.id)) return entry
    const live = index.reactions.get(record.id)
    const removed = index.reactionRemovals.get(record.id)
    const edit = decodeEdit(t.edits.get(record.id))
    if (!live && !removed && !edit) return entry
    const pairs = new Map<string, [string, UserId]>()
    for (const [emoji, user] of entry.overlays?.reactions ?? [])
      if (!removed?.get(emoji)?.has(user)) pairs.set(reactionKey(record.id, user, emoji), [emoji, user])
    for (const [emoji, users] of live ?? [])
      for (const user of users) {
        const key = reactionKey(record.id, user, emoji)
        pairs.set(key, [emoji, user])
        keys.push(key)
      }
    for (const [emoji, users] of removed ?? [])
      for (const user of users) keys.push(reactionKey(record.id, user, emoji))
    if (edit) edits.push(record.id)
    const reactions = [...pairs.values()].sort(byEmojiThenUser)
    const folded = edit ?? entry.overlays?.edit
    const overlays: SealedOverlays = {
      ...(reactions.length > 0 ? { reactions } : {}),
      ...(folded ? { edit: folded } : {}),
    }
    return Object.keys(overlays).length > 0
      ? { seq: entry.seq, record, overlays }
      : { seq: entry.seq, record }
  })
  if (keys.length === 0 && edits.length === 0 && !purged) return undefined
  const refolded: Segment = { ...segment, entries }
  const bytes = encodeSegment(refolded)
  return {
    segment: refolded,
    bytes,
    summary: { ...summary, hash: segmentHash(bytes), bytes: bytes.length },
    keys,
    edits,
  }
}

const byEmojiThenUser = (a: readonly [string, string], b: readonly [string, string]) =>
  a[0] === b[0] ? (a[1] < b[1] ? -1 : 1) : a[0] < b[0] ? -1 : 1

/** An `edits` value as an edit record, or undefined when it is not one. */
function decodeEdit(value: unknown): EditRecord | undefined {
  const v = value as Partial<EditRecord> | undefined
  return typeof v?.body === "string" && typeof v.editedAt === "number"
    ? { body: v.body, editedAt: v.editedAt }
    : undefined
}

/** A sequence record as planning sees it: where it is in `order`, its first number and ids. */
interface PlannedRecord {
  readonly position: number
  readonly from: number
  readonly ids: readonly MessageId[]
}

/**
 * Up to `max` consecutive segments to seal from `doc`: each the segment
 * {@link planSeal} would plan on the document the ones before it leave once
 * applied (same entries, bytes and summary), planned without applying them,
 * so that {@link applySeals} removes all of them in one transaction. A
 * backlog of several segments (one frame of 2,000 messages makes four due)
 * then costs one pass of the live document's deletions and of the message
 * index's observers, and the records a seal cuts are never written to the
 * document only to be cut again by the next one. Stops early at a plan that
 * folds summaries into a directory page, and before one that would (a fold
 * is planned on the live document's summaries: the next call plans it).
 */
export function planSeals(
  doc: Y.Doc,
  conversation: ConversationId,
  options: SealingOptions,
  max: number,
): SealPlan[] {
  const plans: SealPlan[] = []
  if (max < 1 || !sealDue(doc, options)) return plans
  const index = messageIndex(doc)
  let records: PlannedRecord[] = []
  typesOf(doc).order.forEach((value, position) => {
    const record = decodeSequenceRecord(value)
    if (record) records.push({ position, from: record.from, ids: record.ids })
  })
  records.sort((a, b) => a.from - b.from)
  let through = sealedThrough(doc)
  const previous = sealedSegments(doc).at(-1)
  let nextIndex = previous ? previous.index + 1 : (foldedHistory(doc)?.segments ?? 0)
  const liveSummaries = sealedSegments(doc).length
  const foldSize = options.foldSize ?? HistoryDefaults.foldSize
  const keepSummaries = options.keepSummaries ?? HistoryDefaults.keepSummaries
  const segmentChars = charBounds(options).segment
  // Characters of the sequenced records the plans so far leave live.
  let liveChars = index.sequencedChars()
  // Ids the plans before this one seal: once applied, the index no longer numbers them.
  const sealed = new Set<MessageId>()
  while (plans.length < max) {
    // What `sealDue` says of the document the plans so far leave: they remove numbers up to `through` only.
    if (plans.length > 0) {
      if (!overBounds(options, index.countSequencedAfter(through), liveChars)) break
      // A fold is planned on the live document's summaries: left to the next call.
      if (foldSize >= 1 && liveSummaries + plans.length + 1 >= keepSummaries + foldSize) break
    }
    const orderPositions: number[] = []
    const entries: SealedEntry[] = []
    const ids = new Set<MessageId>()
    let to = through
    let rest: PlannedRecord | undefined
    let chars = 0
    // Whether a segment of `count` entries and `size` characters takes no more.
    const full = (count: number, size: number) =>
      count >= options.segmentSize || (count > 0 && size >= segmentChars)
    for (const record of records) {
      if (full(entries.length, chars)) break
      // A message whose record (or placeholder) this replica does not hold right now — a deletion
      // whose placeholder has not arrived — is not sealed yet, nor anything after it: its number
      // must not be dropped with its sequence record.
      const taken: SealedEntry[] = []
      let takenChars = 0
      let complete = true
      // How many of the record's numbers the segment takes: all, or up to the segment's size.
      let cut = record.ids.length
      for (let i = 0; i < record.ids.length; i++) {
        if (full(entries.length + taken.length, chars + takenChars)) {
          cut = i
          break
        }
        const id = record.ids[i]!
        const seq = record.from + i
        // A message numbered twice counts under its lowest number only.
        if (index.seqOf.get(id) !== seq || ids.has(id) || sealed.has(id)) continue
        const entry = index.deleted.get(id) ?? index.records.get(id)
        if (entry) {
          const record = entry as MessageRecord | DeletedMessageRecord
          const overlays = overlaysToFold(doc, record)
          taken.push(overlays ? { seq, record, overlays } : { seq, record })
          takenChars += recordChars(entry)
        } else {
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
      chars += takenChars
      if (cut < record.ids.length) {
        rest = { position: record.position, from: record.from + cut, ids: record.ids.slice(cut) }
        break
      }
    }
    if (entries.length === 0) break
    entries.sort((a, b) => a.seq - b.seq)
    const segment: Segment = { conversation, index: nextIndex, from: through + 1, to, entries }
    const bytes = encodeSegment(segment)
    const summary = summarizeSegment(segment, bytes)
    const fold =
      plans.length === 0 ? planFold(doc, conversation, { keepSummaries, foldSize }, summary) : undefined
    plans.push({
      segment,
      bytes,
      summary,
      orderPositions,
      ...(rest !== undefined
        ? { rest: encodeSequenceRecord({ from: rest.from, ids: rest.ids }), restOf: rest.position }
        : {}),
      ids,
      ...(fold ? { fold } : {}),
    })
    if (fold) break
    // The document this plan leaves: its records gone, the one it cut replaced by the rest (added
    // last, as `applySeal` pushes it, then ordered by first number as above).
    const removed = new Set(orderPositions)
    records = records.filter((r) => !removed.has(r.position))
    if (rest) {
      records.push(rest)
      records.sort((a, b) => a.from - b.from)
    }
    for (const id of ids) sealed.add(id)
    through = to
    liveChars -= chars
    nextIndex++
  }
  return plans
}

/**
 * Removes what `plan` sealed from the live document and adds its summary, in
 * one transaction: the records (and placeholders) of its messages, their
 * sequence records (the last one replaced by the rest of its numbers when
 * the segment ends inside it); and the fold, if one is due (the oldest
 * summaries move into a directory page). The overlays the plan folded into
 * its entries (reactions, edits) leave the live document; later ones are
 * overlays there. Call once the segment (and directory page) is durable.
 */
export function applySeal(doc: Y.Doc, plan: SealPlan, origin: unknown): void {
  applySeals(doc, [plan], origin)
}

/**
 * Applies consecutive plans of {@link planSeals} (all of them, or the first
 * ones: each leaves the document as applying it alone after the ones before
 * would) in one transaction, with the outcome of {@link applySeal} on each in
 * turn: the records a plan cut and the next one cut again are replaced by
 * their last rest only. Call once every plan's segment (and directory page)
 * is durable.
 */
export function applySeals(doc: Y.Doc, plans: readonly SealPlan[], origin: unknown): void {
  if (plans.length === 0) return
  const t = typesOf(doc)
  doc.transact(() => {
    const ids = new Set<MessageId>()
    const orderPositions = new Set<number>()
    // The rests left standing, by the position of the record they replace (a plan that takes a rest
    // cut by the plan before lists that record's position, and replaces or consumes the rest).
    const rests = new Map<number, string>()
    for (const plan of plans) {
      for (const id of plan.ids) ids.add(id)
      for (const position of plan.orderPositions) {
        orderPositions.add(position)
        rests.delete(position)
      }
      if (plan.rest !== undefined) rests.set(plan.restOf ?? -1, plan.rest)
    }
    const positions: number[] = []
    t.messages.forEach((value, position) => {
      const id = storedRecordId(value)
      if (id !== undefined && ids.has(id)) positions.push(position)
    })
    deleteRuns(t.messages, positions)
    deleteRuns(
      t.order,
      [...orderPositions].sort((a, b) => a - b),
    )
    for (const rest of rests.values()) t.order.push([rest])
    // The overlays folded into the segments leave the live document, with any removal of a reaction
    // written while the message was live (meaningless: nothing of it was folded yet).
    const index = messageIndex(doc)
    for (const plan of plans)
      for (const { record, overlays } of plan.segment.entries) {
        if (!overlays) continue
        for (const [emoji, user] of overlays.reactions ?? [])
          t.reactions.delete(reactionKey(record.id, user, emoji))
        for (const [emoji, users] of index.reactionRemovals.get(record.id) ?? [])
          for (const user of users) t.reactions.delete(reactionKey(record.id, user, emoji))
        if (overlays.edit) t.edits.delete(record.id)
      }
    for (const plan of plans) {
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
    }
  }, origin)
  for (const plan of plans) sealedHistory(doc).add(plan.segment)
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
 * placeholder in the live array would be numbered as a new message. Only a
 * placeholder of the sealed message itself (its author and time): one of
 * another message under its id (written before the relay refused sealed
 * ids) deletes that one, not the sealed one. Returns the ids converted.
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
      if (placeholder.author !== entry.record.author || placeholder.createdAt !== entry.record.createdAt)
        continue
      if (!isDeletedRecord(entry.record) && !t.tombstones.has(id))
        t.tombstones.set(
          id,
          encodeTombstone({
            author: entry.record.author,
            seq: entry.seq,
            deletedAt: placeholder.deletedAt,
            deletedBy: placeholder.deletedBy,
            ...(placeholder.priority !== undefined ? { priority: placeholder.priority } : {}),
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
