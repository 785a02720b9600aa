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
 * behind one address (a NAT, a proxy) do not share a budget; once a bad host
 * there spent it, the transport still lets in credentials the relay verified
 * before (see `WsTransport.knownCredential`), and only those.
 *
 * IPv6 addresses count per /64 (what one subscriber is typically given), so
 * that an attacker cannot get a fresh bucket per address. Memory: a bucket is
 * dropped once it has refilled (checked every 10 s at most, on use), and at
 * most 100,000 are kept (the oldest dropped first).
 */
export class AddressLimiter {
  private readonly buckets = new Map<string, RateLimiter>()
  private lastSweep: number

  /**
   * A bucket of `capacity` per address, refilled over `refillMs` (a minute
   * unless given: the failed verifications' budget; the requests' budget is
   * ten seconds' worth, refilled over ten seconds).
   */
  constructor(
    private readonly capacity: number,
    private readonly now: () => number = () => performance.now(),
    private readonly refillMs = 60_000,
  ) {
    this.lastSweep = now()
  }

  /** Addresses with a bucket (those that failed recently). */
  get size(): number {
    return this.buckets.size
  }

  /** False when `address` has no failed attempts left: refuse it before verifying anything. */
  allows(address: string): boolean {
    if (this.capacity <= 0) return true
    this.sweep()
    const bucket = this.buckets.get(keyOf(address))
    return bucket === undefined || bucket.available() >= 1
  }

  /** Seconds until `address` may try again (for `Retry-After`). */
  retryAfterSeconds(address: string): number {
    const bucket = this.buckets.get(keyOf(address))
    return bucket ? Math.max(1, Math.ceil(bucket.msUntil(1) / 1000)) : 0
  }

  /** Takes one from `address`'s bucket if it holds one; false when it is empty. */
  take(address: string): boolean {
    if (!this.allows(address)) return false
    this.failed(address)
    return true
  }

  /** Gives back one that {@link take} took from `address`. */
  giveBack(address: string): void {
    this.buckets.get(keyOf(address))?.give(1)
  }

  /** Takes one failed attempt of `address`. */
  failed(address: string): void {
    if (this.capacity <= 0) return
    this.sweep()
    const key = keyOf(address)
    let bucket = this.buckets.get(key)
    if (!bucket) {
      if (this.buckets.size >= MAX_ADDRESSES) this.buckets.delete(this.buckets.keys().next().value!)
      bucket = new RateLimiter((this.capacity * 1000) / this.refillMs, this.capacity, this.now)
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

/** What {@link AddressConnections} needs of a socket. */
export interface CountedSocket {
  once(event: "close", listener: () => void): unknown
  destroy(): void
}

/** A counted connection: waiting for a request (since when), or with one under way. */
interface Waiting {
  busy: boolean
  since: number
}

/**
 * Time a connection may wait for a request's headers before, at its
 * address's cap, it is the one closed to make room: honest clients send
 * theirs within a round trip, so only a stalled socket (or an idle
 * keep-alive) waits this long.
 */
export const EVICT_AFTER_MS = 2000

/**
 * How far past its cap an address may go while all of its connections are
 * recent: honest clients behind one address (a NAT, a benchmark) that
 * connect at once arrive faster than the relay reads their requests.
 */
export const BURST_FACTOR = 4

/**
 * Connections open at once per client address that do not belong to a user
 * yet: from the TCP accept until the connection becomes a WebSocket whose
 * token was verified and whose user was admitted (from there the per-user
 * limits count it). HTTP requests and their keep-alives, and upgrades whose
 * token is still being checked, all count. Without this, one address could
 * open sockets that never send a request (each held until the headers
 * timeout) until the relay ran out of connections for everyone else.
 *
 * At the cap, the address's connection that has waited longest for a request
 * (over {@link EVICT_AFTER_MS}) is closed to make room for the new one, so
 * that a client sharing an address with a host that holds stalled sockets
 * still gets in. When every connection of the address is recent or has a
 * request under way (a burst of honest clients), the new one is admitted
 * beyond the cap, up to {@link BURST_FACTOR} times it, and closed if it is
 * still waiting for a request after {@link EVICT_AFTER_MS} while the address
 * is over its cap: so an address holds at most the cap of connections that
 * wait longer than that. Beyond the burst, the new one is refused. Memory:
 * one entry per counted connection, and a timer per one over the cap.
 *
 * Behind a trusted proxy the cap is off (0): there every connection comes
 * from the proxy's address, and the proxy is where such a limit belongs; the
 * connections are still counted, for {@link makeRoom}.
 */
export class AddressConnections {
  /** Per address key, its counted connections: busy ones, and waiting ones in the order they began waiting. */
  private readonly open = new Map<string, Map<CountedSocket, Waiting>>()
  private readonly keys = new WeakMap<CountedSocket, string>()

  constructor(
    private readonly perAddress: number,
    private readonly evictAfterMs = EVICT_AFTER_MS,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Addresses with a connection counted. */
  get size(): number {
    return this.open.size
  }

  /**
   * Counts a new connection from `address`. At the address's cap, closes
   * the connection that has waited longest for a request, if it has waited
   * long enough, and counts the new one in its place; otherwise counts
   * nothing and answers false. `socket` releases its count when it closes,
   * or earlier through {@link identified}.
   */
  admit(socket: CountedSocket, address: string): boolean {
    const key = keyOf(address)
    let sockets = this.open.get(key)
    let over = false
    if (this.perAddress > 0 && sockets && sockets.size >= this.perAddress) {
      const stale = this.longestWaiting(sockets)
      if (stale) {
        this.release(stale)
        stale.destroy()
      } else if (sockets.size >= this.perAddress * BURST_FACTOR) return false
      else over = true
    }
    if (!sockets) {
      sockets = new Map()
      this.open.set(key, sockets)
    }
    sockets.set(socket, { busy: false, since: this.now() })
    this.keys.set(socket, key)
    socket.once("close", () => this.release(socket))
    if (over) setTimeout(() => this.expire(socket), this.evictAfterMs).unref()
    return true
  }

  /**
   * At the relay's connection cap: closes the connection that has waited
   * longest for a request (over {@link EVICT_AFTER_MS}) of the address that
   * holds the most, so that a new one from `newcomer` (a health check, a
   * user signing in) gets in; when none has waited that long, the
   * longest-waiting one of the address holding the most, if it holds more
   * than `newcomer` does; false when there is none (every counted connection
   * has a request under way, or is recent and its address holds no more). Users' sockets take at most the cap
   * less a reserve (`UserLedger.shareSockets`): without this, one address's
   * idle connections, within its own cap, held that reserve, and the relay
   * dropped `/healthz` and every newcomer at accept (an outside probe). One
   * scan of the addresses, only at the cap.
   */
  makeRoom(newcomer: string): boolean {
    let chosen: CountedSocket | undefined
    let most = 0
    // Past the newcomer's address's own count: it does not take from an address holding no more.
    let biggest: Map<CountedSocket, Waiting> | undefined
    const own = this.open.get(keyOf(newcomer))
    for (const sockets of this.open.values()) {
      if (sockets !== own && sockets.size > (biggest?.size ?? (own?.size ?? 0) + 1)) biggest = sockets
      if (sockets.size <= most) continue
      const stale = this.longestWaiting(sockets)
      if (!stale) continue
      chosen = stale
      most = sockets.size
    }
    // None has waited long: the address holding the most, more than the newcomer's, gives up its
    // longest-waiting one however recent (one host closing and reopening its connections before they
    // were 2 s old kept /healthz out: an outside probe).
    if (!chosen && biggest) chosen = this.longestWaiting(biggest, Number.NEGATIVE_INFINITY)
    if (!chosen) return false
    this.release(chosen)
    chosen.destroy()
    return true
  }

  /** A connection admitted over the cap: closed if it still waits for a request while the address is over. */
  private expire(socket: CountedSocket): void {
    const key = this.keys.get(socket)
    const sockets = key === undefined ? undefined : this.open.get(key)
    const entry = sockets?.get(socket)
    if (!entry || entry.busy || sockets!.size <= this.perAddress) return
    this.release(socket)
    socket.destroy()
  }

  /** A request's headers (or an upgrade's) arrived on `socket`: it is not waiting. */
  busy(socket: CountedSocket): void {
    const entry = this.entryOf(socket)
    if (entry) entry.busy = true
  }

  /** The response on `socket` ended: it waits for the next request (a keep-alive), from now. */
  idle(socket: CountedSocket): void {
    const key = this.keys.get(socket)
    const sockets = key === undefined ? undefined : this.open.get(key)
    if (!sockets?.has(socket)) return
    // Re-inserted: the waiting ones stay in the order they began waiting.
    sockets.delete(socket)
    sockets.set(socket, { busy: false, since: this.now() })
  }

  /** The connection now belongs to a user: the address no longer counts it. */
  identified(socket: CountedSocket): void {
    this.release(socket)
  }

  private longestWaiting(
    sockets: Map<CountedSocket, Waiting>,
    afterMs = this.evictAfterMs,
  ): CountedSocket | undefined {
    const before = this.now() - afterMs
    for (const [socket, entry] of sockets) {
      if (entry.busy) continue
      // The rest began waiting later.
      return entry.since <= before ? socket : undefined
    }
    return undefined
  }

  private entryOf(socket: CountedSocket): Waiting | undefined {
    const key = this.keys.get(socket)
    return key === undefined ? undefined : this.open.get(key)?.get(socket)
  }

  private release(socket: CountedSocket): void {
    const key = this.keys.get(socket)
    if (key === undefined) return
    this.keys.delete(socket)
    const sockets = this.open.get(key)
    sockets?.delete(socket)
    if (sockets?.size === 0) this.open.delete(key)
  }
}
