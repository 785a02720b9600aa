import type { UserId } from "./ids.js"

/**
 * Ephemeral presence, carried in Yjs awareness and never persisted. Each
 * connection's awareness local state is a {@link PresenceState}.
 */
export interface PresenceState {
  /** The user this connection belongs to. */
  readonly user: UserId
  /** When the user last typed (ms since epoch), or absent / 0 when not typing. */
  readonly typing?: number
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
