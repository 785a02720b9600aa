import { type DocumentName, getConversation, roleOf } from "@parley/shared"
import type * as Y from "yjs"
import type { Principal } from "./principal.js"

/** What a principal may do with a loaded document. */
export type Access = "write" | "read" | "none"

/**
 * Who may open a document: participants of a conversation (and anyone, while
 * the document is still empty, so that they can create it as its owner);
 * services read everything; an inbox is opened by its user only, who may write
 * nothing there but their own preferences (`checkInboxUpdate`).
 */
export function accessOf(principal: Principal, name: DocumentName, doc: Y.Doc): Access {
  if (principal.kind === "relay") return "write"
  if (principal.kind === "service") return "read"
  if (name.kind === "inbox") return name.user === principal.user ? "write" : "none"
  if (!getConversation(doc)) return "write"
  return roleOf(doc, principal.user) ? "write" : "none"
}
