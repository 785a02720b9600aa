import {
  decodeSegment,
  ErrorCode,
  epochBaseline,
  lastSequence,
  listSealedMessages,
  type MessageId,
  type MessageView,
  markersOf,
  messageIndex,
  ParleyError,
  parseReactionKey,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  segmentHash,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import type { DocumentConnection } from "../connection.js"
import type { SegmentCache } from "../history-cache.js"

/** What {@link SealedHistory} needs of its conversation. */
export interface SealedHistoryHost {
  readonly user: UserId
  /** This device's cache of fetched segments. */
  readonly segments: SegmentCache
  /** The current replica. */
  doc(): Y.Doc
  /** The current connection to the relay. */
  connection(): DocumentConnection
  /** A segment was added to the replica: the unread count may become exact. */
  held(): void
}

/**
 * The conversation's sealed history: older messages the relay sealed into
 * immutable segments, fetched on demand (from this device's cache when it has
 * them, which also works offline), checked against their hash, and kept in
 * the replica across resyncs. Pages backwards with {@link loadOlder}.
 */
export class SealedHistory {
  /** Sealed history segments this replica holds (fetched or cached), kept across resyncs. */
  private readonly heldSegments = new Map<number, Segment>()
  /** The hash each held segment was fetched under, to notice when the relay re-seals it. */
  private readonly heldHashes = new Map<number, string>()
  /** Segments being fetched, by index: one fetch each however many callers wait. */
  private readonly fetching = new Map<number, Promise<Segment>>()
  /** Sequence number below which {@link loadOlder} continues (undefined: below the live messages). */
  private olderFrom: number | undefined

  constructor(private readonly host: SealedHistoryHost) {}

  /** The segments held, for a rebuilt replica to hold too. */
  get segments(): Iterable<Segment> {
    return this.heldSegments.values()
  }

  /** The `limit` messages before the oldest loaded so far, oldest first (see `Conversation.loadOlder`). */
  async loadOlder(limit: number): Promise<MessageView[]> {
    const doc = () => this.host.doc()
    const before = this.olderFrom ?? this.firstLiveSeq()
    for (;;) {
      if (listSealedMessages(doc(), before, limit).length >= limit) break
      const next = sealedSegments(doc())
        .filter((s) => s.to < before && !this.heldSegments.has(s.index))
        .at(-1)
      if (!next) break
      await this.fetchSegment(next)
    }
    const page = listSealedMessages(doc(), before, limit)
    if (page.length > 0) this.olderFrom = page[0]!.seq
    return page
  }

  /** Every older message loaded so far, oldest first (the live ones not included). */
  olderMessages(): MessageView[] {
    const before = this.firstLiveSeq()
    const from = this.olderFrom ?? before
    return listSealedMessages(this.host.doc(), before, Number.MAX_SAFE_INTEGER).filter(
      (m) => (m.seq ?? 0) >= from,
    )
  }

  /** Whether messages older than those loaded exist (sealed, not loaded yet). */
  get hasOlder(): boolean {
    const from = this.olderFrom ?? this.firstLiveSeq()
    return sealedSegments(this.host.doc()).some((s) => s.from < from)
  }

  /**
   * Fetches the segment the user's read marker falls in, when it is sealed:
   * without it the unread count takes that whole segment as unread.
   */
  fetchMarkerSegment(): void {
    const doc = this.host.doc()
    const marker = markersOf(doc, this.host.user).read
    if (marker === 0 || marker >= sealedThrough(doc)) return
    const summary = sealedSegments(doc).find((s) => s.from <= marker && marker <= s.to)
    if (!summary || this.heldSegments.has(summary.index)) return
    this.fetchSegment(summary).catch(() => {
      // Offline or refused: counted as unread until a later attempt.
    })
  }

  /**
   * Forgets the held segments `doc` (the live document) no longer names by
   * the hash they were fetched under (re-sealed without purged messages, or
   * dropped with a deleted conversation): here, in the replica's sealed
   * history and in this device's cache. A re-sealed one is fetched again at once.
   */
  dropStale(doc: Y.Doc): void {
    if (this.host.doc() !== doc) return
    const named = new Map(sealedSegments(doc).map((s) => [s.index, s]))
    for (const [index, hash] of this.heldHashes) {
      const summary = named.get(index)
      if (summary?.hash === hash) continue
      this.heldSegments.delete(index)
      this.heldHashes.delete(index)
      sealedHistory(doc).remove(index)
      void this.host.segments.delete(hash)
      // Held before, so shown before: the re-sealed one takes its place (offline: when it is asked for).
      if (summary) this.fetchSegment(summary).catch(() => {})
    }
  }

  /**
   * Fetches, over `connection`, the segments holding messages that `stale`'s
   * pending edits, reactions and deletions refer to, when `fresh` (the
   * relay's state) no longer holds them live: sealed meanwhile. Pending =
   * written beyond what the relay has (its state vector, or the epoch's baseline).
   */
  async fetchForPendingWork(stale: Y.Doc, fresh: Y.Doc, connection: DocumentConnection): Promise<void> {
    const known = Y.decodeStateVector(Y.encodeStateVector(fresh))
    const baseline = epochBaseline(fresh)
    const pending = (item: Y.Item) =>
      item.id.clock + item.length > (known.get(item.id.client) ?? baseline.get(item.id.client) ?? 0)
    const ids = new Set<MessageId>()
    for (const root of ["edits", "reactions", "tombstones"] as const) {
      for (const [key, item] of (stale.getMap(root) as unknown as { _map: Map<string, Y.Item> })._map) {
        if (!pending(item)) continue
        ids.add((root === "reactions" ? (parseReactionKey(key)?.message ?? key) : key) as MessageId)
      }
    }
    for (const id of messageIndex(stale).deleted.keys()) ids.add(id)
    const staleIndex = messageIndex(stale)
    const freshIndex = messageIndex(fresh)
    const summaries = sealedSegments(fresh)
    const wanted = new Set<SegmentSummary>()
    for (const id of ids) {
      if (freshIndex.records.has(id) || freshIndex.deleted.has(id)) continue
      const seq = staleIndex.seqOf.get(id) ?? sealedHistory(stale).entry(id)?.seq
      const summary = seq === undefined ? undefined : summaries.find((s) => s.from <= seq && seq <= s.to)
      if (summary && !this.heldSegments.has(summary.index)) wanted.add(summary)
    }
    for (const summary of wanted) await this.fetchSegment(summary, connection)
  }

  /** The first sequence number the live document holds (after the sealed history). */
  private firstLiveSeq(): number {
    const doc = this.host.doc()
    const first = messageIndex(doc).order()[0]
    const seq = first === undefined ? undefined : messageIndex(doc).seqOf.get(first)
    return seq ?? Math.max(sealedThrough(doc), lastSequence(doc)) + 1
  }

  /** Segment `summary` from the cache or the relay, checked against its hash, held from now on. */
  private fetchSegment(summary: SegmentSummary, connection = this.host.connection()): Promise<Segment> {
    const held = this.heldSegments.get(summary.index)
    if (held) return Promise.resolve(held)
    let fetching = this.fetching.get(summary.index)
    if (!fetching) {
      fetching = (async () => {
        let bytes = await this.host.segments.get(summary.hash)
        if (!bytes) {
          const page = await connection.requestHistory(summary.index)
          if (page.error !== undefined)
            throw new ParleyError(page.error, `the relay did not serve history segment ${summary.index}`)
          // A segment is immutable and named by its hash: what does not match it is not it.
          if (segmentHash(page.bytes) !== summary.hash)
            throw new ParleyError(ErrorCode.MALFORMED_FRAME, "a history segment does not match its hash")
          bytes = page.bytes
          await this.host.segments.put(summary.hash, bytes)
        }
        const segment = decodeSegment(bytes)
        this.heldHashes.set(segment.index, summary.hash)
        this.hold(segment)
        return segment
      })().finally(() => this.fetching.delete(summary.index))
      this.fetching.set(summary.index, fetching)
    }
    return fetching
  }

  /** Adds a segment to the replica's sealed history. */
  private hold(segment: Segment): void {
    this.heldSegments.set(segment.index, segment)
    sealedHistory(this.host.doc()).add(segment)
    this.host.held()
  }
}
