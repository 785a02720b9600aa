/**
 * How many new Yjs client ids each user may still add to each document: a
 * token bucket per (document, user) holding up to `burst`, refilled by
 * `perDay` a day. An honest device opens one client id per session, so a
 * document gains a few a day from each of its users; every id stays in the
 * document for good and slows every later apply, so one user must not be able
 * to add tens of thousands.
 *
 * Kept in memory across document unloads (not across restarts). Only buckets
 * that are not full are kept; past `maxEntries` the oldest are dropped, which
 * only ever gives a user a full bucket again.
 */
export class ClientIdAllowance {
  private readonly buckets = new Map<string, { tokens: number; at: number }>()

  constructor(
    private readonly burst: number,
    private readonly perDay: number,
    private readonly now: () => number = Date.now,
    private readonly maxEntries = 100_000,
  ) {}

  /** True when `user` may still add `count` client ids to `document`. */
  allows(document: string, user: string, count: number): boolean {
    return count === 0 || this.tokens(`${document}\u0000${user}`, this.now()) >= count
  }

  /** Takes `count` ids for `user` in `document`; false (nothing taken) when fewer are left. */
  take(document: string, user: string, count: number): boolean {
    if (count === 0) return true
    const key = `${document}\u0000${user}`
    const now = this.now()
    const tokens = this.tokens(key, now)
    if (tokens < count) return false
    this.buckets.delete(key)
    this.buckets.set(key, { tokens: tokens - count, at: now })
    if (this.buckets.size > this.maxEntries) this.prune(now)
    return true
  }

  private tokens(key: string, now: number): number {
    const bucket = this.buckets.get(key)
    return bucket
      ? Math.min(this.burst, bucket.tokens + ((now - bucket.at) * this.perDay) / 86_400_000)
      : this.burst
  }

  private prune(now: number): void {
    for (const [key, b] of this.buckets) {
      if (b.tokens + ((now - b.at) * this.perDay) / 86_400_000 >= this.burst) this.buckets.delete(key)
    }
    for (const key of this.buckets.keys()) {
      if (this.buckets.size <= this.maxEntries) break
      this.buckets.delete(key)
    }
  }
}
