import { decodeDirectoryPage, foldedHistory, MetaKey, sealedSegments, typesOf } from "@parley/shared"
import * as Y from "yjs"
import type { SegmentCache } from "./history-cache.js"

/**
 * Whether `transaction` removed content from conversation `doc` (a message
 * deleted, sealed away or purged; an edit, tombstone, pin or profile removed;
 * anything deleted in a deleted conversation): then the replica's stored
 * updates still hold the text, until they are merged (`LocalReplica.compact`).
 * An edit or a rename replacing a value is no removal (README "Deletion and
 * erasure": edits are overlays), nor a marker moving.
 */
export function removesContent(doc: Y.Doc, transaction: Y.Transaction): boolean {
  if (transaction.deleteSet.clients.size === 0) return false
  const t = typesOf(doc)
  const removable = new Set<unknown>([t.edits, t.tombstones, t.pins, t.profiles])
  const deletedConversation = typeof t.meta.get(MetaKey.deletedAt) === "number"
  let removes = false
  Y.iterateDeletedStructs(transaction, transaction.deleteSet, (struct) => {
    if (removes || !(struct instanceof Y.Item)) return
    const parent = struct.parent
    if (!(parent instanceof Y.AbstractType)) return
    if (parent === t.messages || (deletedConversation && parent._item === null)) removes = true
    else if (removable.has(parent) && struct.parentSub !== null)
      removes = !(parent as Y.Map<unknown>).has(struct.parentSub)
  })
  return removes
}

/** The sealed history a replica names, to find its copies in the device's cache. */
export interface NamedHistory {
  /** Hashes of the segments the live document lists. */
  readonly segments: readonly string[]
  /** Hash of the newest directory page of the folded history, if any (each page names the one before). */
  readonly newestPage?: string
}

/**
 * Removes from a deleted conversation's replica `doc` what the relay's purge
 * removes (messages, segments' summaries, edits, reactions, tombstones, pins,
 * profiles, title, metadata), with deletions only: nothing new is written
 * under this device's Yjs client, so the relay, which deleted the same
 * items, finds nothing to refuse when the replica syncs again. Returns the
 * history it named first. `doc` must collect garbage (Yjs's default), so
 * that its encoding no longer holds the text.
 */
export function dropDeletedContent(doc: Y.Doc): NamedHistory {
  const t = typesOf(doc)
  const fold = foldedHistory(doc)
  const named: NamedHistory = {
    segments: sealedSegments(doc).map((s) => s.hash),
    ...(fold && fold.pages > 0 ? { newestPage: fold.hash } : {}),
  }
  doc.transact(() => {
    if (t.messages.length > 0) t.messages.delete(0, t.messages.length)
    if (t.segments.length > 0) t.segments.delete(0, t.segments.length)
    for (const map of [t.edits, t.reactions, t.tombstones, t.pins, t.unpinned, t.profiles])
      for (const key of [...map.keys()]) map.delete(key)
    for (const key of [MetaKey.title, MetaKey.metadata]) if (t.meta.has(key)) t.meta.delete(key)
  })
  return named
}

/**
 * Deletes from `cache` the segments and directory pages `named` reaches:
 * the live document's segments, then the folded ones, page by page from the
 * newest, as far as the cache holds the pages.
 */
export async function forgetCachedHistory(cache: SegmentCache, named: NamedHistory): Promise<void> {
  const hashes = new Set(named.segments)
  let page = named.newestPage
  const seen = new Set<string>()
  while (page !== undefined && !seen.has(page)) {
    seen.add(page)
    hashes.add(page)
    const bytes = await cache.get(page)
    if (!bytes) break
    let previous: string | undefined
    try {
      const decoded = decodeDirectoryPage(bytes)
      for (const summary of decoded.summaries) hashes.add(summary.hash)
      previous = decoded.previous?.hash
    } catch {
      // Not a page (a damaged entry): what it named cannot be found, it goes itself.
    }
    page = previous
  }
  await Promise.all([...hashes].map((hash) => cache.delete(hash)))
}
