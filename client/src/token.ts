import { ErrorCode, ParleyError, parseUserId, type UserId } from "@parley/shared"
import { decodeJwt } from "jose"

/**
 * Where the client gets its token: a fixed string, or a function called before
 * every connection and again after the relay refuses a token (close 4401), so
 * that it can hand out a fresh one.
 */
export type TokenSource = string | (() => string | Promise<string>)

/** Resolves a {@link TokenSource} to a token, as a typed error when it fails. */
export async function resolveToken(source: TokenSource): Promise<string> {
  try {
    const token = typeof source === "string" ? source : await source()
    if (typeof token !== "string" || token.length === 0)
      throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token source returned no token")
    return token
  } catch (error) {
    if (error instanceof ParleyError) throw error
    throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token source failed", { cause: error })
  }
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
