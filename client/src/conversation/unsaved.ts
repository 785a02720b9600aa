import { MetaKey, type PendingChange, rebasePendingWork, typesOf, type UserId } from "@parley/shared"
import * as Y from "yjs"

/** The changes a user makes that {@link unsavedChanges} tells (not messages, which fail, nor markers). */
const TOLD = new Set<PendingChange["kind"]>([
  "message.edit",
  "message.delete",
  "message.unpin",
  "reaction.add",
  "reaction.remove",
  "participant.add",
  "participant.remove",
  "participant.role",
  "conversation.field",
  "profile",
])

/**
 * What the user changed on this replica's own client that the relay has not
 * acknowledged (its clock in `relayHas`): edits, deletions, reactions,
 * participants, the conversation's fields, profiles, as a resync finds them
 * (re-applied onto a scratch document, which is then dropped). Everything of
 * the other clients came from the relay. Messages are not listed (their
 * status fails), nor markers; a conversation created here and never saved is
 * told as `conversation.create`. (Work written under an earlier client id of the
 * replica, before a reload, is not told.)
 */
export function unsavedChanges(doc: Y.Doc, user: UserId, relayHas: number): PendingChange[] {
  const baseline = Y.decodeStateVector(Y.encodeStateVector(doc))
  baseline.set(doc.clientID, relayHas)
  const scratch = new Y.Doc()
  try {
    const { reapplied, failed } = rebasePendingWork(doc, scratch, user, baseline)
    const told = [...reapplied, ...failed.map((f) => f.what)].filter((change) => TOLD.has(change.kind))
    return createdHere(doc, relayHas) ? [{ kind: "conversation.create" }, ...told] : told
  } finally {
    scratch.destroy()
  }
}

/**
 * Whether the conversation was created on this replica's own client past
 * what the relay acknowledged: its creation (participants, title) is lost
 * with it. Read off the creating item's id, not the rebase, which reports a
 * creation for every conversation it re-applies onto an empty document.
 */
function createdHere(doc: Y.Doc, relayHas: number): boolean {
  const item = (typesOf(doc).meta as unknown as { _map: Map<string, Y.Item> })._map.get(MetaKey.createdBy)
  return item !== undefined && item.id.client === doc.clientID && item.id.clock >= relayHas
}
