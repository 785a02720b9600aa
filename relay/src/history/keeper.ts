import {
  type DirectoryPage,
  decodeDirectoryPage,
  decodeSegment,
  type EpochRecord,
  encodeEpochRecord,
  foldedHistory,
  knownSegments,
  type MessageId,
  nextDirectoryPage,
  type SealPlan,
  type Segment,
  sealedHistory,
  sealedThrough,
  segmentHash,
} from "@parley/shared"
import type * as Y from "yjs"
import {
  decodeFoldedReactions,
  encodeFoldedReactions,
  FoldDirectory,
  type FoldedReaction,
} from "./folded-reactions.js"
import { IdFilter } from "./id-filter.js"
import { attachSealedIdFilters, namedSegments, type SealedIdFilters, sealedIdFilters } from "./sealed-ids.js"
import { SealedReadDefaults, SealedReads } from "./sealed-reads.js"
import type { SealingOptions } from "./sealing.js"
import {
  directoryPageIndex,
  epochRecordIndex,
  FOLD_DIRECTORY_INDEX,
  foldedReactionsIndex,
  type HistoryStore,
  type StoredSegment,
} from "./store.js"

/** The row of directory page `page` (encoded as `bytes`), beside the segments. */
const pageRow = (page: DirectoryPage, bytes: Uint8Array): StoredSegment => ({
  index: directoryPageIndex(page.page),
  from: page.summaries[0]?.from ?? 0,
  to: page.summaries.at(-1)?.to ?? 0,
  hash: segmentHash(bytes),
  bytes,
})

/** Folded reactions kept beside one segment at most (about 50 bytes each), the newest. */
const FOLDS_PER_SEGMENT = 1024

/**
 * The row of the reactions folded into segment `index`, beside it: the newest
 * {@link FOLDS_PER_SEGMENT} (reactions toggled on old messages would otherwise
 * grow a segment's row at every refold, for good).
 */
const foldsRow = (index: number, folds: readonly FoldedReaction[]): StoredSegment => {
  const bytes = encodeFoldedReactions(folds.slice(-FOLDS_PER_SEGMENT))
  return { index: foldedReactionsIndex(index), from: 0, to: 0, hash: segmentHash(bytes), bytes }
}

/** The row of a conversation's fold directory. */
const directoryRow = (directory: FoldDirectory): StoredSegment => {
  const bytes = directory.encode()
  return { index: FOLD_DIRECTORY_INDEX, from: 0, to: 0, hash: segmentHash(bytes), bytes }
}

/** What the keeper needs of a loaded document. */
export interface HistoryHost {
  readonly key: string
  readonly doc: Y.Doc
}

/** What the keeper may read of sealed history for one change, and keeps (see `SealedReadDefaults`). */
export interface SealedReadLimits {
  /** Segments one change may make the relay read. */
  readonly maxSealedReadsPerUpdate: number
  /** Segments read for the checks kept decoded per loaded document (at least the per-change bound). */
  readonly heldSegmentsPerDocument: number
}

/**
 * The relay's side of sealed history: where segments are stored, when to
 * seal, and the directory of sealed messages that the rules consult for
 * operations on them (edit, delete, react). A change makes the relay read
 * only the segments that may hold a sealed message it names (found through
 * the segments' id filters, see `sealed-ids.ts`), at most
 * `maxSealedReadsPerUpdate` of them and each paid for by its sender (see
 * {@link SealedReads}), so a conversation whose old messages nobody touches
 * never reads its segments, and one frame never reads its whole history.
 * Segments read for the checks or sealed here stay decoded while needed, up
 * to `heldSegmentsPerDocument` per document (the least recently needed go
 * first), and all of them go with the document.
 */
export class HistoryKeeper {
  /** Loads of a document's id filters under way: one at a time per document. */
  private readonly filterLoads = new WeakMap<Y.Doc, Promise<void>>()
  /** Per document, the segments read for the checks, least recently needed first. */
  private readonly readForChecks = new WeakMap<Y.Doc, Set<number>>()
  readonly reads: SealedReadLimits

  constructor(
    readonly store: HistoryStore,
    readonly sealing: SealingOptions,
    reads: Partial<SealedReadLimits> = {},
  ) {
    const max = reads.maxSealedReadsPerUpdate ?? SealedReadDefaults.maxSealedReadsPerUpdate
    this.reads = {
      maxSealedReadsPerUpdate: max,
      heldSegmentsPerDocument: Math.max(
        max,
        reads.heldSegmentsPerDocument ?? SealedReadDefaults.heldSegmentsPerDocument,
      ),
    }
  }

  /** What one change may read, each read paid for by `pay` (the sender's budget; none: the relay's own). */
  readsFor(pay?: (wanted: number) => number): SealedReads {
    return new SealedReads(this.reads.maxSealedReadsPerUpdate, pay)
  }

  /**
   * Makes what the rules know of `ids` in `host`'s sealed history exact (see
   * `sealedIdStatus`): attaches the id filters of every segment the live
   * document names (read once per loaded document, then as more are named;
   * one missing, of a segment sealed by an older version, is built from the
   * segment once and stored), then holds each segment whose filter may hold
   * one of `ids`, within `reads` (else throws its refusal, having read what
   * it granted). Undefined when there is nothing to read: the usual new
   * message costs its filter probes, no storage read.
   */
  settleSealedIds(
    host: HistoryHost,
    ids: readonly MessageId[],
    reads: SealedReads = SealedReads.relay(),
  ): Promise<void> | undefined {
    if (ids.length === 0 || sealedThrough(host.doc) === 0) return undefined
    const filters = sealedIdFilters(host.doc)
    if (!filters || filters.covered < namedSegments(host.doc))
      return this.loadIdFilters(host).then(async () => {
        await this.holdCandidates(host, ids, reads)
      })
    return this.holdCandidates(host, ids, reads)?.then(() => {})
  }

  /**
   * Holds the segments that may hold the sealed messages `ids` (an update's
   * edits, reactions, deletions, pins of messages the live document does not
   * hold), within `reads` (else throws its refusal, having read what it
   * granted). Resolves true when it held a segment it did not hold before:
   * then the rules may see more than they did.
   */
  async holdNamed(host: HistoryHost, ids: readonly MessageId[], reads: SealedReads): Promise<boolean> {
    if (ids.length === 0 || sealedThrough(host.doc) === 0) return false
    const filters = sealedIdFilters(host.doc)
    if (!filters || filters.covered < namedSegments(host.doc)) await this.loadIdFilters(host)
    return (await this.holdCandidates(host, ids, reads)) ?? false
  }

  /**
   * Holds segments `indexes` of `host` (the relay's own reads: a purge
   * re-sealing the segments of deleted messages), kept as long as segments
   * read for a change are.
   */
  async holdIndexes(host: HistoryHost, indexes: readonly number[]): Promise<void> {
    await this.holdSegments(host, indexes, SealedReads.relay())
  }

  /**
   * Stores the id filter of `segment`, sealed for `doc` (before the live
   * document names it, like the segment). Returns it for
   * {@link holdIdFilter} once the live document names the segment.
   */
  async storeIdFilter(doc: string, segment: Segment): Promise<IdFilter> {
    const filter = IdFilter.of(segment.entries.map((e) => e.record.id))
    await this.store.putIdFilter(doc, segment.index, filter.encode())
    return filter
  }

  /**
   * Counts segments the relay just sealed into `doc` (sealing holds them) as
   * held for the checks, so that a document loaded while it seals for days
   * keeps the newest of them, not all.
   */
  sealedNow(doc: Y.Doc, indexes: readonly number[]): void {
    for (const index of indexes) this.noteRead(doc, index)
    this.trim(doc, new Set(indexes))
  }

  /**
   * Stores what sealing `plans` needs durable before the live document names
   * their segments — each segment, its id filter, and the directory page of a
   * fold — in one commit (all or none). Returns each plan's filter for
   * {@link holdIdFilter}.
   */
  async storeSeals(
    doc: string,
    plans: readonly SealPlan[],
    /** The reactions each plan folds (`reactionsFolded`), kept beside its segment. */
    folds: readonly (readonly FoldedReaction[])[],
    /** The live document's epoch (shared `epochOf`, 0 before the first): the fold directory's. */
    epoch: number,
  ): Promise<IdFilter[]> {
    const filters = plans.map((plan) => IdFilter.of(plan.segment.entries.map((e) => e.record.id)))
    const segments: StoredSegment[] = []
    // Read before the commit, written in it: the document's queue runs one seal or refold at a time.
    const directory = folds.some((f) => f.length > 0) ? await this.foldDirectory(doc, epoch) : undefined
    for (const [i, plan] of plans.entries()) {
      segments.push({
        index: plan.segment.index,
        from: plan.segment.from,
        to: plan.segment.to,
        hash: plan.summary.hash,
        bytes: plan.bytes,
      })
      if (plan.fold) segments.push(pageRow(plan.fold.page, plan.fold.bytes))
      const folded = folds[i] ?? []
      if (folded.length > 0) segments.push(foldsRow(plan.segment.index, folded))
      directory?.add(plan.segment.index, folded)
    }
    if (directory) segments.push(directoryRow(directory))
    await this.store.putSealed(doc, {
      segments,
      idFilters: plans.map((plan, i) => ({ index: plan.segment.index, bytes: filters[i]!.encode() })),
    })
    return filters
  }

  /** Holds the filter of segment `index`, which `doc` now names, when its filters are attached. */
  holdIdFilter(doc: Y.Doc, index: number, filter: IdFilter): void {
    sealedIdFilters(doc)?.set(index, filter)
  }

  /**
   * Holds the segments whose filter may hold one of `ids` (not found in a
   * held segment); undefined when every one is held (nothing to read).
   * Resolves true when it read one.
   */
  private holdCandidates(
    host: HistoryHost,
    ids: readonly MessageId[],
    reads: SealedReads,
  ): Promise<boolean> | undefined {
    const filters = sealedIdFilters(host.doc)!
    const history = sealedHistory(host.doc)
    const wanted = new Set<number>()
    for (const id of ids) {
      if (history.entry(id)) continue
      for (const index of filters.candidates(id)) wanted.add(index)
    }
    if (wanted.size === 0) return undefined
    const needed = [...wanted]
    this.touch(host.doc, needed)
    return needed.some((index) => !history.has(index)) ? this.holdSegments(host, needed, reads) : undefined
  }

  /**
   * Reads the segments among `indexes` not held yet into `host`'s directory
   * of sealed messages, as many as `reads` grants (then throws its refusal),
   * and lets go of the least recently needed ones beyond the document's
   * bound. Resolves true when it read one.
   */
  private async holdSegments(
    host: HistoryHost,
    indexes: readonly number[],
    reads: SealedReads,
  ): Promise<boolean> {
    const history = sealedHistory(host.doc)
    const missing = indexes.filter((index) => !history.has(index))
    if (missing.length === 0) return false
    const granted = reads.grant(missing.length)
    let read = false
    try {
      for (const index of missing.slice(0, granted)) {
        const stored = await this.store.get(host.key, index)
        if (!stored) continue
        history.add(decodeSegment(stored.bytes))
        this.noteRead(host.doc, index)
        read = true
      }
    } finally {
      this.trim(host.doc, new Set(indexes))
    }
    if (granted < missing.length) throw reads.refusal()
    return read
  }

  /** Segments read for the checks of `doc`, least recently needed first. */
  private readOf(doc: Y.Doc): Set<number> {
    let read = this.readForChecks.get(doc)
    if (!read) {
      read = new Set()
      this.readForChecks.set(doc, read)
    }
    return read
  }

  private noteRead(doc: Y.Doc, index: number): void {
    const read = this.readOf(doc)
    read.delete(index)
    read.add(index)
  }

  /** Marks the segments among `indexes` read for the checks as needed now. */
  private touch(doc: Y.Doc, indexes: readonly number[]): void {
    const read = this.readForChecks.get(doc)
    if (!read) return
    for (const index of indexes) if (read.delete(index)) read.add(index)
  }

  /**
   * Lets go of the least recently needed segments read for the checks beyond
   * the document's bound, except those `needed` now (a change needs all of
   * its own at once).
   */
  private trim(doc: Y.Doc, needed: ReadonlySet<number>): void {
    const read = this.readOf(doc)
    let over = read.size - this.reads.heldSegmentsPerDocument
    if (over <= 0) return
    const history = sealedHistory(doc)
    for (const index of read) {
      if (over <= 0) break
      if (needed.has(index)) continue
      read.delete(index)
      history.remove(index)
      over--
    }
  }

  /** Attaches the id filters of every segment `host`'s live document names (one load at a time). */
  private loadIdFilters(host: HistoryHost): Promise<void> {
    const running = this.filterLoads.get(host.doc)
    if (running) return running.then(() => this.loadIdFilters(host))
    const filters = attachSealedIdFilters(host.doc)
    if (filters.covered >= namedSegments(host.doc)) return Promise.resolve()
    const loading = this.readIdFilters(host, filters).finally(() => this.filterLoads.delete(host.doc))
    this.filterLoads.set(host.doc, loading)
    return loading
  }

  private async readIdFilters(host: HistoryHost, filters: SealedIdFilters): Promise<void> {
    const named = namedSegments(host.doc)
    const stored = new Map<number, Uint8Array>()
    for (const { index, bytes } of await this.store.idFilters(host.key, filters.covered))
      stored.set(index, bytes)
    for (let index = filters.covered; index < named; index++) {
      const bytes = stored.get(index)
      const filter = (bytes && IdFilter.decode(bytes)) ?? (await this.buildIdFilter(host.key, index))
      filters.set(index, filter)
    }
  }

  /**
   * The id filter of stored segment `index`, built from it and stored: a
   * segment sealed before filters existed (once per conversation). A segment
   * missing from the store holds nothing a new id could meet (not stored: a
   * restored segment gets its own).
   */
  private async buildIdFilter(doc: string, index: number): Promise<IdFilter> {
    const stored = await this.store.get(doc, index)
    if (!stored) return IdFilter.of([])
    return this.storeIdFilter(doc, decodeSegment(stored.bytes))
  }

  /** Segment `index` of `host` as stored, or null. */
  page(host: HistoryHost, index: number): Promise<StoredSegment | null> {
    return this.store.get(host.key, index)
  }

  /**
   * Segment `summary.index` of conversation `doc`, decoded, when the store
   * holds the version `summary` names (by hash); undefined when it holds
   * another (re-sealed by a purge since the summary was read) or none.
   */
  async segmentNamed(
    doc: string,
    summary: { readonly index: number; readonly hash: string },
  ): Promise<Segment | undefined> {
    const stored = await this.store.get(doc, summary.index)
    return stored && stored.hash === summary.hash ? decodeSegment(stored.bytes) : undefined
  }

  /**
   * Directory page `next.page` of conversation `doc`, decoded, when the store
   * holds the version named `next.hash` (checked against its bytes, as
   * {@link loadPages} does); undefined otherwise.
   */
  async directoryPageNamed(
    doc: string,
    next: { readonly page: number; readonly hash: string },
  ): Promise<DirectoryPage | undefined> {
    const stored = await this.store.get(doc, directoryPageIndex(next.page))
    if (!stored || stored.hash !== next.hash || segmentHash(stored.bytes) !== next.hash) return undefined
    const page = decodeDirectoryPage(stored.bytes)
    return page.page === next.page ? page : undefined
  }

  /** Stores directory page `page` of `doc`'s folded history (encoded as `bytes`) durably. */
  storePage(doc: string, page: DirectoryPage, bytes: Uint8Array): Promise<void> {
    return this.store.put(doc, pageRow(page, bytes))
  }

  /** Directory page `page` of `host`'s folded history as stored, or null. */
  directoryPage(host: HistoryHost, page: number): Promise<StoredSegment | null> {
    return this.store.get(host.key, directoryPageIndex(page))
  }

  /**
   * Adds the folds of a re-sealing (`keysFolded`, per segment index) to
   * those kept beside each segment, and to the fold directory, durably in one
   * commit, before the change that folds them is stored.
   */
  async storeFolds(
    doc: string,
    folded: readonly { readonly index: number; readonly folds: readonly FoldedReaction[] }[],
    /** The live document's epoch (shared `epochOf`, 0 before the first): the fold directory's. */
    epoch: number,
  ): Promise<void> {
    const some = folded.filter((f) => f.folds.length > 0)
    if (some.length === 0) return
    const [stored, directory] = await Promise.all([
      Promise.all(some.map(({ index }) => this.store.get(doc, foldedReactionsIndex(index)))),
      this.foldDirectory(doc, epoch),
    ])
    const segments = some.map(({ index, folds }, i) => {
      const row = stored[i]
      return foldsRow(index, [...(row ? decodeFoldedReactions(row.bytes) : []), ...folds])
    })
    // One read and one write of the directory for the whole re-sealing.
    let added = false
    for (const { index, folds } of some) if (directory.add(index, folds)) added = true
    if (added) segments.push(directoryRow(directory))
    await this.store.putSealed(doc, { segments, idFilters: [] })
  }

  /** Indexes of the latest `count` segments `host` names, newest first. */
  latestSegments(host: HistoryHost, count: number): number[] {
    const newest = knownSegments(host.doc).at(-1)?.index
    if (newest === undefined) return []
    return Array.from({ length: Math.min(count, newest + 1) }, (_, i) => newest - i)
  }

  /** The reactions folded into segments `indexes` of `doc`, as stored (none for a segment sealed before they were kept). */
  async foldsOf(doc: string, indexes: readonly number[]): Promise<FoldedReaction[]> {
    const rows = await Promise.all(indexes.map((index) => this.store.get(doc, foldedReactionsIndex(index))))
    return rows.flatMap((row) => (row ? decodeFoldedReactions(row.bytes) : []))
  }

  /**
   * `doc`'s fold directory of epoch `epoch` as stored (empty before one was
   * written in that epoch: folds of older relays are not in it).
   */
  async foldDirectory(doc: string, epoch: number): Promise<FoldDirectory> {
    const row = await this.store.get(doc, FOLD_DIRECTORY_INDEX)
    return row ? FoldDirectory.decode(row.bytes, epoch) : FoldDirectory.empty(epoch)
  }

  /**
   * Stores `record` (the end of a live document a fresh epoch replaces)
   * durably, before the fresh epoch that names it is: a crash in between
   * leaves a record no live document counts, which the next epoch rewrites.
   */
  storeEpochRecord(doc: string, record: EpochRecord): Promise<void> {
    const bytes = encodeEpochRecord(record)
    return this.store.put(doc, {
      index: epochRecordIndex(record.number),
      from: 0,
      to: 0,
      hash: segmentHash(bytes),
      bytes,
    })
  }

  /** Epoch record `record` of `host` as stored, or null. */
  epochRecord(host: HistoryHost, record: number): Promise<StoredSegment | null> {
    return this.store.get(host.key, epochRecordIndex(record))
  }

  /**
   * Every directory page of `host`'s folded history, oldest first, each
   * checked against the hash that names it (the folded record's for the
   * newest, the next page's `previous` for the others) and held in the
   * document's sealed history. Reads only the pages not held yet.
   */
  async loadPages(host: HistoryHost): Promise<DirectoryPage[]> {
    const history = sealedHistory(host.doc)
    for (let next = nextDirectoryPage(host.doc); next; next = nextDirectoryPage(host.doc)) {
      const stored = await this.directoryPage(host, next.page)
      if (!stored || stored.hash !== next.hash || segmentHash(stored.bytes) !== next.hash)
        throw new Error(`directory page ${next.page} of ${host.key} is missing or does not match its name`)
      history.addPage(decodeDirectoryPage(stored.bytes), next.hash)
    }
    const pages = foldedHistory(host.doc)?.pages ?? 0
    return Array.from({ length: pages }, (_, n) => history.page(n)!)
  }
}
