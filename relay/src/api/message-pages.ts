import {
  type DirectoryPage,
  ErrorCode,
  foldedHistory,
  getConversation,
  getMessage,
  knownSegments,
  lastSequence,
  type MessageId,
  type MessageView,
  messageIndex,
  nextDirectoryPage,
  ParleyError,
  type SealedEntry,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedMessageView,
  sealedThrough,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"
import { SealedReads } from "../history/sealed-reads.js"

/** Which messages a page lists (`GET /v1/conversations/{id}/messages`). */
export interface MessagePageQuery {
  /** Only messages numbered above it, oldest first (the first `limit`). */
  readonly after?: number | undefined
  /** Only messages numbered below it (the last `limit`). */
  readonly before?: number | undefined
  readonly limit: number
  /** Only messages of this type. */
  readonly type?: string | undefined
}

/** Where the next page starts: the query parameter to send in place of the one given. */
export type MessageCursor = { readonly before: number } | { readonly after: number }

/** A page of messages, in sequence order, and where the next one starts (absent: nothing further). */
export interface MessagePage {
  readonly messages: MessageView[]
  readonly lastSequence: number
  readonly next?: MessageCursor
}

/**
 * Sealed messages one page looks at, at most: with a `type` filter a page may
 * end short of `limit` (or empty) with a `next` cursor rather than read the
 * whole history in one request.
 */
export const SEALED_SCAN_LIMIT = 1000

/**
 * Sealed segments and directory pages one page looks at, at most, read from
 * storage or held by the relay. Messages alone bounded a page's work only
 * while segments are large: with segments of 10 a filtered page read and
 * decoded a hundred of them, 90-340 ms of CPU for one request, and one key
 * looping such pages at a tenth of its rate held honest sends 5 s (an outside
 * probe). A page that reaches it before it is full ends short with a cursor.
 */
export const SEALED_READS_PER_PAGE = 16

/**
 * Rule of the refusal (RATE_LIMITED) of a page that could look at no sealed
 * segment: its API key's budget, which each segment and directory page a page
 * looks at takes a request's worth of, is spent for the moment.
 */
export const SEALED_READS_PER_KEY = "sealed-reads-per-key"

/** What {@link MessagePages.findSealed} found, and how far the conversation was sealed when it ended. */
export interface SealedSearch {
  readonly found?: FoundSealed
  readonly sealedThrough: number
}

/** What a plan over a conversation needs read from the history store before it can go on. */
type Need =
  | { readonly kind: "segments"; readonly summaries: readonly SegmentSummary[] }
  | { readonly kind: "directory"; readonly page: number; readonly hash: string }

/**
 * A plan's answer (`done`), or what it needs first; `spent` when it needs a
 * read that the request may not make (its payer's budget is spent) before it
 * has anything to answer.
 */
type Step<T> = { readonly kind: "done"; readonly value: T } | { readonly kind: "spent" } | Need

/**
 * The sealed segments and directory pages one request looks at: each granted
 * by `reads` (bounded, and paid for) the first time, whether it is read from
 * storage or held by the relay, and not again when the request's plan runs
 * again with what was read.
 */
class Looked {
  private readonly granted = new Set<string>()

  constructor(readonly reads: SealedReads) {}

  /** Whether the segment or directory page named `hash` may be looked at: granted before, or now. */
  admit(hash: string): boolean {
    if (this.granted.has(hash)) return true
    if (this.reads.grant(1) < 1) return false
    this.granted.add(hash)
    return true
  }
}

/** A sealed message found by {@link MessagePages.findSealed}: as stored, and as readers see it. */
export interface FoundSealed {
  readonly entry: SealedEntry
  readonly view: MessageView
}

/** A message the walk passes: its number and, on demand, its view. */
interface Candidate {
  readonly seq: number
  readonly sealed: boolean
  view(): MessageView | undefined
}

/**
 * Pages of a conversation's messages across its live document and its sealed
 * history. A page is planned inside the document's queue (a read), on the
 * live document and the segment summaries it names (with the directory pages
 * of the folded ones); a segment the page reaches that the relay does not
 * hold is read from the history store outside the queue, by itself, and the
 * page planned again with it. Sealed messages are shown as readers see them
 * (shared `sealedMessageView`: the live document's edits, reactions and
 * tombstones over the sealed record).
 */
export class MessagePages {
  /** Reads sealed segments through `core.historyKeeper`, the keeper the core seals with. */
  constructor(private readonly core: RunningCore) {}

  /**
   * The page `query` asks for; NOT_FOUND for an unknown conversation. It looks
   * at the sealed segments and directory pages `reads` grants, at most
   * {@link SEALED_READS_PER_PAGE} by default: short of `limit` when they run
   * out, with a cursor; RATE_LIMITED ({@link SEALED_READS_PER_KEY}) when the
   * payer of `reads` could pay for none before the page had anything.
   */
  list(
    id: string,
    query: MessagePageQuery,
    reads: SealedReads = new SealedReads(SEALED_READS_PER_PAGE),
  ): Promise<MessagePage> {
    const looked = new Looked(reads)
    return this.planned(id, (doc, segments) => walk(doc, query, segments, looked))
  }

  /**
   * The first sealed message numbered above `after` (and at most `through`)
   * that `match` accepts, searched segment by segment in sequence order (each
   * read from the store only if the relay does not hold it, and not kept);
   * with how far the conversation was sealed when the search ended, so that a
   * caller can tell whether more was sealed since. NOT_FOUND for an unknown
   * conversation. Each segment read from the store is granted by `reads`
   * first (the key's budget: a search is not cut short, so that a send is
   * never written twice, but what it read is paid for, into debt).
   */
  async findSealed(
    id: string,
    range: { readonly after: number; readonly through?: number },
    match: (entry: SealedEntry) => boolean,
    reads: SealedReads = SealedReads.relay(),
  ): Promise<SealedSearch> {
    const through = range.through ?? Number.POSITIVE_INFINITY
    // Below it, every sealed message was searched: a segment read is searched once, then let go.
    let searched = range.after
    return this.planned<SealedSearch>(id, (doc, segments) => {
      const sealed = sealedThrough(doc)
      const known = knownSegments(doc)
      if (unlistedAbove(doc, known, searched)) {
        const next = nextDirectoryPage(doc)
        if (next) return { kind: "directory", ...next }
      }
      for (const summary of known) {
        if (summary.to <= searched) continue
        if (summary.from > through) break
        const segment = sealedHistory(doc).segment(summary.index) ?? segments.get(summary.hash)
        if (!segment) {
          reads.grant(1)
          return { kind: "segments", summaries: [summary] }
        }
        segments.delete(summary.hash)
        for (const entry of segment.entries)
          if (entry.seq > searched && entry.seq <= through && match(entry))
            return {
              kind: "done",
              value: { found: { entry, view: sealedMessageView(doc, entry) }, sealedThrough: sealed },
            }
        searched = Math.max(searched, summary.to)
      }
      return { kind: "done", value: { sealedThrough: sealed } }
    })
  }

  /**
   * Runs `plan` on the conversation's document (in its queue, as a read) until
   * it is done, reading what it needs from the history store between runs:
   * segments into `segments` (by hash, this request's only), directory pages
   * into the relay's sealed history.
   */
  private async planned<T>(
    id: string,
    plan: (doc: Y.Doc, segments: Map<string, Segment>) => Step<T>,
  ): Promise<T> {
    // Segments read are this request's only (by hash, their name in the summaries): a backend paging a
    // whole history must not leave it decoded in the relay's memory. Directory pages are kept (small).
    const segments = new Map<string, Segment>()
    const pages = new Map<string, DirectoryPage>()
    const stale = new Set<string>()
    for (;;) {
      const step = await this.core.read(
        id,
        (doc) => {
          if (!getConversation(doc)) return undefined
          holdPages(doc, pages)
          return plan(doc, segments)
        },
        { failFast: true },
      )
      if (!step) throw new ParleyError(ErrorCode.NOT_FOUND, `no conversation ${JSON.stringify(id)}`)
      if (step.kind === "done") return step.value
      if (step.kind === "spent")
        throw new ParleyError(
          ErrorCode.RATE_LIMITED,
          "this API key's budget is spent for the moment: each sealed history segment a page looks at takes a request's worth of it; retry later",
          { rule: SEALED_READS_PER_KEY },
        )
      const history = this.core.historyKeeper
      if (!history) throw new ParleyError(ErrorCode.UNAVAILABLE, "this relay does not serve sealed history")
      // Asked for again after the store held other bytes: not a purge racing this read, but missing.
      const missing = (hash: string, what: string) => {
        if (stale.has(hash))
          throw new ParleyError(
            ErrorCode.INTERNAL,
            `the sealed history ${what} of ${id} is missing from storage`,
          )
      }
      if (step.kind === "segments") {
        for (const summary of step.summaries) {
          missing(summary.hash, `segment ${summary.index}`)
          const segment = await history.segmentNamed(id, summary)
          if (segment) segments.set(summary.hash, segment)
          else stale.add(summary.hash)
        }
      } else {
        missing(step.hash, `directory page ${step.page}`)
        const page = await history.directoryPageNamed(id, step)
        if (page) pages.set(step.hash, page)
        else stale.add(step.hash)
      }
    }
  }
}

/**
 * Holds the directory pages read for a request in the relay's sealed history
 * of `doc` while each is still the next one its chain names (a purge may have
 * re-written it since): later pages of any request then start from them.
 */
function holdPages(doc: Y.Doc, pages: ReadonlyMap<string, DirectoryPage>): void {
  for (let next = nextDirectoryPage(doc); next; next = nextDirectoryPage(doc)) {
    const page = pages.get(next.hash)
    if (!page || page.page !== next.page) return
    sealedHistory(doc).addPage(page, next.hash)
  }
}

/**
 * Plans the page `query` asks for on `doc`: the page, or the segments or
 * directory page it needs first. Live messages come from the live document;
 * sealed ones from the segments the relay holds or `fetched` (by hash), each
 * looked at only as `looked` admits it: when it admits no more, the page ends
 * there, with a cursor.
 */
function walk(
  doc: Y.Doc,
  query: MessagePageQuery,
  fetched: ReadonlyMap<string, Segment>,
  looked: Looked,
): Step<MessagePage> {
  const ascending = query.after !== undefined
  const low = query.after ?? 0
  const high = query.before ?? Number.POSITIVE_INFINITY
  const index = messageIndex(doc)
  const held = sealedHistory(doc)
  const known = knownSegments(doc)
  const inRange = (seq: number) => seq > low && seq < high
  const unlisted = unlistedAbove(doc, known, low)

  /** The live candidates in walking order. */
  function* live(): Generator<Candidate> {
    const order = index.order()
    const start = index.sequencedIndexOf(low + 1)
    const end = index.sequencedIndexOf(high)
    for (let n = 0; n < end - start; n++) {
      const id = order[ascending ? start + n : end - 1 - n]!
      const seq = index.seqOf.get(id)!
      // A message written under a held sealed one's id (before the relay refused that) reads as the
      // sealed one (shared `getMessage`): listed at its own number, not again here.
      yield { seq, sealed: false, view: () => liveView(doc, id, seq) }
    }
  }

  /** The sealed segments overlapping the range, in walking order (summaries). */
  const sealed = known.filter((s) => s.to > low && s.from < high)
  if (!ascending) sealed.reverse()

  const messages: MessageView[] = []
  const matches = (view: MessageView) => query.type === undefined || view.type === query.type
  let scanned = 0
  let last: number | undefined
  const page = (more: boolean): Step<MessagePage> => {
    const next: MessageCursor | undefined =
      !more || last === undefined ? undefined : ascending ? { after: last } : { before: last }
    return {
      kind: "done",
      value: {
        messages: ascending ? messages : messages.reverse(),
        lastSequence: lastSequence(doc),
        ...(next ? { next } : {}),
      },
    }
  }
  /**
   * The page so far, once `looked` admits no more: continued from its last
   * message; from where it started when it has none yet (the directory
   * pages it read are held, so the next page goes further), unless the
   * payer's budget is what ran out.
   */
  const cut = (): Step<MessagePage> => {
    if (last !== undefined) return page(true)
    if (looked.reads.payerSpent) return { kind: "spent" }
    last = ascending ? low : Math.min(high, lastSequence(doc) + 1)
    return page(true)
  }
  const full = () => messages.length >= query.limit || scanned >= SEALED_SCAN_LIMIT
  /** Takes `candidate`: false once the page is complete (there is at least this one more). */
  const take = (candidate: Candidate): boolean => {
    if (messages.length >= query.limit) return false
    if (candidate.sealed && scanned >= SEALED_SCAN_LIMIT) return false
    if (candidate.sealed) scanned++
    last = candidate.seq
    const view = candidate.view()
    if (view && matches(view)) messages.push(view)
    return true
  }
  /** Messages of `summary` in the range: how many a page would take from it, at most. */
  const span = (summary: SegmentSummary) =>
    Math.max(0, Math.min(summary.to, high - 1) - Math.max(summary.from, low + 1) + 1)

  if (ascending && unlisted) {
    const next = nextDirectoryPage(doc)
    if (next) return looked.admit(next.hash) ? { kind: "directory", ...next } : cut()
  }
  const sources: ("live" | SegmentSummary)[] = ascending ? [...sealed, "live"] : ["live", ...sealed]
  for (let at = 0; at < sources.length; at++) {
    const source = sources[at]!
    if (source === "live") {
      for (const candidate of live()) if (!take(candidate)) return page(true)
      continue
    }
    // Complete already, or out of budget: the segment's summary says there is more, unread.
    if (full()) return page(true)
    if (!looked.admit(source.hash)) return cut()
    const segment = held.segment(source.index) ?? fetched.get(source.hash)
    if (!segment) {
      // With the segments after it that the page is likely to reach (as many messages as it still
      // takes, or looks at with a filter), read together: read one at a time, each planned the page
      // again from its start.
      const wanted: SegmentSummary[] = [source]
      const room = query.type === undefined ? query.limit - messages.length : SEALED_SCAN_LIMIT - scanned
      let reach = span(source)
      for (let then = at + 1; then < sources.length && reach < room; then++) {
        const after = sources[then]!
        if (after === "live") break
        reach += span(after)
        if (held.segment(after.index) ?? fetched.get(after.hash)) continue
        if (!looked.admit(after.hash)) break
        wanted.push(after)
      }
      return { kind: "segments", summaries: wanted }
    }
    const entries = segment.entries
    for (let n = 0; n < entries.length; n++) {
      const entry = entries[ascending ? n : entries.length - 1 - n]!
      if (!inRange(entry.seq)) continue
      if (!take({ seq: entry.seq, sealed: true, view: () => sealedMessageView(doc, entry) }))
        return page(true)
    }
  }
  // Below every segment the held directory pages list: the next page of the chain back.
  if (!ascending && unlisted) {
    if (full()) return page(true)
    const next = nextDirectoryPage(doc)
    if (next) return looked.admit(next.hash) ? { kind: "directory", ...next } : cut()
  }
  return page(false)
}

/** The live message `id` numbered `seq`, unless another message (a sealed one) is shown under its id. */
function liveView(doc: Y.Doc, id: MessageId, seq: number): MessageView | undefined {
  const view = getMessage(doc, id)
  return view?.seq === seq ? view : undefined
}

/**
 * Whether messages above `low` are in folded segments below those `known`
 * (the summaries the held directory pages and the live document list): the
 * next directory page of the chain back lists more of them.
 */
function unlistedAbove(doc: Y.Doc, known: readonly SegmentSummary[], low: number): boolean {
  const oldest = known[0]
  return (
    (foldedHistory(doc)?.segments ?? 0) > 0 &&
    oldest !== undefined &&
    oldest.index > 0 &&
    low + 1 < oldest.from
  )
}
