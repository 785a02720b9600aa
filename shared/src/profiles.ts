import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { ErrorCode, ParleyError } from "./errors.js"
import type { UserId } from "./ids.js"
import type { WriteOptions } from "./operations.js"
import { getConversation, roleOf } from "./reads.js"
import { canSetProfile, canWriteConversation, type Decision } from "./rules.js"
import type { ProfileRecord } from "./schema.js"
import { checkProfileName, checkProfilePicture, checkProfileRecord } from "./validate.js"
import { assertWellFormed } from "./well-formed.js"

/**
 * User profiles: a display name and a picture per user, kept in each
 * conversation document they take part in (`profiles`, user id → record), so
 * that exactly the people who share a conversation with a user see them and
 * no other service is needed. Each user writes only their own entry (rule
 * `own-profile`); the SDK writes it from the token's `name` / `picture`
 * claims by default and from the user's edits (client README, "Profiles").
 */

/** A user's profile as readers show it. */
export interface Profile {
  readonly user: UserId
  /** The display name; the user id when they set none. */
  readonly name: string
  /** An `https:` picture URL, or undefined (show initials). */
  readonly picture?: string
  /** Whether the user set a name (false: `name` is their id). */
  readonly named: boolean
}

/** What a user may set: a name and a picture URL (either may be "" for none). */
export interface ProfileInput {
  readonly name: string
  readonly picture?: string
}

/** The stored entry of `user` in `doc`, if it is well-formed (a malformed one reads as none). */
export function profileRecordOf(doc: Y.Doc, user: UserId): ProfileRecord | undefined {
  const record = typesOf(doc).profiles.get(user)
  return record !== undefined && checkProfileRecord(record) === undefined ? record : undefined
}

/** The profile of `user` in `doc`: their entry, or their id as name when they have none. */
export function profileOf(doc: Y.Doc, user: UserId): Profile {
  return profileFromRecord(user, profileRecordOf(doc, user))
}

/** A {@link Profile} from a stored record (or none). */
export function profileFromRecord(user: UserId, record: ProfileRecord | undefined): Profile {
  const name = record?.name.trim() ?? ""
  return {
    user,
    name: name === "" ? user : name,
    named: name !== "",
    ...(record && record.picture !== "" ? { picture: record.picture } : {}),
  }
}

/** Every profile entry in `doc` (well-formed ones), by user id. */
export function listProfiles(doc: Y.Doc): Profile[] {
  const out: Profile[] = []
  for (const user of typesOf(doc).profiles.keys()) {
    const record = profileRecordOf(doc, user as UserId)
    if (record) out.push(profileFromRecord(user as UserId, record))
  }
  return out.sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0))
}

/** The display name of `user` in `doc`, or undefined when they set none (callers fall back to the id). */
export function displayNameOf(doc: Y.Doc, user: UserId): string | undefined {
  const name = profileRecordOf(doc, user)?.name.trim()
  return name ? name : undefined
}

/**
 * Which of two records of one user is the one to keep: an edited profile over
 * the default from token claims, then the later `updatedAt` (then by content,
 * so that every device picks the same one; identical ones: `a`). What
 * a user's devices apply when they meet an entry written by another of them.
 */
export function preferredProfile(
  a: ProfileRecord | undefined,
  b: ProfileRecord | undefined,
): ProfileRecord | undefined {
  if (!a || !b) return a ?? b
  if ((a.edited === true) !== (b.edited === true)) return a.edited ? a : b
  if (a.updatedAt !== b.updatedAt) return b.updatedAt > a.updatedAt ? b : a
  // Two devices may stamp different edits with one millisecond: a content order keeps them from taking turns.
  return `${b.name}\u0000${b.picture}` > `${a.name}\u0000${a.picture}` ? b : a
}

/** Whether two records say the same (name, picture, kind), whatever their times. */
export const sameProfile = (a: ProfileRecord | undefined, b: ProfileRecord | undefined): boolean =>
  a === b ||
  (a !== undefined &&
    b !== undefined &&
    a.name === b.name &&
    a.picture === b.picture &&
    (a.edited === true) === (b.edited === true))

/**
 * A profile record from input, checked: INVALID_ARGUMENT for a name over 64
 * characters or with control characters, or a picture that is not an `https:`
 * URL (≤ 512 characters). Names are trimmed.
 */
export function profileRecord(
  input: ProfileInput,
  options: { now?: number; edited?: boolean } = {},
): ProfileRecord {
  const name = typeof input.name === "string" ? input.name.trim() : input.name
  const picture = input.picture ?? ""
  const problem = checkProfileName(name) ?? checkProfilePicture(picture)
  if (problem !== undefined) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, problem)
  return {
    name,
    picture,
    updatedAt: options.now ?? Date.now(),
    ...(options.edited === false ? {} : { edited: true as const }),
  }
}

/** May `actor` write `user`'s profile entry in `doc` now? (Participant, own entry, conversation not deleted.) */
export function mayWriteProfile(doc: Y.Doc, actor: UserId, user: UserId = actor): Decision {
  const deleted = canWriteConversation(getConversation(doc)?.deletedAt !== undefined)
  return deleted.allowed ? canSetProfile(actor, roleOf(doc, actor), user) : deleted
}

/**
 * Writes `actor`'s own profile entry (one transaction). Throws FORBIDDEN
 * (rule `own-profile`, `participant-only` or `conversation-deleted`) or
 * INVALID_ARGUMENT before writing anything; writes nothing when the entry
 * already holds the same record.
 */
export function setProfile(
  doc: Y.Doc,
  actor: UserId,
  record: ProfileRecord,
  options: WriteOptions = {},
): void {
  const decision = mayWriteProfile(doc, actor)
  if (!decision.allowed) throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
  const problem = checkProfileRecord(record)
  if (problem !== undefined) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, problem)
  assertWellFormed(record, "profile")
  const current = typesOf(doc).profiles.get(actor)
  if (current && sameProfile(current, record) && current.updatedAt === record.updatedAt) return
  // A fresh plain object: what is stored must be plain JSON, whatever the caller passed.
  const stored: ProfileRecord = {
    name: record.name,
    picture: record.picture,
    updatedAt: record.updatedAt,
    ...(record.edited ? { edited: true as const } : {}),
  }
  doc.transact(() => typesOf(doc).profiles.set(actor, stored), options.origin)
}
