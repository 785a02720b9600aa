import { MetaKey, StoredKey, TopLevel } from "@parley/shared"
import * as Y from "yjs"
import { decodeOnce } from "./yjs-updates.js"

/** Work an update makes the relay do later, beyond applying and storing it, that its sender pays for with it. */
export interface ChargedWork {
  /**
   * Fleeting messages it sends: each is owed an expiry (a deletion made by
   * the relay, uncharged to anyone then).
   */
  readonly fleeting: number
  /**
   * Messages it deletes (placeholders and tombstones): each makes the relay
   * purge it from the members' inboxes that preview it.
   */
  readonly deletions: number
  /** Whether it deletes the conversation: the relay then purges every member's inbox of it. */
  readonly deletesConversation: boolean
}

const NONE: ChargedWork = { fleeting: 0, deletions: 0, deletesConversation: false }

/**
 * The {@link ChargedWork} of `update`, read from its decoded values (the
 * decoding the rules read again), wherever they are written: a superset,
 * which only costs their sender more. Counting byte patterns instead was
 * escaped by writing a key's length in more bytes than needed (lib0 reads
 * them all the same: an outside probe deleted 1,800 messages in a room of 200
 * for the price of 600). Throws what Yjs throws.
 */
export function chargedWorkIn(update: Uint8Array): ChargedWork {
  let fleeting = 0
  let deletions = 0
  let deletesConversation = false
  for (const struct of decodeOnce(update).structs) {
    if (!(struct instanceof Y.Item)) continue
    // A key set for the first time names itself (an item chained on another takes its key from it,
    // and the first of a key this update writes is in the update).
    // Decoded, not integrated: a root parent is its name.
    if ((struct.parent as unknown) === TopLevel.meta && struct.parentSub === MetaKey.deletedAt)
      deletesConversation = true
    if (!(struct.content instanceof Y.ContentAny)) continue
    for (const value of struct.content.arr) {
      if (typeof value !== "object" || value === null || Array.isArray(value)) continue
      const record = value as Record<string, unknown>
      if (typeof record[StoredKey.deletedAt] === "number") deletions++
      else if (record[StoredKey.priority] === "fleeting") fleeting++
    }
  }
  return fleeting === 0 && deletions === 0 && !deletesConversation
    ? NONE
    : { fleeting, deletions, deletesConversation }
}
