import type { PushSubscriptionRecord } from "./store.js"

/** Default days a subscription whose credentials expired keeps getting content-free wake-ups (`--push-wake-days`). */
export const DEFAULT_PUSH_WAKE_DAYS = 30

/** One day in ms. */
export const DAY_MS = 86_400_000

/**
 * What a subscription may be sent now:
 * - `full`: the notification as built (the credentials that registered or last renewed it hold);
 * - `wake`: only {@link WAKE_PAYLOAD} (they expired less than `wakeMs` ago);
 * - `expired`: nothing, and it is deleted (no renewal within `wakeMs`).
 *
 * A stolen token acts as its user only until it expires: a subscription it
 * registered reads the user's messages no longer than that either.
 */
export type PushStanding = "full" | "wake" | "expired"

/** The {@link PushStanding} of `sub` at `now`, with a grace of `wakeMs` after its credentials' end. */
export function pushStanding(sub: PushSubscriptionRecord, now: number, wakeMs: number): PushStanding {
  const until = sub.credentialsUntil
  if (until === null || until > now) return "full"
  return until + wakeMs > now ? "wake" : "expired"
}

/**
 * What a device whose credentials expired gets instead of a notification: no
 * title, body, sender, conversation, message or count (a count tells how
 * active the user is). The app shows a generic notification and fetches the
 * rest with its own fresh token when opened.
 */
export const WAKE_PAYLOAD = JSON.stringify({ wake: true })

/** The `Topic` of every wake-up (a per-conversation one would tell conversations apart). */
export const WAKE_TOPIC = "wake"
