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
  type EditRecord,
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
/** Version of the directory page encoding (first field of every directory page). */
export const DIRECTORY_FORMAT = 1

/** How the relay cuts history: see `shared/README.md`, "Sealed history". */
export const HistoryDefaults = {
  /** Sequenced messages per segment. */
  segmentSize: 300,
  /** Sequenced messages the live document keeps after sealing (the latest). */
  keepLive: 100,
  /**
   * Characters of message records per segment (`recordChars`): a
   * segment ends at `segmentSize` messages or at this many characters,
   * whichever comes first, so that long messages are sealed in fewer per
   * segment rather than kept live (750 messages of 16,000 characters made a
   * live document of 12 MB before).
   */
  segmentChars: 256 * 1024,
  /** Characters of message records the live document keeps after sealing (the latest). */
  keepLiveChars: 256 * 1024,
  /** Client ids in the live document beyond which the relay starts a fresh epoch when it seals. */
  epochClientIds: 32,
  /** Segment summaries the live document keeps after folding older ones into a directory page. */
  keepSummaries: 4,
  /** Segment summaries per directory page (folded at once, the oldest first). */
  foldSize: 16,
  /**
   * Sealed messages with overlays written after they were sealed (reactions,
   * removals of folded ones, edits) that the live document holds before the
   * relay folds them into their segments, at its next compaction.
   */
  refoldMessages: 200,
} as const

/**
 * What a sealed message's overlays were when it was sealed, folded into its
 * entry so that the live document does not keep them for ever (a
 * conversation of 100,000 messages with three reactions in ten and a few
 * edits kept 1.8 MB of them live): its reactions as `[emoji, user]` pairs and
 * its edit. Later changes are overlays in the live document again: an edit
 * (which wins over the folded one), a reaction, or a removal of a folded
 * reaction (a negative time under its key, see `isReactionRemoval`).
 */
export interface SealedOverlays {
  readonly reactions?: readonly (readonly [emoji: string, user: UserId])[]
  readonly edit?: EditRecord
}

/** One sealed message: its record as it was when sealed (a placeholder if it was deleted), its number and folded overlays. */
export interface SealedEntry {
  readonly seq: number
  readonly record: MessageRecord | DeletedMessageRecord
  readonly overlays?: SealedOverlays
}

/** Key of an entry's folded overlays in its encoded record: a field no record has. */
const OVERLAYS_KEY = "o"

/** `overlays` as the encoded record carries them: `{ r: [[emoji, user], ...], e: [body, editedAt] }`. */
function encodeOverlays(overlays: SealedOverlays): Record<string, unknown> {
  const encoded: Record<string, unknown> = {}
  if (overlays.reactions && overlays.reactions.length > 0)
    encoded.r = overlays.reactions.map((p) => [p[0], p[1]])
  if (overlays.edit) encoded.e = [overlays.edit.body, overlays.edit.editedAt]
  return encoded
}

/** The overlays an encoded record carries; undefined when none (or none that are well-formed). */
function decodeOverlays(value: unknown): SealedOverlays | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as { r?: unknown; e?: unknown }
  const reactions = Array.isArray(v.r)
    ? v.r.filter(
        (p): p is [string, UserId] =>
          Array.isArray(p) && p.length === 2 && typeof p[0] === "string" && isUserId(p[1]),
      )
    : []
  const edit =
    Array.isArray(v.e) && typeof v.e[0] === "string" && typeof v.e[1] === "number"
      ? { body: v.e[0], editedAt: v.e[1] }
      : undefined
  if (reactions.length === 0 && !edit) return undefined
  return { ...(reactions.length > 0 ? { reactions } : {}), ...(edit ? { edit } : {}) }
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
    const stored: Record<string, unknown> = { ...encodeStoredRecord(entry.record) }
    // Folded overlays ride in the record under a key no record has: a reader of an older version
    // decodes the record and ignores them, and a segment without any is byte for byte as before.
    const overlays = entry.overlays && encodeOverlays(entry.overlays)
    if (overlays && Object.keys(overlays).length > 0) stored[OVERLAYS_KEY] = overlays
    writeAnyQuickly(encoder, stored)
  }
  return encoding.toUint8Array(encoder)
}

/** Strings at least this long are encoded in one piece (see {@link writeAnyQuickly}). */
const LONG_STRING = 64
const utf8 = new TextEncoder()

/**
 * `encoding.writeAny`, byte for byte, with long strings written in one
 * piece: lib0 copies a string under 10,000 characters into the encoder one
 * byte per call, so sealing 500 long bodies (a frame of them near the 1 MB
 * limit) spent more CPU there than in the rest of the seal. Same format
 * (type 119, var-uint byte length, UTF-8), so segments and their hashes are
 * what they were.
 */
function writeAnyQuickly(encoder: encoding.Encoder, data: unknown): void {
  if (typeof data === "string") {
    if (data.length < LONG_STRING) encoding.writeAny(encoder, data)
    else {
      encoding.write(encoder, 119)
      encoding.writeVarUint8Array(encoder, utf8.encode(data))
    }
  } else if (Array.isArray(data)) {
    encoding.write(encoder, 117)
    encoding.writeVarUint(encoder, data.length)
    for (const item of data) writeAnyQuickly(encoder, item)
  } else if (typeof data === "object" && data !== null && !(data instanceof Uint8Array)) {
    encoding.write(encoder, 118)
    const keys = Object.keys(data)
    encoding.writeVarUint(encoder, keys.length)
    for (const key of keys) {
      encoding.writeVarString(encoder, key)
      writeAnyQuickly(encoder, (data as Record<string, unknown>)[key])
    }
  } else encoding.writeAny(encoder, data as encoding.AnyEncodable)
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
      const value = decoding.readAny(decoder)
      const record = decodeStoredRecord(value)
      if (!record) throw new Error("a segment entry is not a record")
      const overlays = isDeletedRecord(record)
        ? undefined
        : decodeOverlays((value as Record<string, unknown>)[OVERLAYS_KEY])
      entries.push(overlays ? { seq, record, overlays } : { seq, record })
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

/**
 * `value` as a stored summary-like record (a summary or the folded record):
 * the numbers named `numbers`, a hash `h` and per-author counts `c`; else undefined.
 */
function storedCounts<T>(value: unknown, numbers: readonly string[]): T | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as Record<string, unknown>
  for (const key of numbers) if (typeof v[key] !== "number") return undefined
  if (typeof v.h !== "string" || typeof v.c !== "object" || v.c === null) return undefined
  return value as T
}

/** Decodes an element of `segments`; undefined when it is not a summary. */
export function decodeSegmentSummary(value: unknown): SegmentSummary | undefined {
  const v = storedCounts<StoredSummary>(value, ["i", "f", "l", "n", "z"])
  if (!v) return undefined
  return { index: v.i, from: v.f, to: v.l, count: v.n, liveBy: v.c, hash: v.h, bytes: v.z }
}

/**
 * The folded part of the sealed history, as the live document holds it (one
 * element of `segments`): the oldest segments, whose summaries moved into an
 * immutable chain of directory pages so that the live document stays the
 * same size however long the history. What it keeps of them is what an
 * unread count above them needs (live messages per author, summed) and where
 * the chain begins (the newest page's hash).
 */
export interface FoldedHistory {
  /** Segments folded: indexes 0 to `segments - 1`. */
  readonly segments: number
  /** Highest sequence number they hold (they hold 1 ..= `through`). */
  readonly through: number
  /** Entries in them (placeholders included). */
  readonly count: number
  /** Messages not deleted when sealed, per author, summed over every folded segment. */
  readonly liveBy: Readonly<Record<string, number>>
  /** Directory pages: numbered 0 to `pages - 1`, each naming the previous one by hash. */
  readonly pages: number
  /** SHA-256 (hex) and size of the newest directory page. */
  readonly hash: string
  readonly bytes: number
}

/** Stored form of a {@link FoldedHistory} (`d` tells it from a summary, which has `i`). */
interface StoredFold {
  readonly d: number
  readonly s: number
  readonly l: number
  readonly n: number
  readonly c: Record<string, number>
  readonly h: string
  readonly z: number
}

/** The element of `segments` for `fold`. */
export const encodeFoldedHistory = (fold: FoldedHistory): StoredFold => ({
  d: fold.pages,
  s: fold.segments,
  l: fold.through,
  n: fold.count,
  c: { ...fold.liveBy },
  h: fold.hash,
  z: fold.bytes,
})

/** Decodes an element of `segments`; undefined when it is not the folded history's record. */
export function decodeFoldedHistory(value: unknown): FoldedHistory | undefined {
  const v = storedCounts<StoredFold>(value, ["d", "s", "l", "n", "z"])
  if (!v || (v as { i?: unknown }).i !== undefined) return undefined
  return { pages: v.d, segments: v.s, through: v.l, count: v.n, liveBy: v.c, hash: v.h, bytes: v.z }
}

/**
 * A directory page, decoded: the summaries of the segments one fold moved out
 * of the live document, with what a reader needs to count and page across
 * them without the other pages — the live messages per author in every
 * earlier page (`before`) and the previous page's name.
 */
export interface DirectoryPage {
  readonly conversation: ConversationId
  /** Position in the chain, from 0 (the oldest segments). */
  readonly page: number
  /** Live messages per author in the segments of pages 0 ..= `page - 1`. */
  readonly before: Readonly<Record<string, number>>
  /** Hash and size of page `page - 1` (undefined for page 0). */
  readonly previous?: { readonly hash: string; readonly bytes: number }
  /** Consecutive segments, by index. */
  readonly summaries: readonly SegmentSummary[]
}

/** Encodes a directory page: lib0 var-uints and strings, `writeAny` of each stored summary. */
export function encodeDirectoryPage(page: DirectoryPage): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, DIRECTORY_FORMAT)
  encoding.writeVarString(encoder, page.conversation)
  encoding.writeVarUint(encoder, page.page)
  encoding.writeAny(encoder, { ...page.before })
  encoding.writeVarString(encoder, page.previous?.hash ?? "")
  encoding.writeVarUint(encoder, page.previous?.bytes ?? 0)
  encoding.writeVarUint(encoder, page.summaries.length)
  for (const summary of page.summaries)
    encoding.writeAny(encoder, encodeSegmentSummary(summary) as unknown as encoding.AnyEncodable)
  return encoding.toUint8Array(encoder)
}

/** Decodes a directory page; a typed MALFORMED_FRAME error when the bytes are not one. */
export function decodeDirectoryPage(bytes: Uint8Array): DirectoryPage {
  try {
    const decoder = decoding.createDecoder(bytes)
    const format = decoding.readVarUint(decoder)
    if (format !== DIRECTORY_FORMAT) throw new Error(`directory page format ${format}`)
    const conversation = decoding.readVarString(decoder) as ConversationId
    const page = decoding.readVarUint(decoder)
    const before = decoding.readAny(decoder) as Record<string, number>
    if (typeof before !== "object" || before === null) throw new Error("no counts before the page")
    const previousHash = decoding.readVarString(decoder)
    const previousBytes = decoding.readVarUint(decoder)
    const count = decoding.readVarUint(decoder)
    const summaries: SegmentSummary[] = []
    for (let i = 0; i < count; i++) {
      const summary = decodeSegmentSummary(decoding.readAny(decoder))
      if (!summary) throw new Error("a directory entry is not a segment summary")
      summaries.push(summary)
    }
    return {
      conversation,
      page,
      before,
      ...(previousHash ? { previous: { hash: previousHash, bytes: previousBytes } } : {}),
      summaries,
    }
  } catch (cause) {
    if (cause instanceof ParleyError) throw cause
    throw new ParleyError(ErrorCode.MALFORMED_FRAME, "not a history directory page", { cause })
  }
}

/** Live messages per author of `a` and `b` added up (`b` may hold negative counts); authors left at 0 are dropped. */
export function addCounts(
  a: Readonly<Record<string, number>>,
  b: Readonly<Record<string, number>>,
): Record<string, number> {
  const sum: Record<string, number> = { ...a }
  for (const [author, n] of Object.entries(b)) {
    const total = (sum[author] ?? 0) + n
    if (total === 0) delete sum[author]
    else sum[author] = total
  }
  return sum
}

const negated = (counts: Readonly<Record<string, number>>): Record<string, number> =>
  Object.fromEntries(Object.entries(counts).map(([author, n]) => [author, -n]))

/** Messages in `counts` (live messages per author) not written by `user`. */
const othersIn = (counts: Readonly<Record<string, number>>, user: UserId): number => {
  let n = 0
  for (const author in counts) if (author !== user) n += counts[author]!
  return n
}

/** A fold of the oldest live summaries into the next directory page (see {@link planFold}). */
export interface FoldPlan {
  readonly page: DirectoryPage
  readonly bytes: Uint8Array
  /** The live document's new record of the folded history. */
  readonly fold: FoldedHistory
  /** Indexes of the summaries it moves out of the live document. */
  readonly folded: ReadonlySet<number>
}

/**
 * The next fold of `doc`'s segment summaries once the live document holds
 * `keepSummaries + foldSize` or more of them (counting `adding`, a summary
 * about to be added): the oldest `foldSize` go into directory page
 * `fold.pages`, which names the previous page; the folded record adds their
 * counts. Undefined when not due.
 */
export function planFold(
  doc: Y.Doc,
  conversation: ConversationId,
  options: { readonly keepSummaries: number; readonly foldSize: number },
  adding?: SegmentSummary,
): FoldPlan | undefined {
  if (options.foldSize < 1) return undefined
  const live = adding ? [...sealedSegments(doc), adding] : [...sealedSegments(doc)]
  if (live.length < options.keepSummaries + options.foldSize) return undefined
  const previous = foldedHistory(doc)
  const summaries = live.slice(0, options.foldSize)
  const page: DirectoryPage = {
    conversation,
    page: previous?.pages ?? 0,
    before: previous?.liveBy ?? {},
    ...(previous ? { previous: { hash: previous.hash, bytes: previous.bytes } } : {}),
    summaries,
  }
  const bytes = encodeDirectoryPage(page)
  let liveBy = previous?.liveBy ?? {}
  for (const summary of summaries) liveBy = addCounts(liveBy, summary.liveBy)
  const fold: FoldedHistory = {
    segments: summaries.at(-1)!.index + 1,
    through: summaries.at(-1)!.to,
    count: (previous?.count ?? 0) + summaries.reduce((n, s) => n + s.count, 0),
    liveBy,
    pages: page.page + 1,
    hash: segmentHash(bytes),
    bytes: bytes.length,
  }
  return { page, bytes, fold, folded: new Set(summaries.map((s) => s.index)) }
}

/**
 * Applies `plan` to the live document (inside the caller's transaction):
 * drops the folded summaries and the old folded record, adds the new one.
 * Call once the directory page is durable.
 */
export function applyFold(doc: Y.Doc, plan: FoldPlan): void {
  const segments = typesOf(doc).segments
  const positions: number[] = []
  segments.forEach((value, position) => {
    const summary = decodeSegmentSummary(value)
    if ((summary && plan.folded.has(summary.index)) || decodeFoldedHistory(value)) positions.push(position)
  })
  for (let i = positions.length - 1; i >= 0; i--) segments.delete(positions[i]!, 1)
  segments.insert(0, [encodeFoldedHistory(plan.fold)])
  sealedHistory(doc).addPage(plan.page, plan.fold.hash)
}

/**
 * The chain of directory pages `pages` (every page of a conversation, oldest
 * first) with `replaced` summaries put in (a purge re-sealed those segments
 * under new hashes): the page holding one and every later page (each names
 * the one before it by hash) re-encoded. Returns the pages that changed and
 * the folded record naming the new newest page; undefined when none holds a
 * replaced summary.
 */
export function refoldPages(
  fold: FoldedHistory,
  pages: readonly DirectoryPage[],
  replaced: ReadonlyMap<number, SegmentSummary>,
): { pages: { page: DirectoryPage; bytes: Uint8Array }[]; fold: FoldedHistory } | undefined {
  const first = pages.findIndex((p) => p.summaries.some((s) => replaced.has(s.index)))
  if (first < 0) return undefined
  const changed: { page: DirectoryPage; bytes: Uint8Array }[] = []
  let previous = pages[first]!.previous
  // Live messages per author the replaced summaries no longer count (a purge's): every later
  // page's `before` and the folded record's total drop them too.
  let dropped: Record<string, number> = {}
  for (const old of pages.slice(first)) {
    const before = addCounts(old.before, dropped)
    const summaries = old.summaries.map((s) => {
      const summary = replaced.get(s.index)
      if (!summary) return s
      dropped = addCounts(addCounts(dropped, summary.liveBy), negated(s.liveBy))
      return summary
    })
    const page: DirectoryPage = { ...old, before, ...(previous ? { previous } : {}), summaries }
    const bytes = encodeDirectoryPage(page)
    changed.push({ page, bytes })
    previous = { hash: segmentHash(bytes), bytes: bytes.length }
  }
  return {
    pages: changed,
    fold: { ...fold, liveBy: addCounts(fold.liveBy, dropped), hash: previous!.hash, bytes: previous!.bytes },
  }
}

/**
 * Decoded summaries per `segments` array, kept until the array changes (the
 * relay appends when it seals, replaces a summary when it purges a segment).
 */
const summaryCache = new WeakMap<
  Y.Array<unknown>,
  { length: number; list: readonly SegmentSummary[]; through: number; fold: FoldedHistory | undefined }
>()
const observedSegments = new WeakSet<Y.Array<unknown>>()

/**
 * The summaries of the sealed segments the live document lists (every one
 * not folded into a directory page), oldest first. Decoded once per change of
 * the list, not on every call: unread counts and the sequencer ask on every
 * message.
 */
export function sealedSegments(doc: Y.Doc): readonly SegmentSummary[] {
  return summariesOf(doc).list
}

/** The folded part of `doc`'s sealed history, if any (see {@link FoldedHistory}). */
export function foldedHistory(doc: Y.Doc): FoldedHistory | undefined {
  return summariesOf(doc).fold
}

function summariesOf(doc: Y.Doc): {
  list: readonly SegmentSummary[]
  through: number
  fold: FoldedHistory | undefined
} {
  const segments = typesOf(doc).segments
  const cached = summaryCache.get(segments)
  if (cached && cached.length === segments.length) return cached
  if (!observedSegments.has(segments)) {
    observedSegments.add(segments)
    segments.observe(() => summaryCache.delete(segments))
  }
  const list: SegmentSummary[] = []
  let through = 0
  let fold: FoldedHistory | undefined
  for (const value of segments) {
    const summary = decodeSegmentSummary(value)
    if (!summary) {
      const folded = decodeFoldedHistory(value)
      // Two records can meet only in a replica merging the relay's own writes; the furthest is current.
      if (folded && (!fold || folded.segments > fold.segments)) fold = folded
      continue
    }
    list.push(summary)
    through = Math.max(through, summary.to)
  }
  if (fold) through = Math.max(through, fold.through)
  const folded = fold?.segments ?? 0
  const live = list.filter((s) => s.index >= folded).sort((a, b) => a.index - b.index)
  const entry = { length: segments.length, list: live, through, fold }
  summaryCache.set(segments, entry)
  return entry
}

/** Highest sequence number sealed (0 when nothing is). */
export function sealedThrough(doc: Y.Doc): number {
  return typesOf(doc).segments.length === 0 ? 0 : summariesOf(doc).through
}

/**
 * The summary of segment `index`: from the live document, or from a
 * directory page this replica holds; undefined when neither has it.
 */
export function segmentSummary(doc: Y.Doc, index: number): SegmentSummary | undefined {
  const live = sealedSegments(doc).find((s) => s.index === index)
  if (live) return live
  const fold = foldedHistory(doc)
  if (!fold || index >= fold.segments) return undefined
  return sealedHistory(doc).folded(index)
}

/**
 * Every summary this replica knows, oldest first: the folded ones of the
 * directory pages it holds, then the live document's.
 */
export function knownSegments(doc: Y.Doc): SegmentSummary[] {
  const fold = foldedHistory(doc)
  const history = sealedHistory(doc)
  const folded: SegmentSummary[] = []
  if (fold)
    for (const n of history.pagesHeld())
      for (const s of history.page(n)!.summaries) if (s.index < fold.segments) folded.push(s)
  return [...folded, ...sealedSegments(doc)]
}

/**
 * The directory page to fetch next when paging back (or counting) below
 * what the held pages cover: the newest one when none is held, else the one
 * before the oldest held. Its expected hash is the folded record's or the
 * next page's `previous`. Undefined when every page is held, or none exists.
 */
export function nextDirectoryPage(doc: Y.Doc): { page: number; hash: string } | undefined {
  const fold = foldedHistory(doc)
  const history = sealedHistory(doc)
  let expected = fold && fold.pages > 0 ? { page: fold.pages - 1, hash: fold.hash } : undefined
  while (expected) {
    if (history.pageHash(expected.page) !== expected.hash) return expected
    const previous = history.page(expected.page)!.previous
    expected = previous && expected.page > 0 ? { page: expected.page - 1, hash: previous.hash } : undefined
  }
  return undefined
}

/**
 * The held directory page whose segments hold sequence number `seq`, if the
 * replica holds it (and every later page: each is found from the next).
 */
export function directoryPageOf(doc: Y.Doc, seq: number): DirectoryPage | undefined {
  const fold = foldedHistory(doc)
  if (!fold || seq > fold.through) return undefined
  const history = sealedHistory(doc)
  for (const n of history.pagesHeld().reverse()) {
    const page = history.page(n)!
    const first = page.summaries[0]
    const last = page.summaries.at(-1)
    if (first && last && first.from <= seq && seq <= last.to) return page
  }
  return undefined
}

/** The deletion of a sealed message, as the live document holds it. */
export interface SealedDeletion {
  readonly author: UserId
  readonly seq: number
  readonly deletedAt: number
  readonly deletedBy: UserId
  /** Present when the relay removed a fleeting message at its expiry (see `DeletedMessageRecord`). */
  readonly priority?: "fleeting"
}

/**
 * Stored form of a {@link SealedDeletion} in `tombstones`: `a` author, `s`
 * seq, `x` deletedAt, `d` deletedBy, `p` an expiry's priority.
 */
export const encodeTombstone = (t: SealedDeletion) => ({
  a: t.author,
  s: t.seq,
  x: t.deletedAt,
  d: t.deletedBy,
  ...(t.priority !== undefined ? { p: t.priority } : {}),
})

/** Decodes a value of `tombstones`; undefined when malformed. */
export function decodeTombstone(value: unknown): SealedDeletion | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as { a?: unknown; s?: unknown; x?: unknown; d?: unknown; p?: unknown }
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
    (v.p !== undefined && v.p !== "fleeting") ||
    Object.keys(v).length !== (v.p === undefined ? 4 : 5)
  )
    return undefined
  const deletion = { author: v.a as UserId, seq: v.s, deletedAt: v.x, deletedBy: v.d as UserId }
  return v.p === undefined ? deletion : { ...deletion, priority: v.p }
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
  /** Ids held in two segments (written again before the relay refused sealed ids): rare. */
  private readonly sealedTwice = new Set<MessageId>()
  /** Directory pages held, by number, with the hash they were fetched (or written) under. */
  private readonly pages = new Map<number, { page: DirectoryPage; hash: string }>()
  /** Summaries of the folded segments in the held directory pages, by segment index. */
  private readonly foldedSummaries = new Map<number, SegmentSummary>()
  /** Increases whenever a segment is added. */
  version = 0
  /** Ids {@link entry} did not find, while {@link recordMisses} records. */
  private misses: Set<MessageId> | undefined

  /** Adds a decoded segment (again: no change). */
  add(segment: Segment): void {
    if (this.segments.has(segment.index)) return
    this.segments.set(segment.index, segment)
    for (const entry of segment.entries) this.index(entry)
    this.version++
  }

  /**
   * Finds `entry` by its id, unless an earlier-numbered entry holds that id:
   * an id sealed twice (written again before the relay refused sealed ids)
   * is its first message's.
   */
  private index(entry: SealedEntry): void {
    const held = this.byId.get(entry.record.id)
    if (held && held.seq !== entry.seq) this.sealedTwice.add(entry.record.id)
    if (!held || entry.seq <= held.seq) this.byId.set(entry.record.id, entry)
  }

  /**
   * Holds `segment` in place of the one at its index (a segment re-sealed
   * without purged messages: see {@link purgeFromSegment}), so that the old
   * records are no longer held.
   */
  replace(segment: Segment): void {
    this.segments.set(segment.index, segment)
    for (const entry of segment.entries) this.index(entry)
    this.version++
  }

  /** Stops holding the segment at `index` (the relay dropped or re-sealed it), and its records. */
  remove(index: number): void {
    const segment = this.segments.get(index)
    if (!segment) return
    this.segments.delete(index)
    const dropped = new Set<MessageId>()
    for (const entry of segment.entries)
      if (this.byId.get(entry.record.id) === entry) {
        this.byId.delete(entry.record.id)
        if (this.sealedTwice.has(entry.record.id)) dropped.add(entry.record.id)
      }
    // An id sealed twice is found in its other segment again.
    if (dropped.size > 0)
      for (const other of this.segments.values())
        for (const entry of other.entries) if (dropped.has(entry.record.id)) this.index(entry)
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
    const found = this.byId.get(id)
    if (!found) this.misses?.add(id)
    return found
  }

  /**
   * Notes every id {@link entry} is asked about and does not find, until the
   * returned function is called; it returns them. The relay learns this way
   * which sealed messages a trusted change looked for (an edit of one whose
   * segment it does not hold), to read only their segments before trying
   * again. One recording at a time.
   */
  recordMisses(): () => MessageId[] {
    const misses = new Set<MessageId>()
    this.misses = misses
    return () => {
      if (this.misses === misses) this.misses = undefined
      return [...misses]
    }
  }

  /** Indexes of the held segments, ascending. */
  held(): number[] {
    return [...this.segments.keys()].sort((a, b) => a - b)
  }

  /** Holds directory page `page` (encoded, its SHA-256 is `hash`), in place of any held under its number. */
  addPage(page: DirectoryPage, hash: string): void {
    this.removePage(page.page)
    this.pages.set(page.page, { page, hash })
    for (const summary of page.summaries) this.foldedSummaries.set(summary.index, summary)
    this.version++
  }

  /** Stops holding directory page `n` (re-written by a purge). */
  removePage(n: number): void {
    const held = this.pages.get(n)
    if (!held) return
    this.pages.delete(n)
    for (const summary of held.page.summaries)
      if (this.foldedSummaries.get(summary.index) === summary) this.foldedSummaries.delete(summary.index)
    this.version++
  }

  /** Directory page `n`, if held. */
  page(n: number): DirectoryPage | undefined {
    return this.pages.get(n)?.page
  }

  /** The hash directory page `n` was held under, if held. */
  pageHash(n: number): string | undefined {
    return this.pages.get(n)?.hash
  }

  /** Numbers of the held directory pages, ascending. */
  pagesHeld(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b)
  }

  /** The summary of folded segment `index`, if a held directory page lists it. */
  folded(index: number): SegmentSummary | undefined {
    return this.foldedSummaries.get(index)
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
 * `exact`), minus sealed messages by others deleted since. Below the live
 * summaries, the folded record's counts minus what the directory page of the
 * marker says lies at or below it (everything folded counts when that page
 * is not held: not exact either).
 */
export function sealedUnread(doc: Y.Doc, user: UserId, after: number): SealedUnread {
  // Inside a transaction, or while its observers run (the one that tells a tombstone's change may
  // not have yet), counted afresh.
  if (doc._transaction !== null || doc._transactionCleanups.length > 0)
    return countSealedUnread(doc, user, after)
  const summaries = summariesOf(doc)
  const history = sealedHistory(doc).version
  const tombstones = tombstoneVersion(typesOf(doc).tombstones)
  let cache = sealedUnreadCache.get(doc)
  if (
    !cache ||
    cache.summaries !== summaries ||
    cache.history !== history ||
    cache.tombstones !== tombstones
  ) {
    cache = { summaries, history, tombstones, byUser: new Map() }
    sealedUnreadCache.set(doc, cache)
  }
  const known = cache.byUser.get(user)
  if (known !== undefined && known.after === after) return known.result
  const result = countSealedUnread(doc, user, after)
  cache.byUser.set(user, { after, result })
  return result
}

/** What {@link sealedUnread} answers (shared by its callers: not to be changed). */
export interface SealedUnread {
  readonly count: number
  readonly exact: boolean
}

/**
 * Each document's sealed unread counts by user and marker, while what they are
 * counted from stays as it was: the live summaries (their cached list), the
 * held segments and directory pages (`SealedHistory.version`) and the
 * tombstones. A connected member of a big room is counted on every message, and
 * a member who rarely reads (a marker below the sealed history) walked every
 * live summary and decoded every tombstone each time.
 */
const sealedUnreadCache = new WeakMap<
  Y.Doc,
  {
    readonly summaries: object
    readonly history: number
    readonly tombstones: number
    readonly byUser: Map<UserId, { readonly after: number; readonly result: SealedUnread }>
  }
>()

/** Changes seen of each document's tombstones map (observed from the first count). */
const tombstoneVersions = new WeakMap<Y.Map<unknown>, { version: number }>()

function tombstoneVersion(tombstones: Y.Map<unknown>): number {
  let state = tombstoneVersions.get(tombstones)
  if (!state) {
    const created = { version: 0 }
    tombstones.observe(() => {
      created.version++
    })
    tombstoneVersions.set(tombstones, created)
    state = created
  }
  return state.version
}

function countSealedUnread(doc: Y.Doc, user: UserId, after: number): SealedUnread {
  const history = sealedHistory(doc)
  const tombstones = typesOf(doc).tombstones
  let count = 0
  let exact = true
  /** Unread in one segment that ends above the marker. */
  const inSegment = (summary: SegmentSummary): number => {
    const others = othersIn(summary.liveBy, user)
    if (summary.from > after) return others
    const segment = history.segment(summary.index)
    if (!segment) {
      exact = false
      return others
    }
    // A message purged from its segment by a relay that kept tombstones is a placeholder there and a tombstone
    // here: counted here like the live record it replaced, since the tombstones below subtract it. Purged
    // since, its tombstone is gone with the purge, and its summary no longer counts it (`purgeFromSegment`).
    let n = 0
    for (const { seq, record } of segment.entries)
      if (seq > after && record.author !== user && (!isDeletedRecord(record) || tombstones.has(record.id)))
        n++
    return n
  }
  const summaries = sealedSegments(doc)
  // Newest first: a reader's marker is usually near the end, so this stops after a segment or two.
  for (let i = summaries.length - 1; i >= 0; i--) {
    const summary = summaries[i]!
    if (summary.to <= after) break
    count += inSegment(summary)
  }
  const fold = foldedHistory(doc)
  if (fold && after < fold.through) {
    count += othersIn(fold.liveBy, user)
    const page = after === 0 ? undefined : directoryPageOf(doc, after + 1)
    if (page) {
      // What lies at or below the marker: every earlier page, and this page's segments up to it.
      count -= othersIn(page.before, user)
      for (const summary of page.summaries) {
        if (summary.to <= after) count -= othersIn(summary.liveBy, user)
        else if (summary.from <= after) count += inSegment(summary) - othersIn(summary.liveBy, user)
      }
    } else if (after > 0) exact = false
  }
  for (const value of tombstones.values()) {
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
 * How far the relay had the previous live document's clients when the
 * current epoch began (empty before the first epoch): a replica of that
 * document has its structs below it in the epoch's content, those beyond are
 * its pending work. A replica of an earlier epoch needs that epoch's record
 * instead ({@link baselineSource}). Stored as a Yjs state vector
 * (`encodeEpochBaseline`, about 8 bytes per client id); relays before epoch
 * records kept every epoch's clients here, first as a JSON object of decimal
 * keys, which is still read.
 */
export function epochBaseline(doc: Y.Doc): Map<number, number> {
  const value = typesOf(doc).meta.get(MetaKey.epochFrom)
  if (value instanceof Uint8Array) return decodeEpochBaseline(value) ?? new Map()
  const baseline = new Map<number, number>()
  if (typeof value !== "object" || value === null) return baseline
  for (const [client, clock] of Object.entries(value as Record<string, unknown>))
    if (typeof clock === "number") baseline.set(Number(client), clock)
  return baseline
}

/** `baseline` in the form {@link epochBaseline} reads: a Yjs state vector. */
export function encodeEpochBaseline(baseline: ReadonlyMap<number, number>): Uint8Array {
  const encoder = encoding.createEncoder()
  writeBaseline(encoder, baseline)
  return encoding.toUint8Array(encoder)
}

function writeBaseline(encoder: encoding.Encoder, baseline: ReadonlyMap<number, number>): void {
  encoding.writeVarUint(encoder, baseline.size)
  for (const [client, clock] of baseline) {
    encoding.writeVarUint(encoder, client)
    encoding.writeVarUint(encoder, clock)
  }
}

function readBaseline(decoder: decoding.Decoder): Map<number, number> {
  const decoded = new Map<number, number>()
  for (let n = decoding.readVarUint(decoder); n > 0; n--)
    decoded.set(decoding.readVarUint(decoder), decoding.readVarUint(decoder))
  return decoded
}

/** A baseline's bytes read back; undefined when they are not one (not written by a relay). */
function decodeEpochBaseline(bytes: Uint8Array): Map<number, number> | undefined {
  try {
    return readBaseline(decoding.createDecoder(bytes))
  } catch {
    return undefined
  }
}

/**
 * How many epoch records the relay keeps of the live documents before `doc`
 * (`meta.epochs`): 0 for a conversation's first live document and for epochs
 * a relay before records started. It is also the number of the record that
 * will describe `doc` once a later epoch replaces it.
 */
export function epochCount(doc: Y.Doc): number {
  const value = typesOf(doc).meta.get(MetaKey.epochs)
  return typeof value === "number" && Number.isSafeInteger(value) && value > 0 ? value : 0
}

/** Version of the {@link EpochRecord} layout. */
export const EPOCH_RECORD_FORMAT = 1

/**
 * What the relay keeps of a live document an epoch replaced, so that a
 * replica of it can tell its pending work however many epochs later it
 * comes back: the document's epoch (the client id its content was written
 * under; 0 for a conversation's first live document) and how far the relay
 * had each of its clients. Record N describes the live document whose
 * `meta.epochs` was N. Only the newest is also in the live document
 * (`meta.epochFrom`), which so holds one epoch's clients, not every client
 * ever seen: a conversation's live document does not grow with the device
 * sessions it has had. Served by number (PROTOCOL.md, "Epochs").
 */
export interface EpochRecord {
  readonly conversation: ConversationId
  readonly number: number
  readonly epoch: number
  readonly baseline: ReadonlyMap<number, number>
}

/**
 * Encodes an epoch record: var-uint format (1), var-string conversation id,
 * var-uint number, var-uint epoch, then the baseline as a state vector.
 */
export function encodeEpochRecord(record: EpochRecord): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, EPOCH_RECORD_FORMAT)
  encoding.writeVarString(encoder, record.conversation)
  encoding.writeVarUint(encoder, record.number)
  encoding.writeVarUint(encoder, record.epoch)
  writeBaseline(encoder, record.baseline)
  return encoding.toUint8Array(encoder)
}

/** Decodes an epoch record; a typed MALFORMED_FRAME error when the bytes are not one. */
export function decodeEpochRecord(bytes: Uint8Array): EpochRecord {
  try {
    const decoder = decoding.createDecoder(bytes)
    const format = decoding.readVarUint(decoder)
    if (format !== EPOCH_RECORD_FORMAT) throw new Error(`epoch record format ${format}`)
    const conversation = decoding.readVarString(decoder) as ConversationId
    const number = decoding.readVarUint(decoder)
    const epoch = decoding.readVarUint(decoder)
    return { conversation, number, epoch, baseline: readBaseline(decoder) }
  } catch (cause) {
    throw new ParleyError(ErrorCode.MALFORMED_FRAME, "not an epoch record", { cause })
  }
}

/**
 * The record that ends `doc`'s epoch when a fresh one replaces it: how far
 * the relay has each of its clients now. The first record (number 0) also
 * keeps what `doc`'s own `epochFrom` holds: for a document of a relay before
 * records, every earlier epoch's clients, so that replicas of any of those
 * epochs, which carry no number, find theirs in record 0.
 */
export function endOfEpoch(
  doc: Y.Doc,
  conversation: ConversationId,
  stateVector: Map<number, number>,
): EpochRecord {
  const number = epochCount(doc)
  const baseline = number === 0 ? epochBaseline(doc) : new Map<number, number>()
  for (const [client, clock] of stateVector) baseline.set(client, clock)
  return { conversation, number, epoch: epochOf(doc) ?? 0, baseline }
}

/**
 * Where the baseline that tells `stale`'s pending work is, `fresh` being the
 * relay's live document: `fresh` holds it when `stale` is of the epoch just
 * before (or of fresh's own, or when fresh names no records); otherwise the
 * epoch record `stale`'s document will be described by, which the client
 * asks the relay for (and checks with {@link checkEpochRecord}).
 */
export function baselineSource(
  stale: Y.Doc,
  fresh: Y.Doc,
): { readonly baseline: Map<number, number> } | { readonly record: number } {
  const count = epochCount(fresh)
  const staleCount = epochCount(stale)
  if (count === 0 || staleCount >= count - 1 || epochOf(stale) === epochOf(fresh))
    return { baseline: epochBaseline(fresh) }
  return { record: staleCount }
}

/**
 * `record`'s baseline when it is the one `stale` needs (see
 * {@link baselineSource}): of its conversation, the number asked, and the
 * epoch `stale` was written in — except for record 0, whose baseline also
 * holds every epoch a relay before records started (`endOfEpoch`), any of
 * which a replica without a count may be of. A typed INVALID_UPDATE error otherwise.
 */
export function checkEpochRecord(
  record: EpochRecord,
  stale: Y.Doc,
  conversation: ConversationId,
  number: number,
): Map<number, number> {
  const epochMatches = number === 0 || record.epoch === (epochOf(stale) ?? 0)
  if (record.conversation !== conversation || record.number !== number || !epochMatches)
    throw new ParleyError(
      ErrorCode.INVALID_UPDATE,
      `epoch record ${record.number} of ${record.conversation} (epoch ${record.epoch}) is not the record ${number} of ${conversation} this replica needs`,
    )
  return new Map(record.baseline)
}

/**
 * `segment` re-sealed without the content of the messages `ids` (sealed, then
 * deleted: each has a tombstone in the live document): their records become
 * deletion placeholders, as if they had been deleted before sealing. Undefined
 * when the segment holds none of them with content. The summary, with the
 * new hash and size, no longer counts them in `liveBy` (`count` still does:
 * placeholders are entries), so that their tombstones (`purged`) can leave
 * the live document in the relay's change that names the new hash: a
 * deletion then costs the live document nothing for good.
 * Segments purged by relays before that still count theirs in `liveBy`, and
 * keep their tombstones, which unread counts subtract.
 */
export function purgeFromSegment(
  segment: Segment,
  summary: SegmentSummary,
  deletions: ReadonlyMap<MessageId, SealedDeletion>,
): { segment: Segment; bytes: Uint8Array; summary: SegmentSummary; purged: MessageId[] } | undefined {
  const purged: MessageId[] = []
  const dropped: Record<string, number> = {}
  const entries = segment.entries.map((entry): SealedEntry => {
    const deletion = deletions.get(entry.record.id)
    if (!deletion || isDeletedRecord(entry.record)) return entry
    purged.push(entry.record.id)
    dropped[entry.record.author] = (dropped[entry.record.author] ?? 0) - 1
    const placeholder: DeletedMessageRecord = {
      id: entry.record.id,
      author: entry.record.author,
      createdAt: entry.record.createdAt,
      deletedAt: deletion.deletedAt,
      deletedBy: deletion.deletedBy,
      ...(deletion.priority !== undefined ? { priority: deletion.priority } : {}),
    }
    return { seq: entry.seq, record: placeholder }
  })
  if (purged.length === 0) return undefined
  const resealed: Segment = { ...segment, entries }
  const bytes = encodeSegment(resealed)
  const liveBy = addCounts(summary.liveBy, dropped)
  return {
    segment: resealed,
    bytes,
    summary: { ...summary, liveBy, hash: segmentHash(bytes), bytes: bytes.length },
    purged,
  }
}
