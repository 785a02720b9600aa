import { ErrorCode, ParleyError, parseUserId, type UserId } from "@parley/shared"
import { decodeJwt } from "jose"

/**
 * Where the client gets its token: a fixed string, or a function called before
 * every connection, again after the relay refuses a token (close 4401), and
 * ahead of each open connection's token expiry (the new token is sent over the
 * socket), so that it can hand out a fresh one.
 */
export type TokenSource = string | (() => string | Promise<string>)

/** Resolves a {@link TokenSource} to a token, as a typed error when it fails. */
export async function resolveToken(source: TokenSource, timeoutMs = TOKEN_TIMEOUT_MS): Promise<string> {
  try {
    const token = typeof source === "string" ? source : await withinTime(Promise.resolve(source()), timeoutMs)
    if (typeof token !== "string" || token.length === 0)
      throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token source returned no token")
    return token
  } catch (error) {
    if (error instanceof ParleyError) throw error
    // A token service that cannot be reached says nothing about the user's sign-in: an app that signs
    // the user out on UNAUTHORIZED did so on every network outage (an outside tester).
    if (unreachable(error))
      throw new ParleyError(ErrorCode.UNAVAILABLE, "the token source could not reach its server", {
        cause: error,
      })
    // Its own words too: "the token source failed" alone left an app developer reading `cause` (an outside tester).
    const why = error instanceof Error ? error.message : typeof error === "string" ? error : ""
    throw new ParleyError(ErrorCode.UNAUTHORIZED, `the token source failed${why ? `: ${why}` : ""}`, {
      cause: error,
    })
  }
}

/**
 * How long a token source may take before its call counts as failed
 * (`UNAVAILABLE`): a `fetch` lost in a network change never settles in a
 * browser, and every connection of the client waits on the call in flight
 * (before: "connecting" for good, until a reload).
 */
export const TOKEN_TIMEOUT_MS = 30_000

/** `promise`, or a rejection (UNAVAILABLE) once `ms` passed first. */
function withinTime<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new ParleyError(ErrorCode.UNAVAILABLE, `the token source did not answer within ${ms} ms`)),
      ms,
    )
  })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/**
 * Whether a token source's failure is the network's: `fetch` rejects with a
 * TypeError whose message names it ("Failed to fetch" in Chromium,
 * "NetworkError when attempting to fetch resource." in Firefox, "Load failed"
 * in Safari, "fetch failed" in Node), or the browser says it is offline.
 */
function unreachable(error: unknown): boolean {
  const offline = typeof navigator !== "undefined" && navigator.onLine === false
  return offline || (error instanceof TypeError && /fetch|network|load failed/i.test(error.message))
}

/**
 * The user a token names (its `sub` claim). The token is only decoded, not
 * verified: verifying is the relay's job, the client only needs to know who it is.
 */
export function userOfToken(token: string): UserId {
  let sub: unknown
  try {
    sub = decodeJwt(token).sub
  } catch (error) {
    throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token is not a JWT", { cause: error })
  }
  if (sub === undefined) throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token has no subject")
  return parseUserId(sub)
}

/** Refresh at least this long before a token expires, when its lifetime allows (half of it otherwise). */
const REFRESH_LEAD_MS = 60_000
/** ...and at least this share of its lifetime before, so that clock skew has room on long tokens. */
const REFRESH_LEAD_SHARE = 0.2

/**
 * When a token expires (`exp`, ms since the epoch), or undefined when it does
 * not say (no `exp`, or not a JWT): such a token is not refreshed ahead.
 */
export function expiryOfToken(token: string | undefined): number | undefined {
  if (token === undefined) return undefined
  try {
    const { exp } = decodeJwt(token)
    return typeof exp === "number" ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}

/**
 * How long from `now` until an open connection should refresh `token`: 20% of
 * its lifetime before it expires, but at least a minute before (or half the
 * lifetime, for tokens shorter than two minutes). Undefined when the token
 * has no `exp`.
 */
export function refreshDelay(token: string, now: number): number | undefined {
  const expiresAt = expiryOfToken(token)
  if (expiresAt === undefined) return undefined
  let issuedAt = now
  try {
    const { iat } = decodeJwt(token)
    if (typeof iat === "number" && iat * 1000 < expiresAt) issuedAt = Math.min(now, iat * 1000)
  } catch {}
  const lifetime = Math.max(0, expiresAt - issuedAt)
  const lead = Math.max(lifetime * REFRESH_LEAD_SHARE, Math.min(REFRESH_LEAD_MS, lifetime / 2))
  return Math.max(0, expiresAt - lead - now)
}
