import {
  type InboxItem,
  Limits,
  mayWriteProfile,
  type Profile,
  type ProfileInput,
  type ProfileRecord,
  preferredProfile,
  profileFromRecord,
  profileRecord,
  profileRecordOf,
  sameProfile,
  setProfile,
  typesOf,
  type UserId,
} from "@parley/shared"
import { decodeJwt } from "jose"
import type * as Y from "yjs"
import type { Conversation } from "./conversation.js"
import { Emitter } from "./emitter.js"

/** The token claims a default profile is taken from (OpenID Connect's `name` and `picture`). */
export interface ProfileClaims {
  readonly name: string
  readonly picture: string
}

/**
 * The `name` and `picture` claims of a token (decoded, not verified: they only
 * seed the user's own profile, which the user may set to anything valid
 * anyway). A name is cut to 64 characters; a picture that is not an `https:`
 * URL is left out. Undefined when the token has neither claim.
 */
export function claimsOfToken(token: string): ProfileClaims | undefined {
  let payload: Record<string, unknown>
  try {
    payload = decodeJwt(token)
  } catch {
    return undefined
  }
  const name = typeof payload.name === "string" ? payload.name.trim().slice(0, Limits.profileNameLength) : ""
  const picture = typeof payload.picture === "string" ? payload.picture : ""
  if (name === "" && picture === "") return undefined
  try {
    profileRecord({ name, picture })
    return { name, picture }
  } catch {
    try {
      profileRecord({ name })
      return { name, picture: "" }
    } catch {
      return undefined
    }
  }
}

/** Events of {@link Profiles}. */
export interface ProfilesEvents {
  /** Profiles of these users changed in an open conversation, or the user's own profile changed. */
  changed: { users: readonly UserId[] }
}

/** Transaction origin the SDK writes its own changes under (the conversation's `LOCAL`). */
type Origin = unknown

/** Local keys of the user's own profile in the device's directory document. */
const OWN = "own"
const CLAIMS = "claims"

/**
 * The user's own profile and the profiles of the people in the open
 * conversations. The own profile lives on the device (the directory
 * document) and in every conversation the user takes part in (their entry in
 * `profiles`): it is written into a conversation when the conversation is
 * ready on this device and its entry differs, so an edit reaches open
 * conversations at once and the others the next time they open (on any of
 * the user's devices). Meeting a newer entry of their own (another device's
 * edit), a device adopts it and spreads it further.
 */
export class Profiles extends Emitter<ProfilesEvents> {
  private readonly tracked = new Map<Conversation, () => void>()
  /** Display names from the inbox entries (participants' names), for users of no open conversation. */
  private inboxNames = new Map<UserId, string>()
  private destroyed = false

  constructor(
    private readonly user: UserId,
    /** Device-local store of the user's own profile and the last token claims seen. */
    private readonly local: Y.Map<unknown>,
    private readonly loaded: Promise<void>,
    private readonly origin: Origin,
    private readonly clock: () => number,
  ) {
    super()
  }

  /** The user's own profile record on this device (undefined: neither claims nor an edit yet). */
  get ownRecord(): ProfileRecord | undefined {
    return this.local.get(OWN) as ProfileRecord | undefined
  }

  /** The user's own profile as others see it (their id as name when they have none). */
  get own(): Profile {
    return profileFromRecord(this.user, this.ownRecord)
  }

  /**
   * Sets the user's profile (an edit: it wins over the token's claims from
   * now on) and writes it into every open conversation they take part in.
   * Throws INVALID_ARGUMENT for a name over 64 characters (or with control
   * characters) or a picture that is not an `https:` URL.
   */
  async set(input: ProfileInput): Promise<Profile> {
    const record = profileRecord(input, { now: this.clock() })
    await this.loaded
    if (!this.destroyed) this.adopt(record)
    return this.own
  }

  /**
   * The claims of a fresh token: they become the profile while the user has
   * not edited it, whenever they differ from the claims last seen (so an
   * identity provider's rename reaches the profile, and a stale token on one
   * device does not undo a newer default from another).
   */
  async noteClaims(claims: ProfileClaims | undefined): Promise<void> {
    if (!claims) return
    await this.loaded
    if (this.destroyed) return
    const last = this.local.get(CLAIMS) as ProfileClaims | undefined
    if (last && last.name === claims.name && last.picture === claims.picture && this.ownRecord) return
    this.local.set(CLAIMS, claims)
    if (this.ownRecord?.edited) return
    this.adopt(profileRecord(claims, { now: this.clock(), edited: false }))
  }

  /**
   * The profile of `user` as the open conversations show it: the preferred
   * of their entries (edited over default, then the latest); else the name an
   * inbox entry carries for them; else their id as name. The user's own
   * profile for the user.
   */
  profileOf(user: UserId): Profile {
    if (user === this.user) return this.own
    let best: ProfileRecord | undefined
    for (const conversation of this.tracked.keys())
      best = preferredProfile(best, profileRecordOf(conversation.doc, user))
    if (best) return profileFromRecord(user, best)
    const name = this.inboxNames.get(user)
    return name === undefined ? profileFromRecord(user, undefined) : { user, name, named: true }
  }

  /**
   * The names the inbox entries carry (`participants.names`): how people of
   * conversations not open on this device are named until one opens.
   */
  noteInbox(items: readonly InboxItem[]): void {
    const next = new Map<UserId, string>()
    for (const item of items)
      for (const [user, name] of Object.entries(item.participants.names ?? {}))
        if (user !== this.user) next.set(user as UserId, name)
    const changed = [...new Set([...next.keys(), ...this.inboxNames.keys()])].filter(
      (user) => next.get(user) !== this.inboxNames.get(user),
    )
    this.inboxNames = next
    if (changed.length > 0) this.emit("changed", { users: changed })
  }

  /** Follows `conversation` while it is open: writes the own profile into it, learns from it. */
  track(conversation: Conversation): void {
    if (this.tracked.has(conversation)) return
    const offs = [
      conversation.on("state", () => this.arrived(conversation)),
      conversation.on("resynced", () => this.arrived(conversation)),
      conversation.on("change", ({ events }) => {
        const users = events.flatMap((e) => (e.type === "profile.updated" ? [e.user] : []))
        if (users.length === 0) return
        if (users.includes(this.user)) this.reconcile(conversation)
        this.emit("changed", { users })
      }),
    ]
    this.tracked.set(conversation, () => {
      for (const off of offs) off()
    })
    void this.loaded.then(() => {
      if (this.tracked.has(conversation)) this.reconcile(conversation)
    })
  }

  /** The conversation is (again) readable: its profiles may show now, and the own one may be due. */
  private arrived(conversation: Conversation): void {
    this.reconcile(conversation)
    const users = [...typesOf(conversation.doc).profiles.keys()] as UserId[]
    if (users.length > 0) this.emit("changed", { users })
  }

  /** Stops following `conversation` (it closed). */
  untrack(conversation: Conversation): void {
    this.tracked.get(conversation)?.()
    this.tracked.delete(conversation)
  }

  /** Stops following every conversation. */
  destroy(): void {
    this.destroyed = true
    for (const off of this.tracked.values()) off()
    this.tracked.clear()
    this.removeAllListeners()
  }

  /** Makes `record` the own profile (when it is preferred) and writes it where it differs. */
  private adopt(record: ProfileRecord): void {
    const own = this.ownRecord
    const changed = !own || !sameProfile(own, record) || own.updatedAt !== record.updatedAt
    // An explicit edit or fresh claims replace the local record; an entry met in a conversation only when preferred.
    this.local.set(OWN, record)
    if (changed) this.emit("changed", { users: [this.user] })
    for (const conversation of this.tracked.keys()) this.reconcile(conversation)
  }

  /**
   * Brings one conversation and the own profile together: a newer entry of
   * the user's (written by another of their devices) is adopted; otherwise
   * the own profile is written when the entry differs and the user may write.
   */
  private reconcile(conversation: Conversation): void {
    if (conversation.state.state !== "ready") return
    const doc = conversation.doc
    const own = this.ownRecord
    const entry = profileRecordOf(doc, this.user)
    // Entries that say the same count as equal whatever their times: a new device's default must not
    // rewrite every conversation of the user just because it stamped the same claims later.
    if (entry && preferredProfile(own, entry) === entry && !(own && sameProfile(own, entry))) {
      this.local.set(OWN, entry)
      this.emit("changed", { users: [this.user] })
      for (const other of this.tracked.keys()) if (other !== conversation) this.reconcile(other)
      return
    }
    if (!own || (entry && sameProfile(own, entry))) return
    if (!mayWriteProfile(doc, this.user).allowed) return
    setProfile(doc, this.user, own, { origin: this.origin })
  }
}

/**
 * "Bob is typing", "Bob and Carol are typing", "Bob, Carol and 2 others are
 * typing"; "" for nobody. `names` are display names (see {@link Profiles.profileOf}).
 */
export function typingText(names: readonly string[]): string {
  if (names.length === 0) return ""
  if (names.length === 1) return `${names[0]} is typing`
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing`
  const others = names.length - 2
  return `${names[0]}, ${names[1]} and ${others} ${others === 1 ? "other" : "others"} are typing`
}
