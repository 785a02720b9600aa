import {
  DIRECT_PREFIX,
  type DocumentName,
  directUsersOf,
  getConversation,
  roleOf,
  typesOf,
} from "@parley/shared"
import type * as Y from "yjs"
import type { Principal } from "./principal.js"

/**
 * What a principal may do with a loaded document. `pending`: the document holds
 * no conversation yet, so whether the user may read it is not known; they may
 * send an update that creates it (judged by the rules, which let the id decide
 * who may create what) and are sent nothing of the document until an update
 * creates the conversation and makes them a participant (or closes them).
 */
export type Access = "write" | "read" | "pending" | "none"

/**
 * Who may open a document: participants of a conversation (and, while it
 * holds no conversation yet, any user, as `pending`), and one of the two
 * users of a deleted direct conversation they left, who may reopen it; services read
 * everything; an inbox is opened by its user only, who may write nothing there
 * but their own preferences (`checkInboxUpdate`).
 */
export function accessOf(principal: Principal, name: DocumentName, doc: Y.Doc): Access {
  if (principal.kind === "relay") return "write"
  if (principal.kind === "service") return "read"
  if (name.kind === "inbox") return name.user === principal.user ? "write" : "none"
  if (outsiderOfDirect(principal, name)) return "none"
  // Pending only while it holds nobody: a document with participants but no readable conversation
  // (its fields damaged or removed) is theirs alone, never anyone's to create again and read.
  const info = getConversation(doc)
  if (!info && typesOf(doc).participants.size === 0) return "pending"
  if (roleOf(doc, principal.user)) return "write"
  // One of the pair who left their deleted direct conversation may reopen it (rule `reopen-direct`), and
  // is sent what is left of it (purged: who is in it, that it is deleted), as a connection of theirs
  // open when they left keeps getting. Their replica needs it: a replica rebuilt on the relay's state
  // (a refusal's resync, a new device) that got nothing held no conversation, re-created it, was
  // refused, and after three such rebuilds held everything written after, the reopen included, until
  // its socket was replaced (20 s and more; an SDK on a new device could not reopen it at all).
  if (
    info?.deletedAt !== undefined &&
    info.kind === "direct" &&
    directUsersOf(info.id)?.includes(principal.user)
  )
    return "write"
  return "none"
}

/**
 * Whether `principal` is a user who can never be in the direct conversation `name` names: a
 * `dm~` id that is not the canonical id of a pair including them. Direct ids are guessable, so
 * such a user is refused alike whether or not the pair ever talked: "pending" for a missing one
 * and 4403 for an existing one would tell anyone who talks to whom (and when they start to).
 */
export function outsiderOfDirect(principal: Principal, name: DocumentName): boolean {
  if (principal.kind !== "user" || name.kind !== "conversation" || !name.id.startsWith(DIRECT_PREFIX))
    return false
  return !directUsersOf(name.id)?.includes(principal.user)
}
