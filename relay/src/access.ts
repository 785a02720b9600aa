import { type DocumentName, getConversation, roleOf } from "@parley/shared"
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
 * holds no conversation yet, any user, as `pending`); services read
 * everything; an inbox is opened by its user only, who may write nothing there
 * but their own preferences (`checkInboxUpdate`).
 */
export function accessOf(principal: Principal, name: DocumentName, doc: Y.Doc): Access {
  if (principal.kind === "relay") return "write"
  if (principal.kind === "service") return "read"
  if (name.kind === "inbox") return name.user === principal.user ? "write" : "none"
  if (!getConversation(doc)) return "pending"
  return roleOf(doc, principal.user) ? "write" : "none"
}
