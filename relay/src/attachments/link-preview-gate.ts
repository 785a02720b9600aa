import { type UserId, UserLimit } from "@parley/shared"
import { RateLimiter } from "../rate-limit.js"
import type { LinkPreview } from "./link-preview.js"

/**
 * What link previews may cost. One `GET /v1/link-preview` of a hundred bytes
 * buys up to four outbound fetches (redirects), half a megabyte read and
 * parsed, and may be held open for the fetch's timeout; it also sends traffic
 * to a third party of the caller's choosing. So fetches are counted per user
 * (rate and at once), capped for the relay, and answers are cached by URL.
 */
export interface LinkPreviewLimits {
  /** Pages fetched for one user per minute (a bucket of this many, refilled over a minute); cache hits are free. */
  readonly perUserPerMinute: number
  /** Pages being fetched for one user at once. */
  readonly perUserAtOnce: number
  /** Pages being fetched at once, all users together (beyond: 503). */
  readonly atOnce: number
  /** URLs whose answers are kept (the oldest is dropped beyond). */
  readonly cacheEntries: number
  /** How long a preview is kept, in ms. */
  readonly cacheMs: number
  /** How long a failure (no HTML, timeout, a private address) is kept, in ms. */
  readonly failureCacheMs: number
}

/** Defaults of {@link LinkPreviewLimits}. */
export const DEFAULT_LINK_PREVIEW_LIMITS: LinkPreviewLimits = {
  // A user pasting links as they chat needs a few a minute; 30 lets a conversation of links render.
  perUserPerMinute: 30,
  perUserAtOnce: 2,
  // Each fetch buffers up to 512 KiB: 8 MiB at most for the relay.
  atOnce: 16,
  cacheEntries: 512,
  cacheMs: 5 * 60_000,
  failureCacheMs: 60_000,
}

/** Why a preview was not fetched: a per-user limit (429) or the relay's cap (503), and when to retry. */
export interface PreviewRefusal {
  readonly refused: typeof UserLimit.linkPreviews | typeof UserLimit.linkPreviewsAtOnce | "busy"
  readonly retryAfterMs: number
}

interface Cached {
  readonly answer: Promise<LinkPreview>
  /** When the answer stops being served (`Infinity` while it is being fetched). */
  expires: number
}

interface UserFetches {
  atOnce: number
  readonly rate: RateLimiter | undefined
  forget: NodeJS.Timeout | undefined
}

/** The cache key of a URL: its normalised form when it parses (the previewer refuses it otherwise). */
function keyOf(url: string): string {
  try {
    return new URL(url).href
  } catch {
    return url
  }
}

/**
 * Link previews within {@link LinkPreviewLimits}: an answer (or failure)
 * cached for the URL is served without fetching; requests for a URL being
 * fetched wait for that one fetch; any other fetch takes one of the user's
 * per-minute budget and one of their slots at once, and one of the relay's.
 * A user's entry is dropped once they fetch nothing and their budget refilled.
 */
export class LinkPreviewGate {
  private readonly cache = new Map<string, Cached>()
  private readonly users = new Map<UserId, UserFetches>()
  private fetching = 0

  constructor(
    private readonly fetchPreview: (url: string) => Promise<LinkPreview>,
    readonly limits: LinkPreviewLimits = DEFAULT_LINK_PREVIEW_LIMITS,
    /** Told of every refusal by a per-user limit (metrics, logs). */
    private readonly onLimit: (limit: UserLimit, user: UserId) => void = () => {},
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Pages being fetched now, all users together. */
  get inFlight(): number {
    return this.fetching
  }

  /** Users with an entry (fetching, or whose budget is refilling). */
  get trackedUsers(): number {
    return this.users.size
  }

  /** The preview of `url` for `user`, or why it was not fetched; rejects as the fetch does (a `ParleyError`). */
  async preview(user: UserId, url: string): Promise<LinkPreview | PreviewRefusal> {
    const key = keyOf(url)
    const cached = this.cache.get(key)
    if (cached && cached.expires > this.now()) return { ...(await cached.answer), url }
    if (cached) this.cache.delete(key)
    const entry = this.entry(user)
    if (entry.atOnce >= this.limits.perUserAtOnce) {
      this.onLimit(UserLimit.linkPreviewsAtOnce, user)
      this.release(user, entry)
      // A fetch ends within its timeout: a second is a fair guess of when a slot frees.
      return { refused: UserLimit.linkPreviewsAtOnce, retryAfterMs: 1000 }
    }
    if (this.fetching >= this.limits.atOnce) {
      this.release(user, entry)
      return { refused: "busy", retryAfterMs: 1000 }
    }
    if (entry.rate && !entry.rate.take(1)) {
      this.onLimit(UserLimit.linkPreviews, user)
      this.release(user, entry)
      return { refused: UserLimit.linkPreviews, retryAfterMs: entry.rate.msUntil(1) }
    }
    entry.atOnce++
    this.fetching++
    const answer = this.fetchPreview(url)
    const stored: Cached = { answer, expires: Number.POSITIVE_INFINITY }
    this.remember(key, stored)
    const settled = (ttl: number) => {
      entry.atOnce--
      this.fetching--
      stored.expires = this.now() + ttl
      this.release(user, entry)
    }
    answer.then(
      () => settled(this.limits.cacheMs),
      () => settled(this.limits.failureCacheMs),
    )
    return { ...(await answer), url }
  }

  private remember(key: string, cached: Cached): void {
    this.cache.set(key, cached)
    if (this.cache.size <= this.limits.cacheEntries) return
    // The oldest entry goes (Map keeps insertion order); one being fetched stays until it settles.
    for (const [old, value] of this.cache) {
      if (this.cache.size <= this.limits.cacheEntries) break
      if (value.expires !== Number.POSITIVE_INFINITY) this.cache.delete(old)
    }
  }

  private entry(user: UserId): UserFetches {
    let entry = this.users.get(user)
    if (!entry) {
      const perMinute = this.limits.perUserPerMinute
      entry = {
        atOnce: 0,
        rate: perMinute > 0 ? new RateLimiter(perMinute / 60, perMinute, this.now) : undefined,
        forget: undefined,
      }
      this.users.set(user, entry)
    }
    clearTimeout(entry.forget)
    entry.forget = undefined
    return entry
  }

  /** Drops the user's entry once nothing of it matters (nothing fetching, the budget full again). */
  private release(user: UserId, entry: UserFetches): void {
    if (entry.atOnce > 0 || entry.forget) return
    const wait = entry.rate?.msUntilFull() ?? 0
    if (wait === 0) {
      this.users.delete(user)
      return
    }
    entry.forget = setTimeout(() => {
      entry.forget = undefined
      this.release(user, entry)
    }, wait)
    entry.forget.unref()
  }
}
