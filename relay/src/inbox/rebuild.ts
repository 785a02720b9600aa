import {
  type ConversationId,
  InboxTopLevel,
  inboxEntryFor,
  listParticipants,
  parseDocumentName,
  type UserId,
} from "@parley/shared"
import * as map from "lib0/map"
import type { HookHost } from "../hooks/runtime.js"
import type { RelayStorage } from "../storage/types.js"
import { writeEntries } from "./inbox-target.js"

/** What a rebuild changed. */
export interface RebuildReport {
  readonly conversations: number
  /** Entries written because they differed from the derived ones (0 when the inboxes were current). */
  readonly written: number
  /** Entries removed because their user no longer takes part. */
  readonly removed: number
}

/**
 * Rebuilds every inbox from the conversations in `storage`: inboxes are derived
 * data, so this is the repair for anything (a bug, a restored backup) that left
 * them behind. Writes go through `host` (the core's one update path), so
 * connected devices receive the corrections live. Entries that are already
 * right are not rewritten.
 */
export async function rebuildInboxes(host: HookHost, storage: RelayStorage): Promise<RebuildReport> {
  const names = await storage.list()
  const member = new Map<UserId, Set<ConversationId>>()
  let conversations = 0
  let written = 0
  for (const name of names) {
    const parsed = safeParse(name)
    if (parsed?.kind !== "conversation") continue
    conversations++
    const entries = await host.read(name, (doc) =>
      listParticipants(doc).map((p) => [p.user, inboxEntryFor(doc, p.user)] as const),
    )
    for (const [user] of entries)
      map.setIfUndefined(member, user, () => new Set<ConversationId>()).add(parsed.id)
    written += await writeEntries(host, parsed.id, entries)
  }
  let removed = 0
  for (const name of names) {
    const parsed = safeParse(name)
    if (parsed?.kind !== "inbox") continue
    const orphans = await host.read(name, (inbox) =>
      [...inbox.getMap(InboxTopLevel.entries).keys()].filter(
        (id) => !member.get(parsed.user)?.has(id as ConversationId),
      ),
    )
    removed += orphans.length
    for (const id of orphans) await writeEntries(host, id as ConversationId, [[parsed.user, undefined]])
  }
  return { conversations, written, removed }
}

function safeParse(name: string) {
  try {
    return parseDocumentName(name)
  } catch {
    return undefined
  }
}
