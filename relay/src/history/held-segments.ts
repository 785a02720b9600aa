import {
  decodeFoldedHistory,
  decodeSegmentSummary,
  encodeSegment,
  sealedHistory,
  segmentHash,
  typesOf,
} from "@parley/shared"
import type { HistoryHost, HistoryKeeper } from "./keeper.js"

/**
 * Keeps the sealed segments a relay holds for a loaded conversation (read for
 * checks, sealed here, held for unread counts) current with its live
 * document. A purge re-seals a segment under a new hash and rewrites the
 * directory; the relay that runs it replaces what it holds, but another relay
 * of a cluster learns of it only from the live document's new summary (or a
 * relay that was paused while another took the conversation over and erased
 * a user). Before, such a relay went on serving the erased text from the
 * copy it held, for as long as the conversation stayed loaded (an outside
 * probe). So whenever a summary changes, a held copy of that segment that no
 * longer matches its hash is dropped and read again (what it held may count
 * unread messages), and held directory pages are dropped when the folded
 * history's head changes (read again when needed).
 */
export function watchHeldSegments(
  host: HistoryHost,
  keeper: HistoryKeeper,
  failed: (error: unknown) => void,
): void {
  const doc = host.doc
  typesOf(doc).segments.observe((event) => {
    // This relay's own seals and purges hold what they wrote (`holdPurged`); others' come as updates.
    if (event.transaction.local) return
    const history = sealedHistory(doc)
    const changed = new Set<number>()
    let refolded = false
    for (const item of event.changes.deleted)
      for (const value of item.content.getContent()) {
        const summary = decodeSegmentSummary(value)
        if (summary && history.has(summary.index)) changed.add(summary.index)
        else if (!summary && decodeFoldedHistory(value)) refolded = true
      }
    if (refolded) for (const page of history.pagesHeld()) history.removePage(page)
    if (changed.size === 0) return
    // Read off the array itself: `sealedSegments` caches by the array's length, and its own observer
    // (which drops that cache) may run after this one, when a re-seal left the length as it was.
    const now = new Map<number, string>()
    for (const value of event.target.toArray()) {
      const summary = decodeSegmentSummary(value)
      if (summary) now.set(summary.index, summary.hash)
    }
    const stale: number[] = []
    for (const index of changed) {
      const held = history.segment(index)
      const hash = now.get(index)
      // Folded since (no summary in the live document): its directory page names it, and a purge
      // rewriting it rewrites the directory head too (above).
      if (!held || hash === undefined || segmentHash(encodeSegment(held)) === hash) continue
      history.remove(index)
      stale.push(index)
    }
    if (stale.length > 0) keeper.holdIndexes(host, stale).catch(failed)
  })
}
