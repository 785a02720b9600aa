import { MetaKey, typesOf } from "@parley/shared"
import type * as Y from "yjs"

/**
 * True when `doc` is a deleted conversation that still holds content a purge
 * removes (messages, edits, reactions, tombstones, segments, title, metadata,
 * the members' profiles).
 */
export function holdsPurgeableContent(doc: Y.Doc): boolean {
  const t = typesOf(doc)
  if (typeof t.meta.get(MetaKey.deletedAt) !== "number") return false
  const metadata = t.meta.get(MetaKey.metadata)
  return (
    t.messages.length > 0 ||
    t.edits.size > 0 ||
    t.reactions.size > 0 ||
    t.tombstones.size > 0 ||
    t.pins.size > 0 ||
    t.profiles.size > 0 ||
    t.segments.length > 0 ||
    (t.meta.get(MetaKey.title) ?? "") !== "" ||
    (typeof metadata === "object" && metadata !== null && Object.keys(metadata).length > 0)
  )
}

/**
 * Removes a deleted conversation's content from `doc`, as the relay, in one
 * transaction: every message record and placeholder, edit, reaction and
 * tombstone, the sealed segments' summaries, the title, the metadata and
 * the names and pictures members gave themselves in it.
 * What stays says who was in it and that it was deleted, by whom and when
 * (participants, roles, markers, the canonical order of message ids).
 *
 * A Y.Doc with garbage collection on (the relay's) drops the deleted
 * content at the end of the transaction, keeping only the items' ids and
 * lengths: a snapshot encoded afterwards holds none of the text, and every
 * replica that applies the update deletes the same content.
 */
export function purgeConversationContent(doc: Y.Doc, origin: unknown): void {
  const t = typesOf(doc)
  doc.transact(() => {
    if (t.messages.length > 0) t.messages.delete(0, t.messages.length)
    if (t.segments.length > 0) t.segments.delete(0, t.segments.length)
    for (const map of [t.edits, t.reactions, t.tombstones, t.pins, t.unpinned, t.profiles])
      for (const key of [...map.keys()]) map.delete(key)
    if ((t.meta.get(MetaKey.title) ?? "") !== "") t.meta.set(MetaKey.title, "")
    const metadata = t.meta.get(MetaKey.metadata)
    if (typeof metadata === "object" && metadata !== null && Object.keys(metadata).length > 0)
      t.meta.set(MetaKey.metadata, {})
  }, origin)
}
