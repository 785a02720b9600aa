import { isIPv6 } from "node:net"
import { RateLimiter } from "./rate-limit.js"

/** Most client addresses with a bucket at once; beyond, the oldest bucket is dropped. */
const MAX_ADDRESSES = 100_000
/** How often, at most, buckets that have refilled are dropped. */
const SWEEP_EVERY_MS = 10_000

/**
 * Failed token verifications per client address, before the user is known:
 * a bucket of `perMinute` per address, refilled over a minute. A connection
 * attempt from an address whose bucket is empty is refused before its token
 * is verified; each attempt whose token fails takes one. Attempts with a
 * valid token take nothing (they are limited per user), so many honest users
 * behind one address (a NAT, a proxy) do not share a budget.
 *
 * IPv6 addresses count per /64 (what one subscriber is typically given), so
 * that an attacker cannot get a fresh bucket per address. Memory: a bucket is
 * dropped once it has refilled (checked every 10 s at most, on use), and at
 * most 100,000 are kept (the oldest dropped first).
 */
export class AddressLimiter {
  private readonly buckets = new Map<string, RateLimiter>()
  private lastSweep: number

  constructor(
    private readonly perMinute: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.lastSweep = now()
  }

  /** Addresses with a bucket (those that failed recently). */
  get size(): number {
    return this.buckets.size
  }

  /** False when `address` has no failed attempts left: refuse it before verifying anything. */
  allows(address: string): boolean {
    if (this.perMinute <= 0) return true
    this.sweep()
    const bucket = this.buckets.get(keyOf(address))
    return bucket === undefined || bucket.available() >= 1
  }

  /** Seconds until `address` may try again (for `Retry-After`). */
  retryAfterSeconds(address: string): number {
    const bucket = this.buckets.get(keyOf(address))
    return bucket ? Math.max(1, Math.ceil(bucket.msUntil(1) / 1000)) : 0
  }

  /** Takes one failed attempt of `address`. */
  failed(address: string): void {
    if (this.perMinute <= 0) return
    this.sweep()
    const key = keyOf(address)
    let bucket = this.buckets.get(key)
    if (!bucket) {
      if (this.buckets.size >= MAX_ADDRESSES) this.buckets.delete(this.buckets.keys().next().value!)
      bucket = new RateLimiter(this.perMinute / 60, this.perMinute, this.now)
      this.buckets.set(key, bucket)
    }
    bucket.take(1)
  }

  private sweep(): void {
    const now = this.now()
    if (now - this.lastSweep < SWEEP_EVERY_MS) return
    this.lastSweep = now
    for (const [key, bucket] of this.buckets) if (bucket.msUntilFull() === 0) this.buckets.delete(key)
  }
}

/** The bucket key of a client address: the address, or its /64 for IPv6 (IPv4-mapped ones as IPv4). */
export function keyOf(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  if (mapped) return mapped[1]!
  if (!isIPv6(address)) return address
  return `${expandIPv6(address).slice(0, 4).join(":")}::/64`
}

/** The eight groups of an IPv6 address, `::` expanded. */
function expandIPv6(address: string): string[] {
  const [head, tail] = address.split("::") as [string, string | undefined]
  const left = head ? head.split(":") : []
  const right = tail ? tail.split(":") : []
  const zeros = tail === undefined ? [] : Array(8 - left.length - right.length).fill("0")
  return [...left, ...zeros, ...right].map((g) => g.toLowerCase().replace(/^0+(?=.)/, ""))
}
