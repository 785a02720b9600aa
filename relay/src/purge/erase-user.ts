import { decodeSegment, eraseAuthor, parseDocumentName, sealedHistory, type UserId } from "@parley/shared"
import type * as Y from "yjs"
import type { BlobStore } from "../attachments/blob-store.js"
import { eraseUploads } from "../attachments/service.js"
import type { RunningCore } from "../extension.js"
import type { HistoryStore } from "../history/store.js"
import { RELAY } from "../principal.js"

/** What {@link eraseUser} did. */
export interface ErasureReport {
  /** Conversations it looked in. */
  readonly conversations: number
  /** Messages it replaced by placeholders (0 when run again). */
  readonly messages: number
  /** Files the user uploaded that it deleted (0 when run again, or without attachments). */
  readonly uploads: number
}

/**
 * Erases everything `user` wrote (GDPR art. 17): every message of theirs in
 * every stored conversation becomes a deletion placeholder (shared
 * `eraseAuthor`), written by the relay through the one update path, so that
 * connected devices are told, and the purge that follows a message deletion
 * removes the text from logs, snapshots, sealed segments, hook events and
 * inboxes (relay README, "Deletion and erasure"). Idempotent. It reads every
 * conversation (O(stored conversations)): an operator's command, not a hot path.
 */
export async function eraseUser(
  core: RunningCore,
  names: readonly string[],
  history: HistoryStore | undefined,
  user: UserId,
  /** Where attachments are kept: every file the user uploaded is deleted too. */
  blobs?: BlobStore,
  now = Date.now(),
): Promise<ErasureReport> {
  let conversations = 0
  let messages = 0
  for (const name of names) {
    if (parseDocumentName(name).kind !== "conversation") continue
    conversations++
    for (;;) {
      // The relay's directory of sealed messages, for the ones among them the user wrote.
      const doc = await core.read(name, (d) => d)
      if (history) {
        const directory = sealedHistory(doc)
        for (const stored of await history.all(name)) directory.add(decodeSegment(stored.bytes))
      }
      let same = false
      await core.write(name, RELAY, (current: Y.Doc) => {
        same = current === doc
        if (same) messages += eraseAuthor(current, user, { now })
      })
      // Unloaded in between: the directory went with it, so again on the fresh load.
      if (same) break
    }
  }
  // After the messages: one sent meanwhile with a file of theirs is a placeholder now, not a link to it.
  const uploads = blobs ? await eraseUploads(blobs, user) : 0
  return { conversations, messages, uploads }
}
