import { isUserId, type UserId } from "./ids.js"

/**
 * Ephemeral presence, carried in Yjs awareness and never persisted. Each
 * connection's awareness local state is a {@link PresenceState}.
 */
export interface PresenceState {
  /** The user this connection says it belongs to. Self-declared: trust {@link PRESENCE_STAMP} instead. */
  readonly user: UserId
  /** When the user last typed (ms since epoch), or absent / 0 when not typing. */
  readonly typing?: number
  /**
   * A counter the SDK raises when its user is active (at most once per
   * {@link PRESENCE_THROTTLE_MS}). Peers judge "away" by when they last saw it
   * change, on their own clock; absent when the user hides their presence.
   */
  readonly active?: number
  /** Set by the relay on every state it relays: the user whose connection set it. */
  readonly [PRESENCE_STAMP]?: UserId
}

/**
 * The field of an awareness state that the relay owns: on every object state
 * it relays, the relay sets it to the user id of the connection that set the
 * state, overwriting whatever the client put there. Peers attribute presence
 * and typing by this field only (a client can claim any `user`, not this).
 * States that are not JSON objects are relayed without it.
 */
export const PRESENCE_STAMP = "parley:user"

/** The user the relay stamped on an awareness state, or undefined when it carries no valid stamp. */
export function stampedUser(state: unknown): UserId | undefined {
  if (typeof state !== "object" || state === null || Array.isArray(state)) return undefined
  const user = (state as Record<string, unknown>)[PRESENCE_STAMP]
  return typeof user === "string" && isUserId(user) ? user : undefined
}

/** A client sends at most one typing signal per user and conversation in this interval. */
export const TYPING_THROTTLE_MS = 3_000
/** A typing signal older than this no longer counts: typing indicators expire on their own. */
export const TYPING_EXPIRY_MS = 6_000

/** True when `state` says its user is typing at time `now`. */
export function isTyping(state: unknown, now: number): state is PresenceState & { typing: number } {
  if (typeof state !== "object" || state === null) return false
  const typing = (state as { typing?: unknown }).typing
  return typeof typing === "number" && typing > 0 && now - typing < TYPING_EXPIRY_MS
}

/** A client publishes user activity (the `active` field) at most once per this interval. */
export const PRESENCE_THROTTLE_MS = 20_000
/** A user whose `active` field has not changed for this long shows as away. */
export const AWAY_AFTER_MS = 120_000
