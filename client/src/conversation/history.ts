import {
  baselineSource,
  checkEpochRecord,
  type DirectoryPage,
  decodeDirectoryPage,
  decodeEpochRecord,
  decodeSegment,
  decodeTombstone,
  directoryPageOf,
  type EditRecord,
  ErrorCode,
  foldedHistory,
  getConversation,
  isDeletedRecord,
  isReactionRemoval,
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
  type SealedEntry,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedThrough,
  segmentHash,
  typesOf,
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
 * What left the live document in a change that re-named sealed segments, by
 * key: the tombstones a purge retired (their messages are placeholders in the
 * re-sealed segments), the edits and reactions a refold folded into them.
 * With the value this device held; undefined when it never held one (written
 * and removed while it was offline: the key came already deleted).
 */
interface Departed {
  readonly tombstones: ReadonlyMap<string, unknown>
  readonly edits: ReadonlyMap<string, unknown>
  readonly reactions: ReadonlyMap<string, unknown>
}

/** What `transaction` removed from `doc`'s tombstones, edits and reactions (see {@link Departed}). */
function departedIn(doc: Y.Doc, transaction: Y.Transaction): Departed {
  const t = typesOf(doc)
  const tombstones = new Map<string, unknown>()
  const edits = new Map<string, unknown>()
  const reactions = new Map<string, unknown>()
  const of = new Map<unknown, Map<string, unknown>>([
    [t.tombstones, tombstones],
    [t.edits, edits],
    [t.reactions, reactions],
  ])
  Y.iterateDeletedStructs(transaction, transaction.deleteSet, (struct) => {
    if (!(struct instanceof Y.Item) || typeof struct.parentSub !== "string") return
    const left = of.get(struct.parent)
    // A key written again has not left.
    if (!left || (struct.parent as Y.Map<unknown>).has(struct.parentSub)) return
    // Deleted items keep their content until the transaction's cleanup, after its observers.
    const held = struct.id.clock < (transaction.beforeState.get(struct.id.client) ?? 0)
    if (held) left.set(struct.parentSub, struct.content.getContent().at(-1))
    else if (!left.has(struct.parentSub)) left.set(struct.parentSub, undefined)
  })
  return { tombstones, edits, reactions }
}

/**
 * `segment` as this device showed it before `left` left the live document,
 * as the segment re-sealed without it holds it: a message whose tombstone
 * left as its placeholder (not at all when this device never held that
 * tombstone: its text is not shown again), edits and reactions that left
 * folded into their entries. `segment` itself when none of it left.
 */
function withDeparted(segment: Segment, left: Departed): Segment {
  if (left.tombstones.size === 0 && left.edits.size === 0 && left.reactions.size === 0) return segment
  const reactions = new Map<string, [emoji: string, user: UserId, value: unknown][]>()
  for (const [key, value] of left.reactions) {
    const parsed = parseReactionKey(key)
    if (parsed && value !== undefined)
      reactions.set(parsed.message, [
        ...(reactions.get(parsed.message) ?? []),
        [parsed.emoji, parsed.user, value],
      ])
  }
  let changed = false
  const entries: SealedEntry[] = []
  for (const entry of segment.entries) {
    const { record } = entry
    const edit = left.edits.get(record.id) as Partial<EditRecord> | undefined
    const folded = typeof edit?.body === "string" && typeof edit.editedAt === "number"
    const reacted = reactions.get(record.id)
    if (isDeletedRecord(record) || (!left.tombstones.has(record.id) && !folded && !reacted)) {
      entries.push(entry)
      continue
    }
    changed = true
    if (left.tombstones.has(record.id)) {
      const deletion = decodeTombstone(left.tombstones.get(record.id))
      if (!deletion) continue
      const { id, author, createdAt } = record
      const { deletedAt, deletedBy, priority } = deletion
      entries.push({
        seq: entry.seq,
        record: { id, author, createdAt, deletedAt, deletedBy, ...(priority ? { priority } : {}) },
      })
      continue
    }
    const pairs = new Map((entry.overlays?.reactions ?? []).map((p) => [`${p[0]}\u0000${p[1]}`, p]))
    for (const [emoji, user, value] of reacted ?? []) {
      if (isReactionRemoval(value)) pairs.delete(`${emoji}\u0000${user}`)
      else pairs.set(`${emoji}\u0000${user}`, [emoji, user])
    }
    const overlays = {
      ...(pairs.size > 0 ? { reactions: [...pairs.values()] } : {}),
      ...(folded
        ? { edit: { body: edit.body!, editedAt: edit.editedAt! } }
        : entry.overlays?.edit
          ? { edit: entry.overlays.edit }
          : {}),
    }
    entries.push({ seq: entry.seq, record, ...(Object.keys(overlays).length > 0 ? { overlays } : {}) })
  }
  return changed ? { ...segment, entries } : segment
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
  /**
   * Sealed history segments this replica holds (fetched or cached), kept
   * across resyncs. The replica's sealed history may also show, under an
   * index not held here, the copy of a segment the relay re-sealed (or whose
   * directory page it rewrote) while the new one is fetched: see {@link dropStale}.
   */
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
  /**
   * The copies the replica's sealed history shows in place of segments no
   * longer held (see {@link dropStaleSegments}), by index, with the hash each
   * was held under: shown until the segment is held again or known gone. A
   * fetch that fails keeps them shown (before: the history paged back
   * vanished until the next loadOlder); they are asked for again once online
   * and by the next loadOlder (see {@link fillGaps}), and a rebuilt replica
   * shows them too (see {@link holdIn}).
   */
  private readonly copies = new Map<number, string>()

  constructor(private readonly host: SealedHistoryHost) {}

  /** The segments held, for a rebuilt replica to hold too. */
  get segments(): Iterable<Segment> {
    return this.heldSegments.values()
  }

  /**
   * Holds what this device fetched (segments, directory pages) in `doc`'s
   * sealed history: a rebuilt replica. With the {@link copies} the current
   * replica shows, as it shows them (a purge folded in): a resync right after
   * a purge keeps the history the user paged back.
   */
  holdIn(doc: Y.Doc): void {
    const history = sealedHistory(doc)
    for (const { page, hash } of this.heldPages.values()) history.addPage(page, hash)
    for (const segment of this.heldSegments.values()) {
      // In place of a copy held in `doc` earlier (a resync fetched the segment meanwhile).
      if (history.segment(segment.index) !== segment) history.remove(segment.index)
      history.add(segment)
    }
    const shown = sealedHistory(this.host.doc())
    for (const index of this.copies.keys()) {
      const copy = shown.segment(index)
      if (copy && !this.heldSegments.has(index)) history.add(copy)
    }
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
   * replica holds, without a hole, the `limit` sealed messages right below
   * `before`, or all of them down to the conversation's start. A page or
   * segment the relay rewrote meanwhile is asked for again as the live
   * document names it then, else refused with the retryable UNAVAILABLE (see
   * {@link untilCurrent}).
   */
  private fetchOlder(before: number, limit: number): Promise<void> {
    const doc = () => this.host.doc()
    return untilCurrent(async () => {
      // `limit` held messages below `before` are not enough: segments held for another reason (the one the
      // read marker falls in, for the unread count) may lie far below, with unfetched ones in between. Paged
      // from those, loadOlder skipped back to the marker, then went forward (an outside tester's finding).
      const held = listSealedMessages(doc(), before, limit)
      const lowest = held.length >= limit ? held[0]?.seq : undefined
      const fold = foldedHistory(doc())
      const listed =
        lowest === undefined || !fold || lowest > fold.through || directoryPageOf(doc(), lowest) !== undefined
      const next = knownSegments(doc())
        .filter(
          (s) =>
            s.from < before && (lowest === undefined || s.to >= lowest) && !this.heldSegments.has(s.index),
        )
        .at(-1)
      if (next) {
        await this.fetchSegment(next)
        return false
      }
      if (lowest !== undefined && listed) return true
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
   * Fetches again the segments of the {@link copies} shown (a failure keeps
   * them shown, for the next try), then the segments {@link gapSegments}
   * names, one at a time as the live document names them then (a segment
   * re-sealed meanwhile is asked for again, see {@link untilCurrent}).
   */
  private async fillGaps(): Promise<void> {
    if (this.copies.size > 0) await this.recheckCopies(this.host.doc(), new Map(this.copies)).catch(() => {})
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
   * dropped with a deleted conversation): here and in this device's cache. A
   * re-sealed one is fetched again at once, and shown as it was meanwhile,
   * with what left the live document in `transaction` (the change naming it)
   * folded in, so that the user's list loses no message that still exists
   * (before: the whole segment was gone for a fetch's time, and operations
   * on its messages refused with NOT_FOUND), nor shows again one purged.
   */
  dropStale(doc: Y.Doc, transaction?: Y.Transaction): void {
    if (this.host.doc() !== doc) return
    // What left with this change, looked for only when some segment is shown.
    const left =
      transaction && sealedHistory(doc).held().length > 0 ? departedIn(doc, transaction) : undefined
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
    // re-sealed: a deleted message's text, whose live tombstone left with this very change. Shown as
    // copies, with what left folded in, until their pages, fetched again now, say which hash they have
    // (from the cache when unchanged).
    this.dropStaleSegments(doc, droppedPages, left)
    // Those copies, and what was sealed meanwhile inside the window shown: fetched at once, so that it
    // stays whole (offline: once online, or on the next loadOlder).
    this.fillGaps().catch(() => {})
  }

  /**
   * {@link recheckFolded}, then the copies of `unchecked` still not held
   * dropped: no longer named (a deleted conversation's). When it fails
   * (offline, refused, the replica rebuilt meanwhile) the copies stay shown,
   * to be asked for again.
   */
  private recheckCopies(doc: Y.Doc, unchecked: ReadonlyMap<number, string>): Promise<void> {
    return this.recheckFolded(doc, unchecked).then(
      () => this.dropCopies(doc, unchecked.keys()),
      (error: unknown) => {
        // Not checked: what this device cached of them goes, since any may be a re-sealed segment's old
        // copy, with a purged message's text (an outside probe found it kept in IndexedDB across reloads).
        // An unchanged one is fetched again from the relay. What is shown keeps the purge folded in.
        for (const hash of unchecked.values()) void this.host.segments.delete(hash)
        throw error
      },
    )
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
      // Rebuilt meanwhile (a resync): checked in the new replica instead.
      if (this.host.doc() !== doc)
        throw new ParleyError(
          ErrorCode.UNAVAILABLE,
          "the replica was rebuilt while its history was re-checked",
        )
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
   * lists (their pages were dropped), or some of whose messages' overlays
   * `left` the live document (re-sealed for sure): kept in the cache, as they
   * may be unchanged. Returns those, by index, with the hash they were held
   * under. The replica's sealed history keeps showing each (see
   * {@link updateCopies}) until the one it is fetched again as takes its place.
   */
  private dropStaleSegments(doc: Y.Doc, unlistedToo = false, left?: Departed): Map<number, string> {
    const named = new Map(knownSegments(doc).map((s) => [s.index, s]))
    const folded = foldedHistory(doc)?.segments ?? 0
    const unlisted = new Map<number, string>()
    for (const [index, hash] of this.heldHashes) {
      const summary = named.get(index)
      const segment = this.heldSegments.get(index)!
      if (!summary && index < folded) {
        // A folded segment whose page is not held is checked when the page is (see dropStale).
        if (!unlistedToo && !(left && withDeparted(segment, left) !== segment)) continue
        unlisted.set(index, hash)
        this.copies.set(index, hash)
        this.heldSegments.delete(index)
        this.heldHashes.delete(index)
        continue
      }
      if (summary?.hash === hash) continue
      this.heldSegments.delete(index)
      this.heldHashes.delete(index)
      void this.host.segments.delete(hash)
      // Dropped with a deleted conversation: nothing takes its place.
      if (!summary) sealedHistory(doc).remove(index)
      else {
        // Held before, so shown before: the re-sealed one takes its place (offline: the copy stays shown,
        // asked for again once online or on the next loadOlder, see fillGaps).
        this.copies.set(index, hash)
        this.fetchNamed(doc, index).then(
          () => this.dropCopies(doc, [index]),
          () => {},
        )
      }
    }
    // Told once the copies shown are as they should be: a listener reads them.
    if (this.updateCopies(doc, left) || unlisted.size > 0) this.host.held()
    return unlisted
  }

  /**
   * The copies the replica's sealed history shows of segments not held (see
   * {@link dropStaleSegments}) with what `left` the live document folded in;
   * those of segments no longer named (a deleted conversation's) dropped.
   * Whether one changed.
   */
  private updateCopies(doc: Y.Doc, left: Departed | undefined): boolean {
    const history = sealedHistory(doc)
    const named = new Set(knownSegments(doc).map((s) => s.index))
    const folded = foldedHistory(doc)?.segments ?? 0
    let changed = false
    for (const index of history.held()) {
      if (this.heldSegments.has(index)) continue
      const copy = history.segment(index)!
      const shown = index >= folded && !named.has(index) ? undefined : left ? withDeparted(copy, left) : copy
      if (shown === copy) continue
      history.remove(index)
      if (shown) history.add(shown)
      else this.copies.delete(index)
      changed = true
    }
    return changed
  }

  /**
   * Stops showing the copies of segments `indexes` that are still not held
   * once `doc` (still the current replica) was checked and no longer names them.
   */
  private dropCopies(doc: Y.Doc, indexes: Iterable<number>): void {
    if (this.host.doc() !== doc) return
    const history = sealedHistory(doc)
    let dropped = false
    for (const index of indexes) {
      if (this.heldSegments.has(index)) continue
      this.copies.delete(index)
      if (!history.has(index)) continue
      history.remove(index)
      dropped = true
    }
    if (dropped) this.host.held()
  }

  /**
   * Segment `index` as `doc` (the live document) names it when fetched: one
   * re-sealed again meanwhile is asked for again as named then (see
   * {@link untilCurrent}).
   */
  private fetchNamed(doc: Y.Doc, index: number): Promise<void> {
    return untilCurrent(async () => {
      const summary = knownSegments(doc).find((s) => s.index === index)
      if (summary) await this.fetchSegment(summary, undefined, doc)
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
      // Held segments `fresh` names by another hash were re-sealed while this replica did not hear of it
      // (a purge while offline: the tombstones of the messages it purged are gone from `fresh`). Held in
      // it, they would show those messages whole and take pending work on them: fetched again instead,
      // here when that work needs them, else as the window shown asks (see fillGaps).
      for (const summary of summaries) {
        const hash = this.heldHashes.get(summary.index)
        if (hash === undefined || hash === summary.hash) continue
        this.heldSegments.delete(summary.index)
        this.heldHashes.delete(summary.index)
        history.remove(summary.index)
        void this.host.segments.delete(hash)
      }
      const wanted = new Set<SegmentSummary>()
      for (const seq of seqs) {
        const summary = summaries.find((s) => s.from <= seq && seq <= s.to)
        if (summary && !this.heldSegments.has(summary.index)) wanted.add(summary)
      }
      for (const summary of wanted) await this.fetchSegment(summary, connection, fresh)
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

  /**
   * Segment `summary` (as `doc` names it) from the cache or the relay,
   * checked against its hash, held from now on.
   */
  private fetchSegment(
    summary: SegmentSummary,
    connection = this.host.connection(),
    doc = this.host.doc(),
  ): Promise<Segment> {
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
        // Re-sealed again while it was fetched (another purge): held, it would be taken for current, its
        // newly purged message shown again. Not kept either; asked for again as the document names it
        // now (untilCurrent).
        if (knownSegments(doc).some((s) => s.index === summary.index && s.hash !== summary.hash)) {
          void this.host.segments.delete(summary.hash)
          throw rewrittenError(`history segment ${summary.index}`)
        }
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

  /** Adds a segment to the replica's sealed history, in place of the copy shown while it was fetched (see {@link dropStale}). */
  private hold(segment: Segment): void {
    this.heldSegments.set(segment.index, segment)
    this.copies.delete(segment.index)
    const history = sealedHistory(this.host.doc())
    history.remove(segment.index)
    history.add(segment)
    this.host.held()
  }
}
