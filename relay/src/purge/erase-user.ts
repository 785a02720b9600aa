import {
  type ConversationId,
  decodeSegment,
  ErrorCode,
  eraseAuthor,
  inboxDocumentName,
  ParleyError,
  parseDocumentName,
  profileRecordOf,
  sealedHistory,
  typesOf,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"
import type { BlobStore } from "../attachments/blob-store.js"
import { eraseUploads } from "../attachments/service.js"
import type { RunningCore } from "../extension.js"
import type { HistoryStore, StoredSegment } from "../history/store.js"
import { RELAY } from "../principal.js"
import { rewriteInboxEntries } from "./inbox-purge-target.js"

/** What {@link eraseUser} did. */
export interface ErasureReport {
  /** Conversations it looked in. */
  readonly conversations: number
  /** Messages it replaced by placeholders (0 when run again). */
  readonly messages: number
  /** Files the user uploaded that it deleted (0 when run again, or without attachments). */
  readonly uploads: number
  /**
   * Conversations it could not erase because their stored state is damaged
   * (refused to everyone until restored): restore them (`damaged restore`)
   * and erase again. The others are erased all the same.
   */
  readonly damaged: readonly string[]
}

/**
 * Erases everything `user` wrote (GDPR art. 17): every message of theirs in
 * every stored conversation becomes a deletion placeholder (shared
 * `eraseAuthor`), written by the relay through the one update path, so that
 * connected devices are told, and the purge that follows a message deletion
 * removes the text from logs, snapshots, sealed segments, hook events and
 * inboxes (relay README, "Deletion and erasure"). Their profile (display
 * name, picture) goes from each conversation, its stored hook events and the
 * members' inbox entries. Idempotent. It reads every conversation
 * (O(stored conversations)): an operator's command, not a hot path.
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
  const damaged: string[] = []
  for (const name of names) {
    if (parseDocumentName(name).kind !== "conversation") continue
    conversations++
    // A damaged conversation is named and passed over: before, the first one ended the erasure there, and
    // the conversations after it kept the user's text with nothing saying so.
    const shown = await eraseIn(core, name, history, user, now, (n) => (messages += n))
    if (shown === undefined) {
      damaged.push(name)
      continue
    }
    // Their name and picture on the conversation's stored events (every event they caused carries it),
    await core.forgetUser?.(name, user)
    // and in the members' inbox entries (an entry names some members).
    if (shown.length > 0) await forgetInInboxes(core, name, shown)
  }
  // After the messages: one sent meanwhile with a file of theirs is a placeholder now, not a link to it.
  const uploads = blobs ? await eraseUploads(blobs, user) : 0
  return { conversations, messages, uploads, damaged }
}

/**
 * The members' inboxes that may show `shown` (the erased user's name and
 * picture in conversation `name`): derived again from the erased
 * conversation, written and compacted. Those stored without it are passed
 * over (a byte search each), as a message's purge does.
 */
async function forgetInInboxes(core: RunningCore, name: string, shown: readonly string[]): Promise<void> {
  const users = await core.read(name, (doc) => [...typesOf(doc).participants.keys()] as UserId[])
  const inboxes = users.map((member) => inboxDocumentName(member))
  const stored = core.storedShowing ? await core.storedShowing(inboxes, new Set(shown)) : undefined
  const holding = users.filter(
    (_, i) => stored === undefined || stored.has(inboxes[i]!) || core.isLoaded?.(inboxes[i]!) === true,
  )
  await rewriteInboxEntries(core, name as ConversationId, holding, undefined)
}

/** Tries to erase one conversation while its sealed history keeps changing under the erasure. */
const ERASE_ATTEMPTS = 10

/** Whether two listings of a conversation's segments are the same segments. */
function sameSegments(a: readonly StoredSegment[], b: readonly StoredSegment[]): boolean {
  return a.length === b.length && a.every((s, i) => s.index === b[i]!.index && s.hash === b[i]!.hash)
}

/**
 * Erases `user`'s messages in conversation `name`; returns the name and
 * picture their profile showed there (empty when none), or undefined when
 * its stored state is damaged.
 */
async function eraseIn(
  core: RunningCore,
  name: string,
  history: HistoryStore | undefined,
  user: UserId,
  now: number,
  erased: (count: number) => void,
): Promise<string[] | undefined> {
  try {
    for (let attempt = 1; ; attempt++) {
      // The relay's directory of sealed messages, for the ones among them the user wrote: added to the
      // document the write runs on. That is not the one a read gives on a relay that does not own the
      // conversation (a cluster runs the write on a fresh copy): waiting for the same object there looped
      // for ever, at full CPU, erasing nothing (an outside probe).
      const segments = history ? await history.all(name) : []
      const shown = await core.read(name, (doc) => {
        const profile = profileRecordOf(doc, user)
        return [profile?.name, profile?.picture].filter((v): v is string => typeof v === "string" && v !== "")
      })
      await core.write(name, RELAY, (current: Y.Doc) => {
        if (segments.length > 0) {
          const directory = sealedHistory(current)
          for (const stored of segments) directory.add(decodeSegment(stored.bytes))
        }
        erased(eraseAuthor(current, user, { now }))
      })
      // A seal (or a purge) stored segments in between, whose messages the directory did not hold: again.
      if (!history || sameSegments(segments, await history.all(name))) return shown
      if (attempt >= ERASE_ATTEMPTS)
        throw new ParleyError(
          ErrorCode.UNAVAILABLE,
          `conversation ${name} sealed its history again on each of ${ERASE_ATTEMPTS} tries to erase ${user}'s messages; erase again`,
        )
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt))
    }
  } catch (error) {
    if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED) return undefined
    throw error
  }
}
