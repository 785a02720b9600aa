/** How long, by default, after logging a refusal of one kind and source, the next ones are only counted. */
export const LOG_THROTTLE_WINDOW_MS = 10_000

/** Most kinds and sources remembered at once; beyond, the oldest is forgotten (its next line is logged). */
const MAX_KEYS = 10_000

/**
 * At most one log line per key (a refusal's kind and who caused it) per
 * window; the lines held back are counted and the count goes with the next
 * line logged for that key. A client can make the relay refuse thousands of
 * things a second (connection attempts over a budget, frames from a banned
 * address); one line per refusal would let it fill the log's disk and spend
 * the relay's CPU on writing them. Metrics still count every refusal.
 *
 * Memory: one entry per key seen within the window, at most 10,000.
 */
export class LogThrottle {
  private readonly seen = new Map<string, { until: number; held: number }>()

  constructor(
    private readonly windowMs = LOG_THROTTLE_WINDOW_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Whether a line for `key` is to be logged now: undefined when it is held
   * back, else how many were held back since the last one (0 for the first).
   */
  admit(key: string): number | undefined {
    const now = this.now()
    const entry = this.seen.get(key)
    if (entry && entry.until > now) {
      entry.held++
      return undefined
    }
    const held = entry?.held ?? 0
    // Re-inserted: the map stays in the order of the keys' windows, oldest first.
    this.seen.delete(key)
    if (this.seen.size >= MAX_KEYS) this.forgetExpired(now)
    if (this.seen.size >= MAX_KEYS) this.seen.delete(this.seen.keys().next().value!)
    this.seen.set(key, { until: now + this.windowMs, held: 0 })
    return held
  }

  /** Keys remembered (for tests). */
  get size(): number {
    return this.seen.size
  }

  private forgetExpired(now: number): void {
    for (const [key, entry] of this.seen) {
      if (entry.until > now) return
      this.seen.delete(key)
    }
  }
}
