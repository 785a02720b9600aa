import {
  baselineSource,
  checkEpochRecord,
  type DirectoryPage,
  decodeDirectoryPage,
  decodeEpochRecord,
  decodeSegment,
  directoryPageOf,
  ErrorCode,
  foldedHistory,
  getConversation,
  knownSegments,
  lastSequence,
  listMessages,
  listSealedMessages,
  type MessageId,
  type MessageView,
  markersOf,
  messageIndex,
  nextDirectoryPage,
  ParleyError,
  parseReactionKey,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedThrough,
  segmentHash,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import type { DocumentConnection } from "../connection.js"
import type { SegmentCache } from "../history-cache.js"

/** How often {@link untilCurrent} asks again for a directory page or segment the relay rewrote meanwhile. */
const STALE_RETRIES = 3

/** The wait before the first such retry, in ms; each retry waits once more as long. */
const STALE_BACKOFF_MS = 150

/**
 * Errors thrown for a directory page or segment that no longer matches the
 * hash this device knows it by: not a corrupt answer, the relay rewrote it
 * after the hash was read (a purge re-seals the segment of a deleted message
 * and rewrites the directory pages from its own on). {@link untilCurrent}
 * asks again for those only; other UNAVAILABLEs (offline) are answered at once.
 */
const rewritten = new WeakSet<ParleyError>()

/** The retryable error for `what` (a directory page, a segment) whose bytes the relay served do not match its hash. */
function rewrittenError(what: string): ParleyError {
  const error = new ParleyError(
    ErrorCode.UNAVAILABLE,
    `${what} changed on the relay while it was fetched (the history is being rewritten); try again`,
  )
  rewritten.add(error)
  return error
}

/**
 * Runs `step` until it returns true. `step` reads what to fetch (directory
 * pages, segments, and the hashes they are checked against) from the live
 * document each time, so when it fails on one the relay rewrote meanwhile,
 * it is run again after 150, 300, then 450 ms: the document names the new
 * hash a moment after the relay stores the rewrite. After
 * {@link STALE_RETRIES} such failures the error stands, the retryable
 * UNAVAILABLE. Bytes that do not match are never held or cached: an answer
 * that keeps not matching the hash the document names is refused, whether a
 * rewrite the device has not heard of yet or a corrupt relay, which the
 * device cannot tell apart; asking again later is right for the first and
 * harmless for the second.
 */
async function untilCurrent(step: () => Promise<boolean>): Promise<void> {
  for (let stale = 0; ; ) {
    try {
      if (await step()) return
    } catch (error) {
      if (!(error instanceof ParleyError) || !rewritten.has(error) || ++stale > STALE_RETRIES) throw error
      await new Promise((resolve) => setTimeout(resolve, STALE_BACKOFF_MS * stale))
    }
  }
}

/**
 * Numbers of the directory pages `held` holds that `doc`'s folded record
 * names, by hash, from the newest back: the others were rewritten by a purge
 * since they were held (or are of an older fold).
 */
function pagesOnChain(
  doc: Y.Doc,
  held: (n: number) => { page: DirectoryPage; hash: string } | undefined,
): Set<number> {
  const fold = foldedHistory(doc)
  let expected = fold && fold.pages > 0 ? { page: fold.pages - 1, hash: fold.hash } : undefined
  const current = new Set<number>()
  while (expected) {
    const page = held(expected.page)
    if (page?.hash !== expected.hash) break
    current.add(expected.page)
    const previous = page.page.previous
    expected = previous ? { page: expected.page - 1, hash: previous.hash } : undefined
  }
  return current
}

/**
 * Which message a view is: its id, author and creation time (as in the
 * shared readers, a live message under a sealed one's id with another author
 * or time is another message, which the sealed one replaces).
 */
const messageKey = (m: MessageView): string => `${m.id}\u0000${m.author}\u0000${m.createdAt}`

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
  /** Directory pages of the folded history held (fetched or cached), by number, with their hash. */
  private readonly heldPages = new Map<number, { page: DirectoryPage; hash: string }>()
  /** Directory pages being fetched, by hash. */
  private readonly fetchingPages = new Map<string, Promise<void>>()
  /** Sequence number below which {@link loadOlder} continues (undefined: below the live messages). */
  private olderFrom: number | undefined
  /**
   * Messages (see {@link messageKey}) the user was given: returned by
   * {@link loadOlder}, or loaded older or live when it was called. Kept for
   * the whole paging: a purge drops and fetches again folded segments shown
   * long ago, which are no news.
   */
  private readonly given = new Set<string>()
  /** Messages filled into the window shown that did not fit a call's limit: returned by the next one. */
  private readonly owed = new Set<string>()

  constructor(private readonly host: SealedHistoryHost) {}

  /** The segments held, for a rebuilt replica to hold too. */
  get segments(): Iterable<Segment> {
    return this.heldSegments.values()
  }

  /** Holds what this device fetched (segments, directory pages) in `doc`'s sealed history: a rebuilt replica. */
  holdIn(doc: Y.Doc): void {
    for (const { page, hash } of this.heldPages.values()) sealedHistory(doc).addPage(page, hash)
    for (const segment of this.heldSegments.values()) sealedHistory(doc).add(segment)
  }

  /**
   * The `limit` messages before the oldest loaded so far, oldest first (see
   * `Conversation.loadOlder`), after any that were sealed inside the window
   * shown so far and are held again (fetched here) that the user was not
   * given yet: never more than `limit` (what does not fit comes with the
   * next call), none returned twice. Empty only at the start of the
   * conversation. Rejects with the retryable UNAVAILABLE when a directory
   * page or segment keeps not matching its hash (a purge is rewriting the
   * history, see {@link untilCurrent}).
   */
  async loadOlder(limit: number): Promise<MessageView[]> {
    const doc = () => this.host.doc()
    // What the user could see before: loaded older messages (but for those owed) and the live ones (a live
    // message sealed since and fetched here is no news). By key, not id: a live message under a sealed one's
    // id that is another message (written on this device and refused, or forged) gives way to the sealed one,
    // which is news.
    for (const m of this.olderMessages()) if (!this.owed.has(messageKey(m))) this.given.add(messageKey(m))
    for (const m of listMessages(doc(), { last: Number.MAX_SAFE_INTEGER })) this.given.add(messageKey(m))
    // What was sealed inside the window shown so far first (it was live when the window was loaded).
    await this.fillGaps()
    await this.fetchOlder(this.olderFrom ?? this.firstLiveSeq(), limit)
    // A gap it filled counts too: a window whose re-sealed segment came back answered [] (taken for the
    // conversation's start) while putting 20 messages back into olderMessages(). They take the limit first
    // (some may be owed by an earlier call); what does not fit is owed to the next call.
    const news = (m: MessageView) => !this.given.has(messageKey(m))
    const filled = this.olderMessages().filter(news)
    for (const m of filled.slice(limit)) this.owed.add(messageKey(m))
    const fits = filled.slice(0, limit)
    const page: MessageView[] = []
    for (;;) {
      const before = this.olderFrom ?? this.firstLiveSeq()
      const room = limit - fits.length - page.length
      if (room <= 0) break
      // The page's bounds come from what is sealed, not from what is news: olderFrom moves past each message
      // of it, so that paging back always gets on and the window shown stays contiguous.
      const window = listSealedMessages(doc(), before, room)
      // Sealed messages are all numbered: `seq` is there.
      const from = window[0]?.seq
      if (from === undefined) break
      this.olderFrom = from
      page.unshift(...window.filter(news))
      // Every one of them shown live before it was sealed: paged on, as an empty list says the conversation's start.
      if (page.length + fits.length > 0) break
      await this.fetchOlder(from, limit)
    }
    const result = [...page, ...fits]
    for (const m of result) {
      this.given.add(messageKey(m))
      this.owed.delete(messageKey(m))
    }
    // Only what is still in the window stays owed (a message may have left it: a resync rebuilt the replica).
    if (this.owed.size > 0) {
      const inWindow = new Set(this.olderMessages().map(messageKey))
      for (const key of this.owed) if (!inWindow.has(key)) this.owed.delete(key)
    }
    return result
  }

  /**
   * Fetches segments, and the directory pages that list them, until the
   * replica holds `limit` sealed messages below `before` or the
   * conversation's start. A page or segment the relay rewrote meanwhile is
   * asked for again as the live document names it then, else refused with
   * the retryable UNAVAILABLE (see {@link untilCurrent}).
   */
  private fetchOlder(before: number, limit: number): Promise<void> {
    const doc = () => this.host.doc()
    return untilCurrent(async () => {
      if (listSealedMessages(doc(), before, limit).length >= limit) return true
      const next = knownSegments(doc())
        .filter((s) => s.to < before && !this.heldSegments.has(s.index))
        .at(-1)
      if (next) {
        await this.fetchSegment(next)
        return false
      }
      // Older segments are listed on directory pages not fetched yet: the next one back.
      const page = nextDirectoryPage(doc())
      if (!page) return true
      await this.fetchPage(page)
      return false
    })
  }

  /**
   * Fetches what was sealed inside the window shown so far and is not held
   * (a segment re-sealed while the device was offline, or dropped by a
   * resync): once the conversation is online again, so that the window stays
   * whole without waiting for the next {@link loadOlder}.
   */
  fetchGaps(): void {
    this.fillGaps().catch(() => {})
  }

  /**
   * Fetches the segments {@link gapSegments} names, one at a time as the
   * live document names them then (a segment re-sealed meanwhile is asked for
   * again, see {@link untilCurrent}).
   */
  private fillGaps(): Promise<void> {
    return untilCurrent(async () => {
      const next = this.gapSegments(this.host.doc())[0]
      if (!next) return true
      await this.fetchSegment(next)
      return false
    })
  }

  /** Every older message loaded so far, oldest first (the live ones not included). */
  olderMessages(): MessageView[] {
    const before = this.firstLiveSeq()
    const from = this.olderFrom ?? before
    return listSealedMessages(this.host.doc(), before, Number.MAX_SAFE_INTEGER).filter(
      (m) => (m.seq ?? 0) >= from,
    )
  }

  /** Whether {@link loadOlder} has more to return: older messages (sealed, not loaded yet), or some it owes. */
  get hasOlder(): boolean {
    const from = this.olderFrom ?? this.firstLiveSeq()
    const doc = this.host.doc()
    return (
      // Filled into the window shown by an earlier loadOlder beyond its limit: the next call returns them.
      this.owed.size > 0 ||
      knownSegments(doc).some((s) => s.from < from) ||
      nextDirectoryPage(doc) !== undefined ||
      this.gapSegments(doc).length > 0
    )
  }

  /**
   * Segments sealed inside the window {@link loadOlder} has shown (from its
   * oldest message to the live ones) that are not held: messages that were
   * live when the window was loaded and were sealed since. Without them the
   * window would have a hole that paging back never fills.
   */
  private gapSegments(doc: Y.Doc): SegmentSummary[] {
    const from = this.olderFrom
    if (from === undefined) return []
    // Every sealed message is older than the live ones: the window's other end needs no bound.
    return knownSegments(doc).filter((s) => s.to >= from && !this.heldSegments.has(s.index))
  }

  /**
   * Fetches the segment the user's read marker falls in, when it is sealed:
   * without it the unread count takes that whole segment as unread. In the
   * folded range, the directory pages down to the marker's first.
   */
  fetchMarkerSegment(): void {
    const doc = this.host.doc()
    const marker = markersOf(doc, this.host.user).read
    if (marker === 0 || marker >= sealedThrough(doc)) return
    const fold = foldedHistory(doc)
    const missingPage = fold !== undefined && marker < fold.through && !directoryPageOf(doc, marker + 1)
    const summary = knownSegments(doc).find((s) => s.from <= marker && marker <= s.to)
    if (!missingPage && summary && this.heldSegments.has(summary.index)) return
    untilCurrent(async () => {
      await this.fetchCovering(doc, marker)
      const found = knownSegments(doc).find((s) => s.from <= marker && marker <= s.to)
      if (found) await this.fetchSegment(found)
      return true
    }).catch(() => {
      // Offline or refused: counted as unread until a later attempt.
    })
  }

  /** Fetches directory pages, newest first, until `doc` knows the summaries of `seq` and of `seq + 1`. */
  private async fetchCovering(doc: Y.Doc, seq: number, connection?: DocumentConnection): Promise<void> {
    const fold = foldedHistory(doc)
    if (!fold) return
    for (;;) {
      const covered = (n: number) => n > fold.through || directoryPageOf(doc, n) !== undefined
      if (covered(seq) && covered(seq + 1)) return
      const next = nextDirectoryPage(doc)
      if (!next) return
      await this.fetchPage(next, connection, doc)
    }
  }

  /**
   * Forgets the held segments `doc` (the live document) no longer names by
   * the hash they were fetched under (re-sealed without purged messages, or
   * dropped with a deleted conversation): here, in the replica's sealed
   * history and in this device's cache. A re-sealed one is fetched again at once.
   */
  dropStale(doc: Y.Doc): void {
    if (this.host.doc() !== doc) return
    // Directory pages the chain no longer names (a purge re-wrote them): dropped, fetched again when asked for.
    const current = pagesOnChain(doc, (n) => this.heldPages.get(n))
    let droppedPages = false
    for (const [n, { hash }] of this.heldPages) {
      if (current.has(n)) continue
      droppedPages = true
      this.heldPages.delete(n)
      sealedHistory(doc).removePage(n)
      void this.host.segments.delete(hash)
    }
    // Held segments those pages listed cannot be checked any more, and one of them may be what a purge
    // re-sealed: a deleted message's text, whose live tombstone left with this very change. Not shown
    // until their pages, fetched again now, say which hash they have (from the cache when unchanged).
    const unchecked = this.dropStaleSegments(doc, droppedPages)
    if (unchecked.size > 0) this.recheckFolded(doc, unchecked).catch(() => {})
    // Sealed meanwhile inside the window shown: fetched at once, so that it stays whole (offline: on the next loadOlder).
    this.fillGaps().catch(() => {})
  }

  /**
   * Fetches directory pages, newest first, until the segments `unchecked`
   * (index → the hash they were held under; shown before, dropped unchecked
   * by {@link dropStale}) are listed again, then the segments themselves as
   * the pages name them (those rewritten meanwhile asked for again, see
   * {@link untilCurrent}).
   */
  private recheckFolded(doc: Y.Doc, unchecked: ReadonlyMap<number, string>): Promise<void> {
    const named = () => new Map(knownSegments(doc).map((s) => [s.index, s]))
    return untilCurrent(async () => {
      while (this.host.doc() === doc && [...unchecked.keys()].some((index) => !named().has(index))) {
        const next = nextDirectoryPage(doc)
        if (!next) break
        await this.fetchPage(next)
      }
      if (this.host.doc() !== doc) return true
      const summaries = named()
      for (const [index, hash] of unchecked) {
        const summary = summaries.get(index)
        // Re-sealed: the copy this device cached goes too (it may hold a purged message's text).
        if (summary?.hash !== hash) void this.host.segments.delete(hash)
        if (summary) await this.fetchSegment(summary)
      }
      return true
    })
  }

  /**
   * Forgets held segments whose summary (live, or on a held directory page)
   * names another hash, and with `unlistedToo` the folded ones no held page
   * lists (their pages were dropped): kept in the cache, as they may be
   * unchanged. Returns those, by index, with the hash they were held under.
   */
  private dropStaleSegments(doc: Y.Doc, unlistedToo = false): Map<number, string> {
    const named = new Map(knownSegments(doc).map((s) => [s.index, s]))
    const folded = foldedHistory(doc)?.segments ?? 0
    const unlisted = new Map<number, string>()
    for (const [index, hash] of this.heldHashes) {
      const summary = named.get(index)
      if (!summary && index < folded) {
        // A folded segment whose page is not held is checked when the page is (see dropStale).
        if (!unlistedToo) continue
        unlisted.set(index, hash)
        this.heldSegments.delete(index)
        this.heldHashes.delete(index)
        sealedHistory(doc).remove(index)
        continue
      }
      if (summary?.hash === hash) continue
      this.heldSegments.delete(index)
      this.heldHashes.delete(index)
      sealedHistory(doc).remove(index)
      void this.host.segments.delete(hash)
      // Held before, so shown before: the re-sealed one takes its place (offline: when it is asked for).
      if (summary) this.fetchNamed(doc, index).catch(() => {})
    }
    if (unlisted.size > 0) this.host.held()
    return unlisted
  }

  /**
   * Segment `index` as `doc` (the live document) names it when fetched: one
   * re-sealed again meanwhile is asked for again as named then (see
   * {@link untilCurrent}).
   */
  private fetchNamed(doc: Y.Doc, index: number): Promise<void> {
    return untilCurrent(async () => {
      const summary = knownSegments(doc).find((s) => s.index === index)
      if (summary) await this.fetchSegment(summary)
      return true
    })
  }

  /**
   * Fetches, over `connection`, the segments holding messages that `stale`'s
   * pending edits, reactions and deletions refer to, when `fresh` (the
   * relay's state) no longer holds them live: sealed meanwhile. Pending =
   * written beyond what the relay has (its state vector, or the epoch's
   * baseline). A directory page or segment the relay rewrote meanwhile (a
   * purge) is asked for again as `fresh` names it then, else this rejects
   * with the retryable UNAVAILABLE (see {@link untilCurrent}).
   */
  async fetchForPendingWork(
    stale: Y.Doc,
    fresh: Y.Doc,
    connection: DocumentConnection,
  ): Promise<Map<number, number>> {
    const known = Y.decodeStateVector(Y.encodeStateVector(fresh))
    const baseline = await this.baselineFor(stale, fresh, connection)
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
    const seqs: number[] = []
    for (const id of ids) {
      if (freshIndex.records.has(id) || freshIndex.deleted.has(id)) continue
      const seq = staleIndex.seqOf.get(id) ?? sealedHistory(stale).entry(id)?.seq
      if (seq !== undefined) seqs.push(seq)
    }
    // Folded meanwhile: the directory pages that list their segments first.
    this.holdIn(fresh)
    const history = sealedHistory(fresh)
    await untilCurrent(async () => {
      // Pages `fresh`'s chain does not name (a purge rewrote them since they were held, or meanwhile) name
      // segments by hashes the relay no longer serves: fetched again as the chain names them.
      const current = pagesOnChain(fresh, (n) => {
        const page = history.page(n)
        return page && { page, hash: history.pageHash(n)! }
      })
      for (const n of history.pagesHeld()) if (!current.has(n)) history.removePage(n)
      for (const seq of seqs) await this.fetchCovering(fresh, seq, connection)
      const summaries = knownSegments(fresh)
      const wanted = new Set<SegmentSummary>()
      for (const seq of seqs) {
        const summary = summaries.find((s) => s.from <= seq && seq <= s.to)
        if (summary && !this.heldSegments.has(summary.index)) wanted.add(summary)
      }
      for (const summary of wanted) await this.fetchSegment(summary, connection)
      return true
    })
    return baseline
  }

  /**
   * How far the relay had the clients of `stale`'s epoch (shared
   * `baselineSource`): what `fresh` holds, or, for a replica two or more
   * epochs back, its epoch record, asked over `connection` and checked to be
   * the one this replica needs.
   */
  private async baselineFor(
    stale: Y.Doc,
    fresh: Y.Doc,
    connection: DocumentConnection,
  ): Promise<Map<number, number>> {
    const source = baselineSource(stale, fresh)
    if ("baseline" in source) return source.baseline
    const answer = await connection.requestEpochRecord(source.record)
    if (answer.error !== undefined)
      throw new ParleyError(answer.error, `the relay did not serve epoch record ${source.record}`)
    const conversation = getConversation(fresh)?.id
    if (conversation === undefined)
      throw new ParleyError(ErrorCode.NOT_FOUND, "the relay's state holds no conversation")
    return checkEpochRecord(decodeEpochRecord(answer.bytes), stale, conversation, source.record)
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
          // A segment is immutable and named by its hash: what does not match it is not it, never held. Most
          // likely the relay re-sealed it (a purge) after this device read its hash: asked for again as the
          // document names it then (untilCurrent).
          if (segmentHash(page.bytes) !== summary.hash)
            throw rewrittenError(`history segment ${summary.index}`)
          bytes = page.bytes
          await this.host.segments.put(summary.hash, bytes)
        }
        const segment = decodeSegment(bytes)
        // Callers page on until the index they asked for is held: another one would have them loop.
        if (segment.index !== summary.index)
          throw new ParleyError(ErrorCode.MALFORMED_FRAME, "a history segment is not the one asked for")
        this.heldHashes.set(segment.index, summary.hash)
        this.hold(segment)
        return segment
      })().finally(() => this.fetching.delete(summary.index))
      this.fetching.set(summary.index, fetching)
    }
    return fetching
  }

  /**
   * Directory page `next.page` (named `next.hash`) from the cache or the
   * relay, checked against its hash, held from now on (in `also` too: a
   * replica being rebuilt). Held segments its summaries name differently are
   * dropped (a purge re-sealed them).
   */
  private fetchPage(
    next: { page: number; hash: string },
    connection = this.host.connection(),
    also?: Y.Doc,
  ): Promise<void> {
    let fetching = this.fetchingPages.get(next.hash)
    if (!fetching) {
      fetching = (async () => {
        let bytes = await this.host.segments.get(next.hash)
        if (!bytes) {
          const answer = await connection.requestDirectory(next.page)
          if (answer.error !== undefined)
            throw new ParleyError(answer.error, `the relay did not serve history directory page ${next.page}`)
          // Not a corrupt page: the relay rewrote the directory (a purge) after this device read its hash.
          if (segmentHash(answer.bytes) !== next.hash)
            throw rewrittenError(`history directory page ${next.page}`)
          bytes = answer.bytes
          await this.host.segments.put(next.hash, bytes)
        }
        const page = decodeDirectoryPage(bytes)
        if (page.page !== next.page)
          throw new ParleyError(
            ErrorCode.MALFORMED_FRAME,
            "a history directory page is not the one asked for",
          )
        this.heldPages.set(page.page, { page, hash: next.hash })
        sealedHistory(this.host.doc()).addPage(page, next.hash)
        this.dropStaleSegments(this.host.doc())
        this.host.held()
      })().finally(() => this.fetchingPages.delete(next.hash))
      this.fetchingPages.set(next.hash, fetching)
    }
    return fetching.then(() => {
      const held = this.heldPages.get(next.page)
      if (also && held) sealedHistory(also).addPage(held.page, held.hash)
    })
  }

  /** Adds a segment to the replica's sealed history. */
  private hold(segment: Segment): void {
    this.heldSegments.set(segment.index, segment)
    sealedHistory(this.host.doc()).add(segment)
    this.host.held()
  }
}
