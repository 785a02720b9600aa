import { type PendingChange, rebasePendingWork, type UserId } from "@parley/shared"
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
 * status fails), nor markers. (Work written under an earlier client id of the
 * replica, before a reload, is not told.)
 */
export function unsavedChanges(doc: Y.Doc, user: UserId, relayHas: number): PendingChange[] {
  const baseline = Y.decodeStateVector(Y.encodeStateVector(doc))
  baseline.set(doc.clientID, relayHas)
  const scratch = new Y.Doc()
  try {
    const { reapplied, failed } = rebasePendingWork(doc, scratch, user, baseline)
    return [...reapplied, ...failed.map((f) => f.what)].filter((change) => TOLD.has(change.kind))
  } finally {
    scratch.destroy()
  }
}
