import { type MessageId, messageIndex, REACTION_KEY_SEPARATOR, tombstoneOf, typesOf } from "@parley/shared"
import type * as Y from "yjs"

/**
 * Removes, as the relay (in one transaction with `origin`), what the live
 * document still holds about messages among `ids` that are deleted: their
 * edit, their pinned copy, their reactions. A deletion removes the entries its
 * replica held; an edit or reaction written concurrently (the author editing
 * while a moderator deletes, online or offline) is another entry, which Yjs
 * keeps: the edited text stayed in the document, sent to every member and
 * stored, after the deletion and its purge. Returns whether it removed
 * anything.
 */
export function removeDeletedLeftovers(doc: Y.Doc, ids: readonly MessageId[], origin: unknown): boolean {
  const index = messageIndex(doc)
  const deleted = ids.filter((id) => index.deleted.has(id) || tombstoneOf(doc, id) !== undefined)
  if (deleted.length === 0) return false
  const t = typesOf(doc)
  const prefixes = deleted.map((id) => `${id}${REACTION_KEY_SEPARATOR}`)
  const reactions = [...t.reactions.keys()].filter((key) => prefixes.some((prefix) => key.startsWith(prefix)))
  const edits = deleted.filter((id) => t.edits.has(id))
  const pins = deleted.filter((id) => t.pins.has(id))
  if (reactions.length + edits.length + pins.length === 0) return false
  doc.transact(() => {
    for (const id of edits) t.edits.delete(id)
    for (const id of pins) t.pins.delete(id)
    for (const key of reactions) t.reactions.delete(key)
  }, origin)
  return true
}
