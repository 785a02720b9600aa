import type { UserId } from "@parley/shared"
import { HeldCounts } from "../held-counts.js"
import { RateLimiter } from "../rate-limit.js"

/** Per-user upload limits, counted over every connection and request of the user on this relay. */
export interface UploadQuotaOptions {
  /** Chunks one user may be sending at once. */
  readonly concurrent: number
  /** Bytes one user may upload per minute (a token bucket: a minute's worth may come in one burst). */
  readonly bytesPerMinute: number
  /**
   * Bytes one user may upload per day (a bucket refilled over 24 hours): what
   * one account can add to the relay's disk, where the minute's rate alone
   * would let it write hundreds of gigabytes a day. Unlimited when absent.
   */
  readonly bytesPerDay?: number
  /** Uploads one user may open per minute (each is a stored session until it completes or expires). */
  readonly uploadsPerMinute: number
  readonly now?: () => number
}

/**
 * Counts what each user is uploading: chunks in flight and bytes per minute,
 * per user (not per socket or request: a user opening more connections gets
 * no more). Per relay: in a cluster each relay counts its own share. A
 * user's buckets are dropped once they are full again and nothing of theirs
 * is in flight: what a user who uploaded once holds is freed when they leave.
 */
export class UploadQuota {
  private readonly inFlight = new HeldCounts<UserId>()
  private readonly rates = new Map<UserId, RateLimiter>()
  private readonly days = new Map<UserId, RateLimiter>()
  private readonly openings = new Map<UserId, RateLimiter>()
  /** Users whose buckets are refilling, each with the timer that drops them once full. */
  private readonly forgetting = new Map<UserId, NodeJS.Timeout>()

  constructor(private readonly options: UploadQuotaOptions) {}

  /**
   * Takes a slot and `bytes` of the user's budget: the release function (to
   * call once the chunk is done), or which limit the user is at, taking nothing.
   */
  take(user: UserId, bytes: number): (() => void) | "concurrent" | "rate" | "day" {
    if (this.inFlight.count(user) >= this.options.concurrent) return "concurrent"
    const rate = bucket(this.rates, user, this.options.bytesPerMinute, 60, this.options.now)
    const day =
      this.options.bytesPerDay === undefined
        ? undefined
        : bucket(this.days, user, this.options.bytesPerDay, DAY_SECONDS, this.options.now)
    // Both buckets checked before either is taken from: a refusal takes nothing.
    const refused = rate.msUntil(bytes) > 0 ? "rate" : day && day.msUntil(bytes) > 0 ? "day" : undefined
    if (refused) {
      this.forgetLater(user)
      return refused
    }
    rate.take(bytes)
    day?.take(bytes)
    return this.inFlight.hold(user, () => this.forgetLater(user))
  }

  /** Takes one of the user's upload openings of this minute; false when they are used up. */
  open(user: UserId): boolean {
    const taken = bucket(this.openings, user, this.options.uploadsPerMinute, 60, this.options.now).take()
    this.forgetLater(user)
    return taken
  }

  /** Users with buckets or chunks in flight (what the quota holds in memory). */
  get trackedUsers(): number {
    return new Set([
      ...this.rates.keys(),
      ...this.days.keys(),
      ...this.openings.keys(),
      ...this.inFlight.keys(),
    ]).size
  }

  /**
   * Drops the user's buckets once they are full again (forgetting them then
   * changes nothing) and no chunk of theirs is in flight (its release calls
   * here again).
   */
  private forgetLater(user: UserId): void {
    if (this.forgetting.has(user) || this.inFlight.has(user)) return
    const wait = Math.max(
      this.rates.get(user)?.msUntilFull() ?? 0,
      this.days.get(user)?.msUntilFull() ?? 0,
      this.openings.get(user)?.msUntilFull() ?? 0,
    )
    if (wait === 0) {
      this.rates.delete(user)
      this.days.delete(user)
      this.openings.delete(user)
      return
    }
    const timer = setTimeout(() => {
      this.forgetting.delete(user)
      this.forgetLater(user)
    }, wait)
    timer.unref()
    this.forgetting.set(user, timer)
  }

  /** Milliseconds until `bytes` fit in the user's budgets (for Retry-After). */
  retryAfterMs(user: UserId, bytes: number): number {
    return Math.max(this.rates.get(user)?.msUntil(bytes) ?? 0, this.days.get(user)?.msUntil(bytes) ?? 0)
  }
}

const DAY_SECONDS = 24 * 60 * 60

/** The user's bucket of `amount` per `seconds` in `buckets`, made full when there is none. */
function bucket(
  buckets: Map<UserId, RateLimiter>,
  user: UserId,
  amount: number,
  seconds: number,
  now: (() => number) | undefined,
): RateLimiter {
  let found = buckets.get(user)
  if (!found) {
    found = new RateLimiter(amount / seconds, amount, now)
    buckets.set(user, found)
  }
  return found
}
