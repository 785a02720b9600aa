import {
  type DirectoryPage,
  decodeFoldedHistory,
  decodeSegmentSummary,
  encodeFoldedHistory,
  encodeSegmentSummary,
  type FoldedHistory,
  foldedHistory,
  type MessageId,
  purgeFromSegment,
  refoldPages,
  refoldSegment,
  type SealedDeletion,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedSegments,
  typesOf,
} from "@parley/shared"
import type * as Y from "yjs"
import type { HistoryHost, HistoryKeeper } from "./keeper.js"

/**
 * What purging deleted messages from sealed history rewrites: the segments
 * holding them (re-sealed with placeholders), and, when some of those are
 * folded, the directory pages from the one listing the first of them to the
 * newest (each names the previous one by hash) with the folded record naming
 * the new newest page.
 */
export interface PurgePlan {
  readonly segments: readonly { segment: Segment; bytes: Uint8Array; summary: SegmentSummary }[]
  readonly pages: readonly { page: DirectoryPage; bytes: Uint8Array }[]
  readonly fold?: FoldedHistory
  /**
   * Deleted messages the re-sealed segments now hold as placeholders, and
   * their summaries no longer count: their tombstones leave the live
   * document with the change that names the new hashes.
   */
  readonly retired?: readonly MessageId[]
}

/**
 * Plans the purge of `deletions` (tombstoned sealed messages) from `host`'s
 * sealed history, live summaries and folded ones alike. Reads the segments
 * whose numbers hold a deleted one and are not held (the relay's own reads:
 * each deletion was admitted with its segment held, so these are at most the
 * admitted deletions' segments, read again after the document let them go),
 * and the directory pages when a deleted number lies in the folded range.
 * Undefined when no segment holds one of them with content.
 */
export async function planPurge(
  keeper: HistoryKeeper,
  host: HistoryHost,
  deletions: ReadonlyMap<MessageId, SealedDeletion>,
): Promise<PurgePlan | undefined> {
  const seqs = [...deletions.values()].map((d) => d.seq)
  const fold = foldedHistory(host.doc)
  const pages = fold && seqs.some((seq) => seq <= fold.through) ? await keeper.loadPages(host) : []
  const summaries = [...pages.flatMap((p) => p.summaries), ...sealedSegments(host.doc)]
  const holding = summaries.filter((summary) => seqs.some((seq) => seq >= summary.from && seq <= summary.to))
  await keeper.holdIndexes(
    host,
    holding.map((summary) => summary.index),
  )
  const directory = sealedHistory(host.doc)
  const segments: PurgePlan["segments"][number][] = []
  const retired: MessageId[] = []
  for (const summary of holding) {
    const segment = directory.segment(summary.index)
    const resealed = segment && purgeFromSegment(segment, summary, deletions)
    if (!resealed) continue
    segments.push(resealed)
    retired.push(...resealed.purged)
  }
  if (segments.length === 0) return undefined
  const refold =
    fold && refoldPages(fold, pages, new Map(segments.map(({ summary }) => [summary.index, summary])))
  return { segments, pages: refold?.pages ?? [], ...(refold ? { fold: refold.fold } : {}), retired }
}

/**
 * A re-sealing that folds the live document's overlays of sealed messages
 * into their segments (shared `refoldSegment`): what it rewrites, as for a
 * purge, and per re-sealed segment the `reactions` keys and `edits` ids the
 * live document then no longer needs.
 */
export interface RefoldPlan extends PurgePlan {
  readonly folded: readonly {
    readonly index: number
    readonly keys: readonly string[]
    readonly edits: readonly MessageId[]
  }[]
}

/**
 * Plans folding the overlays of the sealed messages numbered `seqs` into
 * their segments: at most `maxSegments` of them, those holding the most of
 * `seqs`. Reads them (and the directory pages, when one is folded) as a
 * purge does. Undefined when none has an overlay to fold.
 */
export async function planRefold(
  keeper: HistoryKeeper,
  host: HistoryHost,
  seqs: readonly number[],
  maxSegments: number,
): Promise<RefoldPlan | undefined> {
  const fold = foldedHistory(host.doc)
  const pages = fold && seqs.some((seq) => seq <= fold.through) ? await keeper.loadPages(host) : []
  const summaries = [...pages.flatMap((p) => p.summaries), ...sealedSegments(host.doc)]
  const holding = summaries
    .map((summary) => ({
      summary,
      count: seqs.filter((seq) => seq >= summary.from && seq <= summary.to).length,
    }))
    .filter(({ count }) => count > 0)
    .sort((a, b) => b.count - a.count)
    .slice(0, maxSegments)
    .map(({ summary }) => summary)
  await keeper.holdIndexes(
    host,
    holding.map((summary) => summary.index),
  )
  const directory = sealedHistory(host.doc)
  const segments: PurgePlan["segments"][number][] = []
  const folded: RefoldPlan["folded"][number][] = []
  for (const summary of holding) {
    const segment = directory.segment(summary.index)
    const refolded = segment && refoldSegment(host.doc, segment, summary)
    if (!refolded) continue
    segments.push(refolded)
    folded.push({ index: summary.index, keys: refolded.keys, edits: refolded.edits })
  }
  if (segments.length === 0) return undefined
  const refold =
    fold && refoldPages(fold, pages, new Map(segments.map(({ summary }) => [summary.index, summary])))
  return { segments, pages: refold?.pages ?? [], ...(refold ? { fold: refold.fold } : {}), folded }
}

/** Stores what `plan` rewrites, segments first, then directory pages oldest first; before the live document names them. */
export async function storePurge(keeper: HistoryKeeper, doc: string, plan: PurgePlan): Promise<void> {
  for (const { segment, summary, bytes } of plan.segments)
    await keeper.store.put(doc, {
      index: segment.index,
      from: segment.from,
      to: segment.to,
      hash: summary.hash,
      bytes,
    })
  for (const { page, bytes } of plan.pages) await keeper.storePage(doc, page, bytes)
}

/**
 * Names `plan`'s new hashes in the live document (inside the caller's
 * transaction): the live summaries of re-sealed segments, and the folded
 * record when directory pages were rewritten; drops the tombstones the new
 * summaries made needless.
 */
export function applyPurge(doc: Y.Doc, plan: PurgePlan): void {
  const tombstones = typesOf(doc).tombstones
  for (const id of plan.retired ?? []) tombstones.delete(id)
  const segments = typesOf(doc).segments
  for (const { summary } of plan.segments) {
    const at = segments.toArray().findIndex((v) => decodeSegmentSummary(v)?.index === summary.index)
    if (at < 0) continue
    segments.delete(at, 1)
    segments.insert(at, [encodeSegmentSummary(summary)])
  }
  if (plan.fold) {
    const at = segments.toArray().findIndex((v) => decodeFoldedHistory(v) !== undefined)
    if (at >= 0) segments.delete(at, 1)
    segments.insert(0, [encodeFoldedHistory(plan.fold)])
  }
}

/** Holds `plan`'s re-sealed segments and rewritten pages in the relay's sealed history of `doc`, in place of the old. */
export function holdPurged(doc: Y.Doc, plan: PurgePlan): void {
  const history = sealedHistory(doc)
  for (const { segment } of plan.segments) history.replace(segment)
  if (!plan.fold) return
  for (const [i, { page }] of plan.pages.entries()) {
    const hash = i + 1 < plan.pages.length ? plan.pages[i + 1]!.page.previous!.hash : plan.fold.hash
    history.addPage(page, hash)
  }
}
