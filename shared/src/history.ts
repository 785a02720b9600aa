import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { digest } from "lib0/hash/sha256"
import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { ErrorCode, ParleyError } from "./errors.js"
import type { ConversationId, MessageId, UserId } from "./ids.js"
import { isUserId } from "./ids.js"
import {
  type DeletedMessageRecord,
  decodeStoredRecord,
  encodeStoredRecord,
  isDeletedRecord,
  type MessageRecord,
  MetaKey,
} from "./schema.js"

/**
 * Sealed history. A conversation's live document keeps what must merge
 * concurrently (meta, participants, markers, edits, reactions and the recent
 * messages); the relay moves older sequenced messages into immutable
 * segments: pages of records keyed by sequence range, stored once and served
 * on demand. Segments are not Yjs documents: nothing merges into them, so they
 * carry no Yjs metadata and decode in one pass. What may still change about a
 * sealed message lives in the live document as an overlay: its edit in
 * `edits`, its reactions in `reactions`, its deletion in `tombstones`.
 */

/** Version of the segment encoding (first field of every segment). */
export const SEGMENT_FORMAT = 1

/** How the relay cuts history: see `shared/README.md`, "Sealed history". */
export const HistoryDefaults = {
  /** Sequenced messages per segment. */
  segmentSize: 500,
  /** Sequenced messages the live document keeps after sealing (the latest). */
  keepLive: 250,
  /** Client ids in the live document beyond which the relay starts a fresh epoch when it seals. */
  epochClientIds: 32,
} as const

/** One sealed message: its record as it was when sealed (a placeholder if it was deleted) and its number. */
export interface SealedEntry {
  readonly seq: number
  readonly record: MessageRecord | DeletedMessageRecord
}

/** A sealed segment, decoded: the messages numbered `from`..`to` (inclusive) of one conversation. */
export interface Segment {
  readonly conversation: ConversationId
  /** Position among the conversation's segments, from 0. */
  readonly index: number
  readonly from: number
  readonly to: number
  /** In sequence order. */
  readonly entries: readonly SealedEntry[]
}

/**
 * What the live document says of a segment (an element of `segments`): enough
 * to page (range, size, content hash for caches) and to count unread messages
 * in it without fetching it (live messages per author at sealing time).
 */
export interface SegmentSummary {
  readonly index: number
  readonly from: number
  readonly to: number
  /** Entries in the segment (placeholders included). */
  readonly count: number
  /** Messages that were not deleted when sealed, per author. */
  readonly liveBy: Readonly<Record<string, number>>
  /** SHA-256 of the encoded segment, hex: its immutable name. */
  readonly hash: string
  readonly bytes: number
}

/** Encodes a segment: lib0 var-uints and `writeAny` of each stored record. */
export function encodeSegment(segment: Segment): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, SEGMENT_FORMAT)
  encoding.writeVarString(encoder, segment.conversation)
  encoding.writeVarUint(encoder, segment.index)
  encoding.writeVarUint(encoder, segment.from)
  encoding.writeVarUint(encoder, segment.to)
  encoding.writeVarUint(encoder, segment.entries.length)
  let previous = segment.from
  for (const entry of segment.entries) {
    // Numbers rise within a segment: the gap is one byte.
    encoding.writeVarUint(encoder, entry.seq - previous)
    previous = entry.seq
    encoding.writeAny(encoder, encodeStoredRecord(entry.record) as unknown as encoding.AnyEncodable)
  }
  return encoding.toUint8Array(encoder)
}

/** Decodes a segment; a typed MALFORMED_FRAME error when the bytes are not one. */
export function decodeSegment(bytes: Uint8Array): Segment {
  try {
    const decoder = decoding.createDecoder(bytes)
    const format = decoding.readVarUint(decoder)
    if (format !== SEGMENT_FORMAT) throw new Error(`segment format ${format}`)
    const conversation = decoding.readVarString(decoder) as ConversationId
    const index = decoding.readVarUint(decoder)
    const from = decoding.readVarUint(decoder)
    const to = decoding.readVarUint(decoder)
    const count = decoding.readVarUint(decoder)
    const entries: SealedEntry[] = []
    let seq = from
    for (let i = 0; i < count; i++) {
      seq += decoding.readVarUint(decoder)
      const record = decodeStoredRecord(decoding.readAny(decoder))
      if (!record) throw new Error("a segment entry is not a record")
      entries.push({ seq, record })
    }
    return { conversation, index, from, to, entries }
  } catch (cause) {
    if (cause instanceof ParleyError) throw cause
    throw new ParleyError(ErrorCode.MALFORMED_FRAME, "not a history segment", { cause })
  }
}

/** Hex SHA-256 of encoded segment bytes. */
export function segmentHash(bytes: Uint8Array): string {
  let hex = ""
  for (const byte of digest(bytes)) hex += byte.toString(16).padStart(2, "0")
  return hex
}

/** The summary the live document keeps of `segment` (encoded as `bytes`). */
export function summarizeSegment(segment: Segment, bytes: Uint8Array): SegmentSummary {
  const liveBy: Record<string, number> = {}
  for (const { record } of segment.entries)
    if (!isDeletedRecord(record)) liveBy[record.author] = (liveBy[record.author] ?? 0) + 1
  return {
    index: segment.index,
    from: segment.from,
    to: segment.to,
    count: segment.entries.length,
    liveBy,
    hash: segmentHash(bytes),
    bytes: bytes.length,
  }
}

/** Stored form of a summary (one-letter keys, as message records). */
interface StoredSummary {
  readonly i: number
  readonly f: number
  readonly l: number
  readonly n: number
  readonly c: Record<string, number>
  readonly h: string
  readonly z: number
}

/** The element of `segments` for `summary`. */
export const encodeSegmentSummary = (summary: SegmentSummary): StoredSummary => ({
  i: summary.index,
  f: summary.from,
  l: summary.to,
  n: summary.count,
  c: { ...summary.liveBy },
  h: summary.hash,
  z: summary.bytes,
})

/** Decodes an element of `segments`; undefined when it is not a summary. */
export function decodeSegmentSummary(value: unknown): SegmentSummary | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as Partial<StoredSummary>
  if (
    typeof v.i !== "number" ||
    typeof v.f !== "number" ||
    typeof v.l !== "number" ||
    typeof v.n !== "number" ||
    typeof v.h !== "string" ||
    typeof v.z !== "number" ||
    typeof v.c !== "object" ||
    v.c === null
  )
    return undefined
  return { index: v.i, from: v.f, to: v.l, count: v.n, liveBy: v.c, hash: v.h, bytes: v.z }
}

/**
 * Decoded summaries per `segments` array, kept until the array changes (the
 * relay appends when it seals, replaces a summary when it purges a segment).
 */
const summaryCache = new WeakMap<
  Y.Array<unknown>,
  { length: number; list: readonly SegmentSummary[]; through: number }
>()
const observedSegments = new WeakSet<Y.Array<unknown>>()

/**
 * The summaries of every sealed segment of `doc`, oldest first. Decoded once
 * per change of the list (the relay only ever appends), not on every call:
 * unread counts and the sequencer ask on every message.
 */
export function sealedSegments(doc: Y.Doc): readonly SegmentSummary[] {
  return summariesOf(doc).list
}

function summariesOf(doc: Y.Doc): { list: readonly SegmentSummary[]; through: number } {
  const segments = typesOf(doc).segments
  const cached = summaryCache.get(segments)
  if (cached && cached.length === segments.length) return cached
  if (!observedSegments.has(segments)) {
    observedSegments.add(segments)
    segments.observe(() => summaryCache.delete(segments))
  }
  const list: SegmentSummary[] = []
  let through = 0
  for (const value of segments) {
    const summary = decodeSegmentSummary(value)
    if (!summary) continue
    list.push(summary)
    through = Math.max(through, summary.to)
  }
  list.sort((a, b) => a.index - b.index)
  const entry = { length: segments.length, list, through }
  summaryCache.set(segments, entry)
  return entry
}

/** Highest sequence number sealed (0 when nothing is). */
export function sealedThrough(doc: Y.Doc): number {
  return typesOf(doc).segments.length === 0 ? 0 : summariesOf(doc).through
}

/** The deletion of a sealed message, as the live document holds it. */
export interface SealedDeletion {
  readonly author: UserId
  readonly seq: number
  readonly deletedAt: number
  readonly deletedBy: UserId
}

/** Stored form of a {@link SealedDeletion} in `tombstones`: `a` author, `s` seq, `x` deletedAt, `d` deletedBy. */
export const encodeTombstone = (t: SealedDeletion) => ({
  a: t.author,
  s: t.seq,
  x: t.deletedAt,
  d: t.deletedBy,
})

/** Decodes a value of `tombstones`; undefined when malformed. */
export function decodeTombstone(value: unknown): SealedDeletion | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as { a?: unknown; s?: unknown; x?: unknown; d?: unknown }
  if (
    typeof v.a !== "string" ||
    !isUserId(v.a) ||
    typeof v.d !== "string" ||
    !isUserId(v.d) ||
    typeof v.s !== "number" ||
    !Number.isSafeInteger(v.s) ||
    v.s < 1 ||
    typeof v.x !== "number" ||
    !Number.isFinite(v.x) ||
    v.x < 0 ||
    Object.keys(v).length !== 4
  )
    return undefined
  return { author: v.a as UserId, seq: v.s, deletedAt: v.x, deletedBy: v.d as UserId }
}

/** The deletion of sealed message `id`, if it was deleted after sealing. */
export function tombstoneOf(doc: Y.Doc, id: MessageId): SealedDeletion | undefined {
  return decodeTombstone(typesOf(doc).tombstones.get(id))
}

/**
 * The sealed segments this replica holds, decoded, and a directory of their
 * messages by id: the relay fills it from its store, the SDK with the pages it
 * fetched. Operations and reads on sealed messages look here
 * ({@link sealedHistory}); what is not here is unknown to this replica.
 */
export class SealedHistory {
  private readonly segments = new Map<number, Segment>()
  private readonly byId = new Map<MessageId, SealedEntry>()
  /** Increases whenever a segment is added. */
  version = 0

  /** Adds a decoded segment (again: no change). */
  add(segment: Segment): void {
    if (this.segments.has(segment.index)) return
    this.segments.set(segment.index, segment)
    for (const entry of segment.entries) this.byId.set(entry.record.id, entry)
    this.version++
  }

  /**
   * Holds `segment` in place of the one at its index (a segment re-sealed
   * without purged messages: see {@link purgeFromSegment}), so that the old
   * records are no longer held.
   */
  replace(segment: Segment): void {
    this.segments.set(segment.index, segment)
    for (const entry of segment.entries) this.byId.set(entry.record.id, entry)
    this.version++
  }

  /** Stops holding the segment at `index` (the relay dropped or re-sealed it), and its records. */
  remove(index: number): void {
    const segment = this.segments.get(index)
    if (!segment) return
    this.segments.delete(index)
    for (const entry of segment.entries)
      if (this.byId.get(entry.record.id) === entry) this.byId.delete(entry.record.id)
    this.version++
  }

  /** The segment at `index`, if held. */
  segment(index: number): Segment | undefined {
    return this.segments.get(index)
  }

  /** Whether the segment at `index` is held. */
  has(index: number): boolean {
    return this.segments.has(index)
  }

  /** The sealed entry of `id`, if a held segment has it. */
  entry(id: MessageId): SealedEntry | undefined {
    return this.byId.get(id)
  }

  /** Indexes of the held segments, ascending. */
  held(): number[] {
    return [...this.segments.keys()].sort((a, b) => a - b)
  }
}

const histories = new WeakMap<Y.Doc, SealedHistory>()

/** The sealed history held for `doc` (created empty on first use). */
export function sealedHistory(doc: Y.Doc): SealedHistory {
  let history = histories.get(doc)
  if (!history) {
    history = new SealedHistory()
    histories.set(doc, history)
  }
  return history
}

/**
 * Unread messages of `user` among the sealed ones above `after`: from the
 * summaries for whole segments, from the segment itself for the one the
 * marker falls in (its whole count when this replica does not hold it: see
 * `exact`), minus sealed messages by others deleted since.
 */
export function sealedUnread(doc: Y.Doc, user: UserId, after: number): { count: number; exact: boolean } {
  const history = sealedHistory(doc)
  const tombstones = typesOf(doc).tombstones
  let count = 0
  let exact = true
  const summaries = sealedSegments(doc)
  // Newest first: a reader's marker is usually near the end, so this stops after a segment or two.
  for (let i = summaries.length - 1; i >= 0; i--) {
    const summary = summaries[i]!
    if (summary.to <= after) break
    const others = Object.entries(summary.liveBy).reduce((n, [a, c]) => (a === user ? n : n + c), 0)
    if (summary.from > after) {
      count += others
      continue
    }
    const segment = history.segment(summary.index)
    if (!segment) {
      count += others
      exact = false
      continue
    }
    // A message purged from its segment after a deletion is a placeholder there and a tombstone here: counted
    // here like the live record it replaced, since the tombstones below subtract it.
    for (const { seq, record } of segment.entries)
      if (seq > after && record.author !== user && (!isDeletedRecord(record) || tombstones.has(record.id)))
        count++
  }
  for (const value of typesOf(doc).tombstones.values()) {
    const t = decodeTombstone(value)
    if (t && t.seq > after && t.author !== user) count--
  }
  return { count: Math.max(0, count), exact }
}

/**
 * The client id the live document's current epoch was written under, or
 * undefined before the relay first started a fresh live document.
 */
export function epochOf(doc: Y.Doc): number | undefined {
  const epoch = typesOf(doc).meta.get(MetaKey.epoch)
  return typeof epoch === "number" ? epoch : undefined
}

/**
 * How far the relay had each earlier client's structs when the current epoch
 * began (empty before the first epoch): a replica's structs below it are in
 * the epoch's content, those beyond are its pending work.
 */
export function epochBaseline(doc: Y.Doc): Map<number, number> {
  const value = typesOf(doc).meta.get(MetaKey.epochFrom)
  const baseline = new Map<number, number>()
  if (typeof value !== "object" || value === null) return baseline
  for (const [client, clock] of Object.entries(value as Record<string, unknown>))
    if (typeof clock === "number") baseline.set(Number(client), clock)
  return baseline
}

/**
 * `segment` re-sealed without the content of the messages `ids` (sealed, then
 * deleted: each has a tombstone in the live document): their records become
 * deletion placeholders, as if they had been deleted before sealing. Undefined
 * when the segment holds none of them with content. The summary keeps the
 * counts of sealing time (`liveBy`, `count`: unread counts subtract the
 * tombstones), with the new hash and size.
 */
export function purgeFromSegment(
  segment: Segment,
  summary: SegmentSummary,
  deletions: ReadonlyMap<MessageId, SealedDeletion>,
): { segment: Segment; bytes: Uint8Array; summary: SegmentSummary } | undefined {
  let changed = false
  const entries = segment.entries.map((entry): SealedEntry => {
    const deletion = deletions.get(entry.record.id)
    if (!deletion || isDeletedRecord(entry.record)) return entry
    changed = true
    const placeholder: DeletedMessageRecord = {
      id: entry.record.id,
      author: entry.record.author,
      createdAt: entry.record.createdAt,
      deletedAt: deletion.deletedAt,
      deletedBy: deletion.deletedBy,
    }
    return { seq: entry.seq, record: placeholder }
  })
  if (!changed) return undefined
  const purged: Segment = { ...segment, entries }
  const bytes = encodeSegment(purged)
  return { segment: purged, bytes, summary: { ...summary, hash: segmentHash(bytes), bytes: bytes.length } }
}
