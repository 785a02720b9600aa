import { DIRECT_PREFIX, directDistinctKey, directUsersOf, type UserId } from "./ids.js"
import { type ConversationKind, Limits, type Role } from "./schema.js"

/**
 * Who may do what, as pure functions over plain values. The SDK calls them to
 * refuse an operation before writing anything; the relay calls the same ones on
 * what each incoming update changes. Each refusal names its rule so that the
 * error a user sees says exactly which one.
 */
export const Rule = {
  /** Only participants write to a conversation. */
  participantOnly: "participant-only",
  /**
   * A conversation's id decides who may create it and as what: `dm~a~b` only
   * by `a` or `b`, as their direct conversation; any other id only as a group.
   */
  creationById: "creation-by-id",
  /** A new conversation's creator is its owner. */
  creatorIsOwner: "creator-is-owner",
  /**
   * A conversation is created once: an id that already holds a conversation
   * (created by someone else, or at another time) is not created again, and
   * nothing written into the creation made on a device goes to the one the
   * relay holds (`rebasePendingWork` fails it all, with `CONFLICT`).
   */
  conversationIdTaken: "conversation-id-taken",
  /** A message is written as its author, by its author. */
  authorIsSender: "author-is-sender",
  /** Only the author edits a message. */
  authorOnly: "author-only",
  /** The author or an owner / admin deletes a message. */
  authorOrAdmin: "author-or-admin",
  /** Reactions and markers are only set as oneself. */
  selfOnly: "self-only",
  /** Markers only move forward. */
  markerForwardOnly: "marker-forward-only",
  /** Participants, roles, title, metadata and deletion are for owners and admins. */
  adminOnly: "admin-only",
  /** Only an owner makes owners or changes / removes an owner. */
  ownerOnly: "owner-only",
  /**
   * A group with participants keeps an owner: its last owner makes another
   * owner before stepping down or leaving. Only an owner makes owners, so a
   * group left without one could never have one again (an outside probe).
   */
  lastOwner: "last-owner",
  /** A direct conversation keeps its two participants. */
  directIsFixed: "direct-is-fixed",
  /** Sequence numbers are written only by the relay. */
  relayOnly: "relay-only",
  /** Records are immutable: written once, replaced only by a deletion placeholder. */
  immutable: "immutable",
  /** Only the known top-level types and well-formed, bounded records. */
  schema: "schema",
  /** A Yjs client id is used by one user only. */
  clientIdOwner: "client-id-owner",
  /**
   * The replica is of an older epoch of the live document (see shared README,
   * "Sealed history"): it must rebuild from the relay's state and re-apply its
   * pending work (`rebasePendingWork`) before it can send anything.
   */
  epoch: "epoch",
  /**
   * The update removes something its replica had not seen changed: a
   * participant's record that another write replaced meanwhile (a concurrent
   * role change, a removal and re-adding). Applied, the removal would remove
   * nothing (in Yjs a concurrent write outlives a removal of what it
   * replaced): acknowledged and lost. It is refused instead, so that the
   * sender learns it did not happen, rebuilds from the relay's state
   * (`rebasePendingWork`) and decides again on what the record holds now.
   */
  concurrentChange: "concurrent-change",
  /** Read-only access (service tokens) changes nothing. */
  readOnly: "read-only",
  /**
   * A deleted conversation is closed to writes: its content is purged once
   * the deletion is stored (relay README, "Deletion and erasure"), and nothing
   * may be written to it again, except a participant leaving it.
   */
  conversationDeleted: "conversation-deleted",
  /**
   * A deleted direct conversation may be reopened by either of its two users
   * (also one who left it), as themself, in a change that only removes the
   * deletion (`deletedAt`, `deletedBy`), records the reopen (`reopenedAt`,
   * `reopenedBy`) and adds back those of the two who left: its id is the only
   * one the pair may use, so a deletion must not end their direct messaging.
   * A group stays deleted for good (a new group gets a new id), and nothing
   * written before the deletion comes back: the relay purged it first.
   */
  reopenDirect: "reopen-direct",
  /** A sticky message is unpinned by its author or an owner / admin, as oneself, once. */
  unpinAuthorOrAdmin: "unpin-author-or-admin",
  /**
   * A participant sets (or removes) only their own profile entry: nobody,
   * owners included, names anyone else.
   */
  ownProfile: "own-profile",
  /**
   * An update that follows changes of its client the relay never stored
   * (refused while its storage failed, or lost with a relay that had not
   * acknowledged them) is refused as retryable (`UNAVAILABLE`): the sender
   * still has them and sends its pending work again whole.
   */
  missingChanges: "missing-changes",
  /**
   * A new message's id is not one the conversation's sealed history holds:
   * ids are chosen by the writing client, and every reader, overlay (edit,
   * reactions, deletion) and hook names a message by its id, so a second
   * message under a sealed one's id would take over how that one is shown.
   * (An id the live document holds is refused as `immutable`.)
   */
  messageIdTaken: "message-id-taken",
  /**
   * Reactions are bounded: at most `Limits.reactionEmojiPerMessage` different
   * emoji on one message, and at most `Limits.reactionsPerUser` reactions of
   * one user in one conversation. Every reader of a message downloads its
   * reactions, and those written to sealed messages are in the live
   * document until the relay folds them: without a bound one member could
   * grow either by any amount.
   */
  reactionLimit: "reaction-limit",
} as const
/** Name of a rule. */
export type Rule = (typeof Rule)[keyof typeof Rule]

/** Outcome of a rule check. */
export type Decision =
  | { readonly allowed: true }
  | { readonly allowed: false; readonly rule: Rule; readonly reason: string }

const ALLOW: Decision = { allowed: true }
const deny = (rule: Rule, reason: string): Decision => ({ allowed: false, rule, reason })

/** True for owner and admin. */
export const isManager = (role: Role | undefined): boolean => role === "owner" || role === "admin"

/** May `actor` (with `actorRole`) write to the conversation at all? */
export function canWrite(actorRole: Role | undefined): Decision {
  return actorRole ? ALLOW : deny(Rule.participantOnly, "only participants may change a conversation")
}

/** May anyone write to a conversation that is (`deleted`) or is not deleted? Nobody writes to a deleted one. */
export function canWriteConversation(deleted: boolean): Decision {
  return deleted ? deny(Rule.conversationDeleted, "the conversation is deleted") : ALLOW
}

/**
 * May `actor` reopen conversation `id` of `kind`, which is (`deleted`) or is
 * not deleted? Only a deleted direct conversation, only by one of its two
 * users (rule `reopen-direct`).
 */
export function canReopenConversation(
  actor: UserId,
  id: string,
  kind: ConversationKind,
  deleted: boolean,
): Decision {
  const users = directUsersOf(id)
  if (kind !== "direct" || !users)
    return deny(Rule.reopenDirect, "only a direct conversation is reopened: a group stays deleted")
  if (!users.includes(actor))
    return deny(Rule.reopenDirect, "only one of its two users may reopen a direct conversation")
  if (!deleted) return deny(Rule.reopenDirect, "only a deleted conversation is reopened")
  return ALLOW
}

/** May `actor` create a conversation whose participants are `roles`? */
export function canCreateConversation(actor: UserId, roles: ReadonlyMap<UserId, Role>): Decision {
  return roles.get(actor) === "owner"
    ? ALLOW
    : deny(Rule.creatorIsOwner, "the creator of a conversation must be one of its owners")
}

/** What a creating update says about the new conversation, as {@link canCreateWithId} judges it. */
export interface CreationClaim {
  /** The conversation id (the document's name). */
  readonly id: string
  readonly kind: ConversationKind
  /** Every participant and their role, the creator included. */
  readonly roles: ReadonlyMap<UserId, Role>
  /** The distinct key written at creation, if any. */
  readonly distinctKey: unknown
}

/**
 * May `actor` create `claim.id` as described? The id decides (rule
 * `creation-by-id`): the canonical direct id of two users (`dm~a~b`) is created
 * only by `a` or `b`, as kind `direct`, with exactly `a` and `b` as its
 * participants and their distinct key; both are owners (`direct-is-fixed`).
 * Any other `dm~` id is never created (it would pass for a direct
 * conversation), and every other id is created only as a group (whose creator
 * is an owner: {@link canCreateConversation}).
 */
export function canCreateWithId(actor: UserId, claim: CreationClaim): Decision {
  const { id, kind, roles } = claim
  const users = directUsersOf(id)
  if (users) {
    if (!users.includes(actor))
      return deny(Rule.creationById, "only one of its two users may create a direct conversation")
    if (kind !== "direct")
      return deny(Rule.creationById, "a direct conversation's id is created only as that direct conversation")
    if (roles.size !== 2 || !users.every((u) => roles.has(u)))
      return deny(Rule.creationById, "a direct conversation has exactly its two users as participants")
    if (claim.distinctKey !== directDistinctKey(users))
      return deny(Rule.creationById, "a direct conversation's distinct key is its two users")
    if (users.some((u) => roles.get(u) !== "owner"))
      return deny(Rule.directIsFixed, "both users of a direct conversation are its owners")
    return ALLOW
  }
  if (id.startsWith(DIRECT_PREFIX))
    return deny(Rule.creationById, `"${DIRECT_PREFIX}" ids are only the direct conversation ids of two users`)
  if (kind !== "group") return deny(Rule.creationById, "a direct conversation has the id of its two users")
  return canCreateConversation(actor, roles)
}

/** May `actor` send a message authored by `author`? */
export function canSendMessage(actor: UserId, actorRole: Role | undefined, author: UserId): Decision {
  if (!actorRole) return canWrite(actorRole)
  return author === actor ? ALLOW : deny(Rule.authorIsSender, "a message must be authored by its sender")
}

/** May `actor` edit a message written by `author`? */
export function canEditMessage(actor: UserId, actorRole: Role | undefined, author: UserId): Decision {
  if (!actorRole) return canWrite(actorRole)
  return author === actor ? ALLOW : deny(Rule.authorOnly, "only the author may edit a message")
}

/** May `actor` delete a message written by `author`? */
export function canDeleteMessage(actor: UserId, actorRole: Role | undefined, author: UserId): Decision {
  if (!actorRole) return canWrite(actorRole)
  return author === actor || isManager(actorRole)
    ? ALLOW
    : deny(Rule.authorOrAdmin, "only the author or an admin may delete a message")
}

/** May `actor` add or remove a reaction in the name of `user`? */
export function canReact(actor: UserId, actorRole: Role | undefined, user: UserId): Decision {
  if (!actorRole) return canWrite(actorRole)
  return user === actor ? ALLOW : deny(Rule.selfOnly, "reactions are only set as oneself")
}

/**
 * May a user add a reaction with an emoji a message shows `present` (true)
 * or not yet (false), when the message would then show `emoji` different
 * emoji and the user would then hold `reactions` reactions in the
 * conversation? (Rule `reaction-limit`; a reaction already there is no
 * addition.)
 */
export function canAddReaction(present: boolean, emoji: number, reactions: number): Decision {
  if (!present && emoji > Limits.reactionEmojiPerMessage)
    return deny(
      Rule.reactionLimit,
      `a message shows at most ${Limits.reactionEmojiPerMessage} different emoji`,
    )
  if (reactions > Limits.reactionsPerUser)
    return deny(
      Rule.reactionLimit,
      `a user adds at most ${Limits.reactionsPerUser} reactions to a conversation`,
    )
  return ALLOW
}

/** May `actor` move `user`'s marker from `from` to `to`? */
export function canMoveMarker(
  actor: UserId,
  actorRole: Role | undefined,
  user: UserId,
  from: number | undefined,
  to: number,
): Decision {
  if (!actorRole) return canWrite(actorRole)
  if (user !== actor) return deny(Rule.selfOnly, "markers are only moved as oneself")
  return from === undefined || to > from ? ALLOW : deny(Rule.markerForwardOnly, "markers only move forward")
}

/** May `actor` change the title, metadata, or delete the conversation? */
export function canUpdateConversation(actorRole: Role | undefined): Decision {
  if (!actorRole) return canWrite(actorRole)
  return isManager(actorRole)
    ? ALLOW
    : deny(Rule.adminOnly, "only owners and admins may change the conversation")
}

/** May `actor` add `user` with `role`? */
export function canAddParticipant(actorRole: Role | undefined, kind: ConversationKind, role: Role): Decision {
  if (!actorRole) return canWrite(actorRole)
  if (kind === "direct") return deny(Rule.directIsFixed, "a direct conversation keeps its two participants")
  if (!isManager(actorRole)) return deny(Rule.adminOnly, "only owners and admins may add participants")
  if (role === "owner" && actorRole !== "owner") return deny(Rule.ownerOnly, "only an owner may add an owner")
  return ALLOW
}

/** May `actor` remove `user` (whose role is `userRole`)? Removing oneself is leaving. */
export function canRemoveParticipant(
  actor: UserId,
  actorRole: Role | undefined,
  kind: ConversationKind,
  user: UserId,
  userRole: Role,
  conversationDeleted = false,
): Decision {
  if (!actorRole) return canWrite(actorRole)
  // Not even by leaving, until it is deleted (leaving then only takes it out of one's inbox): its id
  // names its two users, so once one had left, nobody could add her back or create it again, and the
  // pair had no direct conversation for good (an outside probe).
  if (kind === "direct" && !(user === actor && conversationDeleted))
    return deny(
      Rule.directIsFixed,
      user === actor
        ? "a direct conversation keeps its two participants: it can be left once deleted"
        : "a direct conversation keeps its two participants",
    )
  if (user === actor) return ALLOW
  if (!isManager(actorRole)) return deny(Rule.adminOnly, "only owners and admins may remove participants")
  if (userRole === "owner" && actorRole !== "owner")
    return deny(Rule.ownerOnly, "only an owner may remove an owner")
  return ALLOW
}

/** May `actor` change `user`'s role from `from` to `to`? */
export function canChangeRole(
  actorRole: Role | undefined,
  kind: ConversationKind,
  from: Role,
  to: Role,
): Decision {
  if (!actorRole) return canWrite(actorRole)
  if (kind === "direct") return deny(Rule.directIsFixed, "roles in a direct conversation are fixed")
  if (!isManager(actorRole)) return deny(Rule.adminOnly, "only owners and admins may change roles")
  if ((from === "owner" || to === "owner") && actorRole !== "owner")
    return deny(Rule.ownerOnly, "only an owner may make or unmake an owner")
  return ALLOW
}

/**
 * May a change leave a conversation of `kind` with `owners` owners among
 * `participants` participants? A group that still has participants keeps an
 * owner; a deleted one may be left by everyone (leaving it only takes it out
 * of one's inbox).
 */
export function keepsAnOwner(
  kind: ConversationKind,
  owners: number,
  participants: number,
  conversationDeleted = false,
): Decision {
  if (kind !== "group" || conversationDeleted || participants === 0 || owners > 0) return ALLOW
  return deny(
    Rule.lastOwner,
    "a group keeps an owner: make another participant an owner before stepping down or leaving",
  )
}

/** May this writer write sequence numbers? Only the relay. */
export function canWriteSequence(isRelay: boolean): Decision {
  return isRelay ? ALLOW : deny(Rule.relayOnly, "sequence numbers are written only by the relay")
}

/**
 * May `actor` unpin a sticky message written by `author`? Its author may
 * (they pinned it by sending it sticky), and owners and admins may (they keep
 * the conversation's pinned bar tidy); nobody else.
 */
export function canUnpinMessage(actor: UserId, actorRole: Role | undefined, author: UserId): Decision {
  if (!actorRole) return canWrite(actorRole)
  return author === actor || isManager(actorRole)
    ? ALLOW
    : deny(Rule.unpinAuthorOrAdmin, "only the author or an admin may unpin a message")
}

/**
 * May `actor` set or remove the profile entry of `user`? Only their own, and
 * only as a participant (a profile is shown to the people of the conversation).
 */
export function canSetProfile(actor: UserId, actorRole: Role | undefined, user: UserId): Decision {
  if (!actorRole) return canWrite(actorRole)
  return user === actor ? ALLOW : deny(Rule.ownProfile, "a profile is set only by its own user")
}
