import type { UserId } from "@parley/shared"
import { RateLimiter } from "../rate-limit.js"

/** Per-user upload limits, counted over every connection and request of the user on this relay. */
export interface UploadQuotaOptions {
  /** Chunks one user may be sending at once. */
  readonly concurrent: number
  /** Bytes one user may upload per minute (a token bucket: a minute's worth may come in one burst). */
  readonly bytesPerMinute: number
  /** Uploads one user may open per minute (each is a stored session until it completes or expires). */
  readonly uploadsPerMinute: number
  readonly now?: () => number
}

/**
 * Counts what each user is uploading: chunks in flight and bytes per minute,
 * per user (not per socket or request: a user opening more connections gets
 * no more). Per relay: in a cluster each relay counts its own share.
 */
export class UploadQuota {
  private readonly inFlight = new Map<UserId, number>()
  private readonly rates = new Map<UserId, RateLimiter>()
  private readonly openings = new Map<UserId, RateLimiter>()

  constructor(private readonly options: UploadQuotaOptions) {}

  /**
   * Takes a slot and `bytes` of the user's budget: the release function (to
   * call once the chunk is done), or which limit the user is at, taking nothing.
   */
  take(user: UserId, bytes: number): (() => void) | "concurrent" | "rate" {
    const busy = this.inFlight.get(user) ?? 0
    if (busy >= this.options.concurrent) return "concurrent"
    let rate = this.rates.get(user)
    if (!rate) {
      const perSecond = this.options.bytesPerMinute / 60
      rate = new RateLimiter(perSecond, this.options.bytesPerMinute, this.options.now)
      this.rates.set(user, rate)
    }
    if (!rate.take(bytes)) return "rate"
    this.inFlight.set(user, busy + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const left = (this.inFlight.get(user) ?? 1) - 1
      if (left > 0) this.inFlight.set(user, left)
      else this.inFlight.delete(user)
      // Full buckets hold no state worth keeping: the map stays as large as the active uploaders.
      if (left <= 0 && rate.msUntilFull() === 0) this.rates.delete(user)
    }
  }

  /** Takes one of the user's upload openings of this minute; false when they are used up. */
  open(user: UserId): boolean {
    let rate = this.openings.get(user)
    if (!rate) {
      rate = new RateLimiter(
        this.options.uploadsPerMinute / 60,
        this.options.uploadsPerMinute,
        this.options.now,
      )
      this.openings.set(user, rate)
    }
    const taken = rate.take()
    if (rate.msUntilFull() === 0) this.openings.delete(user)
    return taken
  }

  /** Milliseconds until `bytes` fit in the user's budget (for Retry-After). */
  retryAfterMs(user: UserId, bytes: number): number {
    return this.rates.get(user)?.msUntil(bytes) ?? 0
  }
}
