import {
  type ConversationKind,
  canAddParticipant,
  canChangeRole,
  canDeleteMessage,
  canEditMessage,
  canRemoveParticipant,
  canUpdateConversation,
  keepsAnOwner,
  type Participant,
  type Role,
  type UserId,
} from "@parley/client"

// Which buttons to show: the same rules the SDK and the relay enforce, so the UI
// hides exactly what would be refused.

/** May the user edit a message by `author`? */
export const mayEdit = (me: string, author: string, role: Role | undefined) =>
  canEditMessage(me as UserId, role, author as UserId).allowed

/** May the user delete a message by `author`? */
export const mayDelete = (me: string, author: string, role: Role | undefined) =>
  canDeleteMessage(me as UserId, role, author as UserId).allowed

/** May the user add participants (as members)? */
export const mayAdd = (kind: ConversationKind, role: Role | undefined) =>
  canAddParticipant(role, kind, "member").allowed

/** May the user remove `target` (whose role is `targetRole`)? Themselves means leaving, shown apart. */
export const mayRemove = (
  me: string,
  role: Role | undefined,
  kind: ConversationKind,
  target: string,
  targetRole: Role,
) => target !== me && canRemoveParticipant(me as UserId, role, kind, target as UserId, targetRole).allowed

/** May the user switch `target` between admin and member? */
export const mayChangeRole = (role: Role | undefined, kind: ConversationKind, targetRole: Role) =>
  canChangeRole(role, kind, targetRole, targetRole === "admin" ? "member" : "admin").allowed

/** May the user rename the conversation (groups: owners and admins)? */
export const mayRename = (kind: ConversationKind, role: Role | undefined) =>
  kind === "group" && canUpdateConversation(role).allowed

/** May the user leave a group of `participants`? Its last owner makes another owner first (`last-owner`). */
export const mayLeave = (me: string, participants: readonly Participant[]) => {
  const staying = participants.filter((p) => p.user !== me)
  return keepsAnOwner("group", staying.filter((p) => p.role === "owner").length, staying.length).allowed
}

/** May the user make `target` (whose role is `targetRole`) an owner? Only owners do. */
export const mayMakeOwner = (role: Role | undefined, kind: ConversationKind, targetRole: Role) =>
  canChangeRole(role, kind, targetRole, "owner").allowed
