import {
  type ConversationId,
  ErrorCode,
  type InboxEntry,
  InboxTopLevel,
  listParticipants,
  ParleyError,
  parseDocumentName,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import * as map from "lib0/map"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"
import type { RelayStorage } from "../storage/types.js"
import { writeDerivedEntries } from "./derived-entries.js"

/** What a rebuild changed. */
export interface RebuildReport {
  readonly conversations: number
  /** Entries written because they differed from the derived ones (0 when the inboxes were current). */
  readonly written: number
  /** Entries removed because their user no longer takes part. */
  readonly removed: number
  /** Damaged documents skipped (their inbox entries are left as they are until they are restored). */
  readonly damaged: number
}

/**
 * Rebuilds every inbox from the conversations in `storage`: inboxes are derived
 * data, so this is the repair for anything (a bug, a restored backup) that left
 * them behind. Writes go through `host` (the core's one update path), so
 * connected devices receive the corrections live. Entries that are already
 * right are not rewritten. Each entry is derived again as it is written
 * (`writeDerivedEntries`): on a live relay a member added or removed between
 * this pass's read and its write must not get a stale entry back, nor lose
 * a current one as an "orphan".
 */
export async function rebuildInboxes(host: RunningCore, storage: RelayStorage): Promise<RebuildReport> {
  const names = await storage.list()
  const member = new Map<UserId, Set<ConversationId>>()
  const damagedConversations = new Set<string>()
  /** Users whose inbox is damaged: skipped, counted once. */
  const damagedInboxes = new Set<UserId>()
  let conversations = 0
  let written = 0
  let damaged = 0
  for (const name of names) {
    const parsed = safeParse(name)
    if (parsed?.kind !== "conversation") continue
    conversations++
    const users = await skipDamaged(() => host.read(name, (doc) => listParticipants(doc).map((p) => p.user)))
    if (users === undefined) {
      // Who takes part is unknown: its entries are neither rewritten nor removed as orphans.
      damaged++
      damagedConversations.add(parsed.id)
      continue
    }
    for (const user of users) map.setIfUndefined(member, user, () => new Set<ConversationId>()).add(parsed.id)
    written += await writeDerivedEntries(host, parsed.id, users, writeEntry(parsed.id), {
      concurrent: true,
      damaged: (user) => damagedInboxes.add(user),
    })
  }
  let removed = 0
  for (const name of names) {
    const parsed = safeParse(name)
    if (parsed?.kind !== "inbox") continue
    const orphans = await skipDamaged(() =>
      host.read(name, (inbox) =>
        [...inbox.getMap(InboxTopLevel.entries).keys()].filter(
          (id) => !member.get(parsed.user)?.has(id as ConversationId) && !damagedConversations.has(id),
        ),
      ),
    )
    if (orphans === undefined) {
      damagedInboxes.add(parsed.user)
      continue
    }
    for (const id of orphans)
      removed += await writeDerivedEntries(
        host,
        id as ConversationId,
        [parsed.user],
        writeEntry(id as ConversationId),
      )
  }
  return { conversations, written, removed, damaged: damaged + damagedInboxes.size }
}

/** Writes the derived entry (none: removes it); true when the inbox changed. */
const writeEntry =
  (conversation: ConversationId) =>
  (inbox: Y.Doc, _user: UserId, entry: InboxEntry | undefined): boolean =>
    writeInboxEntry(inbox, conversation, entry)

/** `read`'s result, or undefined when the document is damaged (the core refuses it and logs why). */
async function skipDamaged<T>(read: () => Promise<T>): Promise<T | undefined> {
  try {
    return await read()
  } catch (error) {
    if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED) return undefined
    throw error
  }
}

function safeParse(name: string) {
  try {
    return parseDocumentName(name)
  } catch {
    return undefined
  }
}
