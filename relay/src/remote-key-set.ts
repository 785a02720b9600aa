import { ErrorCode, ParleyError } from "@parley/shared"
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  type JSONWebKeySet,
  type JWKSCacheInput,
  type JWTVerifyGetKey,
  errors as joseErrors,
  jwksCache,
} from "jose"

/** What a {@link RemoteKeySet} tells whoever started it (the relay logs it). */
export interface KeySetEvents {
  /** The key set could not be fetched; `stale`: the keys fetched before are used meanwhile. */
  readonly onUnreachable?: (error: unknown, stale: boolean) => void
}

/**
 * Whether jose failed to *fetch* the key set (a timeout, a network error, a
 * status other than 200, a body that is not a key set), as opposed to
 * finding the token bad: the token may well be good, so the relay must not
 * tell its client to get a new one.
 */
export function keySetUnreachable(error: unknown): boolean {
  if (error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid) return true
  if (error instanceof joseErrors.JOSEError)
    // jose's generic error is what it throws for a non-200 answer or a body that is not JSON.
    return error.code === "ERR_JOSE_GENERIC"
  // fetch itself rejects with a TypeError ("fetch failed") when the host cannot be reached.
  return error instanceof TypeError
}

/** How old jose's copy of the key set may grow before a verification fetches it again (jose's default is 10 minutes). */
export const KEY_SET_MAX_AGE_MS = 60_000
/** After a failed fetch, how long verifications use the keys fetched last without trying again (each try may wait 5 s). */
export const KEY_SET_RETRY_MS = 30_000
/** Longest the keys fetched last stand in for a key set that cannot be fetched: a key revoked meanwhile dies then at the latest. */
export const KEY_SET_STALE_MS = 60 * 60_000
/** While no key set was ever fetched, how often a fetch is tried (every connection meanwhile is refused at once). */
export const KEY_SET_FIRST_RETRY_MS = 5_000
/** Largest key set body read: a set is a few KB; a 200 MB answer was parsed and kept whole (an outside probe). */
export const MAX_KEY_SET_BYTES = 1024 * 1024

/**
 * `fetch`, with the body read up to {@link MAX_KEY_SET_BYTES} (jose reads
 * whatever comes, within its timeout); beyond, the set counts as one that
 * cannot be fetched (the keys fetched last stand in).
 */
async function boundedFetch(url: string, init: RequestInit): Promise<Response> {
  const response = await fetch(url, init)
  const tooLarge = () => new joseErrors.JWKSInvalid(`the key set is larger than ${MAX_KEY_SET_BYTES} bytes`)
  if (Number(response.headers.get("content-length") ?? 0) > MAX_KEY_SET_BYTES) {
    await response.body?.cancel().catch(() => undefined)
    throw tooLarge()
  }
  const chunks: Uint8Array[] = []
  let size = 0
  if (response.body) {
    const reader = response.body.getReader()
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      size += value.byteLength
      if (size > MAX_KEY_SET_BYTES) {
        await reader.cancel().catch(() => undefined)
        throw tooLarge()
      }
      chunks.push(value)
    }
  }
  return new Response(Buffer.concat(chunks), { status: response.status, headers: response.headers })
}

/**
 * A JWKS fetched from `url` by jose's `createRemoteJWKSet`, made to survive
 * the key set's host being down without outliving its revocations:
 *
 * - jose's copy is fetched again once a minute old (not its default 10), so
 *   a key taken out of the set stops verifying new tokens within a minute
 *   or so (tokens verified lately stay verified a minute: see `auth.ts`);
 * - while the set cannot be fetched, the keys fetched last keep verifying
 *   for at most {@link KEY_SET_STALE_MS} after that fetch, so that a JWKS
 *   host down for a while does not lock every user out, nor a revoked key
 *   live as long as an outage someone can cause; a fetch is tried again at
 *   most every {@link KEY_SET_RETRY_MS} meanwhile (jose waits up to 5 s for
 *   each try), every {@link KEY_SET_FIRST_RETRY_MS} while none was ever
 *   fetched (a relay started during the identity provider's outage asked it
 *   once per connection);
 * - a token no known key signed, while the set cannot be fetched or within
 *   jose's 30 s before it fetches the set again for an unknown key id, may
 *   be signed by a key added since: that, keys too old, and a set never
 *   fetched are the retryable `UNAVAILABLE`, never `UNAUTHORIZED` (which
 *   tells a client its token is bad, and counts against its address);
 * - a body over {@link MAX_KEY_SET_BYTES} counts as a set that cannot be fetched.
 */
export function remoteKeySet(url: URL, events: KeySetEvents = {}): JWTVerifyGetKey {
  const now = () => Date.now()
  // jose writes each fetched set and when it fetched it here.
  const cache: { uat?: number; jwks?: JSONWebKeySet } = {}
  const remote = createRemoteJWKSet(url, {
    cacheMaxAge: KEY_SET_MAX_AGE_MS,
    [jwksCache]: cache as JWKSCacheInput,
    [customFetch]: boundedFetch,
  })
  let failedAt = Number.NEGATIVE_INFINITY
  let stale: { readonly keys: JSONWebKeySet; readonly verify: JWTVerifyGetKey } | undefined
  const unavailable = (message: string, cause: unknown) =>
    new ParleyError(ErrorCode.UNAVAILABLE, `${message}; try again shortly`, { cause })
  return async (header, token) => {
    let failure: unknown
    if (now() - failedAt >= (cache.jwks === undefined ? KEY_SET_FIRST_RETRY_MS : KEY_SET_RETRY_MS)) {
      const fetchedAt = cache.uat
      try {
        return await remote(header, token)
      } catch (error) {
        // No key of the set has the token's key id, and jose did not fetch the set again for it (it
        // fetched it within its 30 s cooldown): a key the identity provider just added, for all we know.
        if (error instanceof joseErrors.JWKSNoMatchingKey && cache.uat === fetchedAt)
          throw unavailable("the key that signed this token is not known to the relay yet", error)
        if (!keySetUnreachable(error)) throw error
        failedAt = now()
        failure = error
      }
    }
    const { jwks: keys, uat } = cache
    const usable = keys !== undefined && uat !== undefined && now() - uat <= KEY_SET_STALE_MS
    if (failure !== undefined) events.onUnreachable?.(failure, usable)
    if (!usable)
      throw unavailable(
        keys === undefined
          ? "the relay cannot fetch the key set that verifies tokens"
          : "the relay has not been able to fetch the key set that verifies tokens for too long",
        failure,
      )
    if (stale?.keys !== keys) stale = { keys, verify: createLocalJWKSet(keys) }
    try {
      return await stale.verify(header, token)
    } catch (error) {
      if (!(error instanceof joseErrors.JWKSNoMatchingKey)) throw error
      throw unavailable("the relay cannot fetch the key set that verifies this token", failure ?? error)
    }
  }
}
