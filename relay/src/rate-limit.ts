/** The default clock, one function for every bucket (a default written inline is a closure per bucket). */
const monotonicNow = (): number => performance.now()

/**
 * A token bucket: `perSecond` tokens a second on average, bursts up to `burst`.
 * `now` is injectable so that tests control time.
 */
export class RateLimiter {
  private tokens: number
  private last: number

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = monotonicNow,
  ) {
    this.tokens = burst
    this.last = now()
  }

  private refill(): void {
    const now = this.now()
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.perSecond)
    this.last = now
  }

  /**
   * Takes `cost` tokens (one frame by default); false, taking nothing, when
   * fewer are left (the caller is flooding). A cost above the burst never fits.
   */
  take(cost = 1): boolean {
    this.refill()
    if (this.tokens < cost) return false
    this.tokens -= cost
    return true
  }

  /**
   * Takes `cost` tokens as {@link take} does, except that a cost above the
   * burst, which `take` never fits, is taken from a full bucket and leaves it
   * in debt until the rate has paid for it: for one request that may
   * honestly ask more than a burst (a group created with more members than a
   * minute's budget), which `take` would refuse as retryable for ever.
   */
  takeWhole(cost: number): boolean {
    this.refill()
    if (this.tokens < Math.min(cost, this.burst)) return false
    this.tokens -= cost
    return true
  }

  /** Gives back `cost` tokens taken for something that was then not done. */
  give(cost: number): void {
    this.refill()
    this.tokens = Math.min(this.burst, this.tokens + cost)
  }

  /**
   * Spends `cost` tokens that were taken elsewhere (another relay of a
   * cluster, for the same user): the bucket may fall to minus its burst, so
   * that what the user spends everywhere together is held to the rate.
   */
  spend(cost: number): void {
    this.refill()
    this.tokens = Math.max(-this.burst, this.tokens - cost)
  }

  /** Tokens available now. */
  available(): number {
    this.refill()
    return this.tokens
  }

  /** Milliseconds until `cost` tokens are available (0 when they are). */
  msUntil(cost: number): number {
    this.refill()
    if (this.tokens >= cost) return 0
    return this.perSecond > 0 ? Math.ceil(((cost - this.tokens) / this.perSecond) * 1000) : Infinity
  }

  /** Milliseconds until the bucket is full again (0 when it is): how long its state still matters. */
  msUntilFull(): number {
    this.refill()
    if (this.tokens >= this.burst) return 0
    return this.perSecond > 0 ? Math.ceil(((this.burst - this.tokens) / this.perSecond) * 1000) : Infinity
  }
}
