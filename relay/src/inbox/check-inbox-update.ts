import { type Decision, InboxTopLevel, isConversationId, Rule, type UserId } from "@parley/shared"
import * as Y from "yjs"
import { mapItemValue, Refusal, readUpdate } from "../policy/update-structs.js"
import type { Principal } from "../principal.js"

const rootKind = (name: string): "map" | "array" | undefined =>
  name === InboxTopLevel.entries || name === InboxTopLevel.muted ? "map" : undefined

/**
 * Who may change an inbox document: the relay writes everything; the inbox's
 * own user writes only their `muted` preferences (a conversation id → `true`,
 * or removing one). Entries are derived by the relay, so a user writing them
 * could only make their own list lie; anyone else may not write at all.
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
      if (location.root !== InboxTopLevel.muted || location.key === null || !isConversationId(location.key))
        throw new Refusal(Rule.relayOnly, "inbox entries are written by the relay only")
      // Garbage-collected content holds nothing; a value deleted on arrival is judged like any other.
      if (item.content instanceof Y.ContentDeleted) continue
      if (mapItemValue(item) !== true) throw new Refusal(Rule.schema, "a muted flag is true or absent")
    }
    for (const { location } of read.deleted) {
      if (location.root !== InboxTopLevel.muted)
        throw new Refusal(Rule.relayOnly, "inbox entries are written by the relay only")
    }
    return { allowed: true }
  } catch (error) {
    if (error instanceof Refusal) return { allowed: false, rule: error.rule as Rule, reason: error.reason }
    return { allowed: false, rule: Rule.schema, reason: "the update is malformed" }
  }
}
