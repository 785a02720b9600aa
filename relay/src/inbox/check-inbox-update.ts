import {
  type ConversationId,
  type Decision,
  InboxTopLevel,
  isConversationId,
  Rule,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { currentMapItem, mapItemValue, Refusal, readUpdate } from "../policy/update-structs.js"
import type { Principal } from "../principal.js"

const rootKind = (name: string): "map" | "array" | undefined =>
  name === InboxTopLevel.entries || name === InboxTopLevel.muted ? "map" : undefined

/**
 * Who may change an inbox document: the relay writes everything; the inbox's
 * own user writes their `muted` preferences (a conversation id → `true`, or
 * removing one) and may hand entries back (keyed by conversation id). Entries
 * are derived data the relay does not always store at once (`LiveInbox`): a
 * device that synced one the relay then lost (it crashed before the inbox was
 * stored) sends it back on reconnecting, and refusing that would lock the
 * device out of its own inbox. Whatever the user writes there is derived
 * again from the conversations right after it is stored, so a forged entry
 * misleads nobody but its writer, and only until then. Anyone else may not
 * write at all.
 *
 * An entry may be handed back only under a key the relay wrote into this
 * inbox (a conversation the user is or was in: `inboxTarget` writes the key
 * durably when they join, so whatever a device holds from the relay is under
 * such a key, even when the relay lost the entry itself). Deriving an entry
 * again loads its conversation: under keys of the user's choosing, one cheap
 * write would make the relay load any conversation from storage, with no
 * access check and nothing counted against the user.
 */
export function checkInboxUpdate(input: {
  readonly doc: Y.Doc
  readonly update: Uint8Array
  readonly principal: Principal
  readonly owner: UserId
}): Decision {
  const { doc, update, principal, owner } = input
  if (principal.kind === "relay") return { allowed: true }
  if (principal.kind !== "user" || principal.user !== owner)
    return { allowed: false, rule: Rule.relayOnly, reason: "only the relay and its user write an inbox" }
  try {
    const read = readUpdate(doc, update, rootKind, Rule.schema, 10_000 + 64 * update.length)
    for (const { item, location } of read.items) {
      if (location.key === null || !isConversationId(location.key))
        throw new Refusal(Rule.schema, "an inbox is keyed by conversation id")
      // Garbage-collected content holds nothing; a value deleted on arrival is judged like any other.
      if (item.content instanceof Y.ContentDeleted) continue
      const value = mapItemValue(item)
      if (location.root === InboxTopLevel.muted && value !== true)
        throw new Refusal(Rule.schema, "a muted flag is true or absent")
      if (location.root === InboxTopLevel.entries) {
        if (typeof value !== "object" || value === null)
          throw new Refusal(Rule.schema, "an inbox entry is an object")
        // Kept (deleted) under its key once written: a key the relay never wrote here is the user's invention.
        if (currentMapItem(doc, InboxTopLevel.entries, location.key) === undefined)
          throw new Refusal(Rule.relayOnly, "only the relay adds a conversation to an inbox")
      }
    }
    return { allowed: true }
  } catch (error) {
    if (error instanceof Refusal) return { allowed: false, rule: error.rule as Rule, reason: error.reason }
    return { allowed: false, rule: Rule.schema, reason: "the update is malformed" }
  }
}

/**
 * The conversations whose entries `update` (already allowed by
 * {@link checkInboxUpdate}) writes or removes in `doc`, the inbox before it:
 * those the relay derives again once it is stored. Empty for what it cannot
 * read (it was refused then).
 */
export function entriesWritten(doc: Y.Doc, update: Uint8Array): ConversationId[] {
  try {
    const read = readUpdate(doc, update, rootKind, Rule.schema, 10_000 + 64 * update.length)
    const keys = new Set<ConversationId>()
    for (const { location } of [...read.items, ...read.deleted])
      if (location.root === InboxTopLevel.entries && location.key !== null && isConversationId(location.key))
        keys.add(location.key)
    return [...keys]
  } catch {
    return []
  }
}
