import type { ConversationKind, Role } from "@parley/client"

// Which buttons to show. The SDK refuses forbidden operations (FORBIDDEN) and
// the relay enforces the rules; the UI only hides what would be refused.

const isManager = (role: Role | undefined) => role === "owner" || role === "admin"

/** May the user edit a message by `author`? Authors only. */
export const mayEdit = (me: string, author: string, role: Role | undefined) =>
  role !== undefined && me === author

/** May the user delete a message by `author`? Its author, owners and admins. */
export const mayDelete = (me: string, author: string, role: Role | undefined) =>
  role !== undefined && (me === author || isManager(role))

/** May the user add participants? Owners and admins of groups. */
export const mayAdd = (kind: ConversationKind, role: Role | undefined) => kind === "group" && isManager(role)

/** May the user remove `target` (whose role is `targetRole`)? Themselves means leaving, shown apart. */
export const mayRemove = (
  me: string,
  role: Role | undefined,
  kind: ConversationKind,
  target: string,
  targetRole: Role,
) => kind === "group" && target !== me && isManager(role) && (targetRole !== "owner" || role === "owner")

/** May the user make `target` an admin or a member? Owners and admins of groups; owners only touch owners. */
export const mayChangeRole = (role: Role | undefined, kind: ConversationKind, targetRole: Role) =>
  kind === "group" && isManager(role) && (targetRole !== "owner" || role === "owner")
