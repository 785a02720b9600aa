import { ErrorCode, ParleyError } from "@parley/shared"
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  errors as joseErrors,
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

/**
 * A JWKS fetched from `url` (jose's `createRemoteJWKSet`, which caches it for
 * 10 minutes and fetches it again for a key id it does not know), made to
 * survive the key set's host being down:
 *
 * - jose fetches again once its copy is 10 minutes old and fails every token
 *   while that fetch fails, so a JWKS host down for longer would lock every
 *   user out; here the keys fetched last keep verifying meanwhile (a key
 *   taken out of the set is refused once the set can be fetched again);
 * - a token no known key signed, while the set cannot be fetched, may be
 *   signed by a key added since: that, and a set never fetched, is the
 *   retryable `UNAVAILABLE`, never `UNAUTHORIZED` (which tells a client its
 *   token is bad, and counts against its address).
 */
export function remoteKeySet(url: URL, events: KeySetEvents = {}): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(url)
  let stale: { readonly keys: JSONWebKeySet; readonly verify: JWTVerifyGetKey } | undefined
  return async (header, token) => {
    try {
      return await remote(header, token)
    } catch (error) {
      if (!keySetUnreachable(error)) throw error
      const keys = remote.jwks()
      events.onUnreachable?.(error, keys !== undefined)
      if (keys === undefined)
        throw new ParleyError(
          ErrorCode.UNAVAILABLE,
          "the relay cannot fetch the key set that verifies tokens; try again shortly",
          { cause: error },
        )
      if (stale?.keys !== keys) stale = { keys, verify: createLocalJWKSet(keys) }
      try {
        return await stale.verify(header, token)
      } catch (staleError) {
        if (!(staleError instanceof joseErrors.JWKSNoMatchingKey)) throw staleError
        throw new ParleyError(
          ErrorCode.UNAVAILABLE,
          "the relay cannot fetch the key set that verifies this token; try again shortly",
          { cause: error },
        )
      }
    }
  }
}
