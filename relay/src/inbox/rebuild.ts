import {
  type ConversationId,
  ErrorCode,
  InboxTopLevel,
  inboxEntryFor,
  listParticipants,
  ParleyError,
  parseDocumentName,
  type UserId,
} from "@parley/shared"
import * as map from "lib0/map"
import type { RunningCore } from "../extension.js"
import type { RelayStorage } from "../storage/types.js"
import { writeEntries } from "./inbox-target.js"

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
 * right are not rewritten.
 */
export async function rebuildInboxes(host: RunningCore, storage: RelayStorage): Promise<RebuildReport> {
  const names = await storage.list()
  const member = new Map<UserId, Set<ConversationId>>()
  const damagedConversations = new Set<string>()
  let conversations = 0
  let written = 0
  let damaged = 0
  for (const name of names) {
    const parsed = safeParse(name)
    if (parsed?.kind !== "conversation") continue
    conversations++
    const entries = await skipDamaged(() =>
      host.read(name, (doc) =>
        listParticipants(doc).map((p) => [p.user, inboxEntryFor(doc, p.user)] as const),
      ),
    )
    if (entries === undefined) {
      // Who takes part is unknown: its entries are neither rewritten nor removed as orphans.
      damaged++
      damagedConversations.add(parsed.id)
      continue
    }
    for (const [user] of entries)
      map.setIfUndefined(member, user, () => new Set<ConversationId>()).add(parsed.id)
    written += await writeEntries(host, parsed.id, entries)
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
      damaged++
      continue
    }
    removed += orphans.length
    for (const id of orphans) await writeEntries(host, id as ConversationId, [[parsed.user, undefined]])
  }
  return { conversations, written, removed, damaged }
}

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
