import { createHash, createPublicKey, type KeyObject, randomBytes } from "node:crypto"
import { ErrorCode, ParleyError, parseUserId } from "@parley/shared"
import { decodeJwt, type JWTPayload, type JWTVerifyGetKey, jwtVerify, SignJWT } from "jose"
import { type Principal, SERVICE_PARTICIPANT_PREFIX } from "./principal.js"
import { type KeySetEvents, remoteKeySet } from "./remote-key-set.js"
import { credentialsVerified } from "./request-scope.js"

/** How tokens are verified: exactly one key source. */
export type AuthKey =
  | { readonly kind: "secret"; readonly secret: string }
  | { readonly kind: "public-key"; readonly pem: string }
  | { readonly kind: "jwks"; readonly url: string }

/** Token verification settings. */
export interface AuthOptions {
  /** How the app's tokens are verified; none on a dev relay that only takes its own dev tokens. */
  readonly key?: AuthKey
  /** Required `iss` claim, if set. */
  readonly issuer?: string
  /** Required `aud` claim, if set. */
  readonly audience?: string
  /** Accept tokens without an `exp` claim (refused by default: a leaked token would never die). */
  readonly allowTokensWithoutExp?: boolean
  /**
   * Refuse tokens whose `exp` is further ahead than this (ms; 0 = no cap), so
   * that an `exp` a hundred years away does not stand in for "never".
   */
  readonly maxTokenLifetimeMs?: number
  /**
   * Dev mode: the secret generated at start for `/dev/token`. Tokens carrying
   * {@link DEV_TOKEN_ISSUER} are verified with it (and only with it); the app's
   * key never signs a dev token.
   */
  readonly devSecret?: string
  /** Told when a JWKS (`key.kind === "jwks"`) cannot be fetched (the relay logs it). */
  readonly keySet?: KeySetEvents
}

/** A verified token: who it names, until when, and whether dev mode minted it. */
export interface VerifiedToken {
  readonly principal: Principal
  /** The `exp` claim in ms since the epoch; undefined for a token without one (only when allowed). */
  readonly expiresAt: number | undefined
  /** Minted by this relay's `/dev/token`. */
  readonly dev: boolean
}

/** The `iss` of dev tokens: how the relay tells them apart before verifying. */
export const DEV_TOKEN_ISSUER = "parley-dev"

/** Lifetime of dev tokens. */
const DEV_TOKEN_LIFETIME = "1h"

/** Clock skew forgiven when a token's `exp` is checked against the lifetime cap. */
const LIFETIME_SKEW_MS = 60_000

/**
 * How long a verified token is taken on trust before it is verified again
 * (never past its `exp`): short, so that a key removed from a JWKS stops
 * tokens it signed within two minutes (this, and the key set's own copy:
 * see `remote-key-set.ts`).
 */
const VERIFIED_TOKEN_TTL_MS = 60_000

/** Verified tokens kept at once, and the longest kept (at most ~16 MiB of token text). */
const VERIFIED_TOKENS_KEPT = 4096
const VERIFIED_TOKEN_MAX_CHARS = 4096

/**
 * Tokens remembered as verified once (see {@link Authenticator.verifiedBefore}), by a SHA-256 of
 * their text: about 100 bytes each, so at most ~1.6 MiB.
 */
const TOKENS_SEEN_KEPT = 16_384

/** How long a token without `exp` (only when allowed) is remembered as verified once, in ms. */
const SEEN_WITHOUT_EXP_MS = 60 * 60_000

/** The key of `token` among the tokens seen: its SHA-256, not its text (a credential). */
const seenKey = (token: string): string => createHash("sha256").update(token).digest("base64url")

/** The token claim value that marks a read-only service token. */
export const SERVICE_ROLE = "service"

const algorithmsFor = (key: KeyObject): string[] => {
  switch (key.asymmetricKeyType) {
    case "rsa":
      return ["RS256", "RS384", "RS512"]
    case "rsa-pss":
      return ["PS256", "PS384", "PS512"]
    case "ec":
      return ["ES256", "ES384", "ES512"]
    case "ed25519":
    case "ed448":
      return ["EdDSA"]
    default:
      throw new Error(`unsupported public key type ${key.asymmetricKeyType}`)
  }
}

/**
 * Verifies signed JWTs (jose) and turns them into principals: the subject is
 * the user id; a `role: "service"` claim makes a read-only service principal.
 * Every token must expire (unless allowed otherwise), within the lifetime cap.
 */
export class Authenticator {
  private readonly verifyKey: Uint8Array | KeyObject | JWTVerifyGetKey | undefined
  private readonly algorithms: string[] | undefined
  private readonly devKey: Uint8Array | undefined
  /** Tokens verified lately, by their text, with when to verify them again (see {@link verifyToken}). */
  private readonly verified = new Map<string, { readonly token: VerifiedToken; readonly until: number }>()
  /**
   * Tokens this relay verified, by {@link seenKey}, with when they expire (see
   * {@link verifiedBefore}); the oldest verification goes first past
   * {@link TOKENS_SEEN_KEPT}.
   */
  private readonly seen = new Map<string, number>()

  constructor(private readonly options: AuthOptions) {
    const { key } = options
    if (!key && !options.devSecret) throw new Error("no way to verify tokens: give a key or a dev secret")
    if (options.devSecret) this.devKey = new TextEncoder().encode(options.devSecret)
    if (key?.kind === "secret") {
      this.verifyKey = new TextEncoder().encode(key.secret)
      this.algorithms = ["HS256"]
    } else if (key?.kind === "public-key") {
      const publicKey = createPublicKey(key.pem)
      this.verifyKey = publicKey
      this.algorithms = algorithmsFor(publicKey)
    } else if (key?.kind === "jwks") {
      this.verifyKey = remoteKeySet(new URL(key.url), options.keySet)
      this.algorithms = undefined
    }
  }

  /** A random secret (dev mode's own). */
  static randomSecret(): string {
    return randomBytes(32).toString("base64url")
  }

  /** Verifies `token`; throws UNAUTHORIZED when it is missing, invalid or expired. */
  async verify(token: string | null | undefined): Promise<Principal> {
    return (await this.verifyToken(token)).principal
  }

  /**
   * Verifies `token` and says until when it holds; throws UNAUTHORIZED when it
   * is missing, invalid, expired, without `exp` (unless allowed) or expiring
   * beyond the lifetime cap.
   */
  async verifyToken(token: string | null | undefined): Promise<VerifiedToken> {
    if (!token) throw new ParleyError(ErrorCode.UNAUTHORIZED, "a token is required")
    // A signature check costs 0.1-0.3 ms, far more than the frame or request carrying the token: the
    // same token presented again (every channel of a socket, every refresh, every API call of a
    // device) is verified once, for a short while and never past its expiry.
    const now = Date.now()
    const known = this.verified.get(token)
    if (known && known.until > now) {
      credentialsVerified()
      return known.token
    }
    if (known) this.verified.delete(token)
    let fresh: VerifiedToken
    try {
      fresh = await this.verifyFresh(token)
    } catch (error) {
      // A token that no longer verifies (its key taken out of the JWKS, say) is not let past a lock again;
      // one that could not be verified for now (the key set out of reach) may still be good.
      if (this.seen.size > 0 && !unavailable(error)) this.seen.delete(seenKey(token))
      throw error
    }
    credentialsVerified()
    this.remember(token, fresh.expiresAt ?? now + SEEN_WITHOUT_EXP_MS)
    if (token.length <= VERIFIED_TOKEN_MAX_CHARS) {
      if (this.verified.size >= VERIFIED_TOKENS_KEPT) {
        // The oldest entry goes (a Map keeps insertion order).
        const oldest = this.verified.keys().next()
        if (!oldest.done) this.verified.delete(oldest.value)
      }
      const until = Math.min(fresh.expiresAt ?? Number.POSITIVE_INFINITY, now + VERIFIED_TOKEN_TTL_MS)
      this.verified.set(token, { token: fresh, until })
    }
    return fresh
  }

  /**
   * Who `token` names, when it was verified lately and still holds (see
   * {@link verifyToken}'s cache); undefined otherwise. Costs a map lookup:
   * for refusing a user over a budget before anything else is done for them.
   */
  knownPrincipal(token: string | null | undefined): Principal | undefined {
    if (!token) return undefined
    const known = this.verified.get(token)
    return known && known.until > Date.now() ? known.token.principal : undefined
  }

  /**
   * True when this relay verified exactly this token before (since it
   * started, at most {@link TOKENS_SEEN_KEPT} tokens back) and it has not
   * expired. Costs a SHA-256 of the token and a map lookup, no signature
   * check: for letting a user in from an address whose failed verifications
   * are spent, where an unknown token is refused unverified (see
   * `AddressLimiter`). The token is still verified after that, as any other.
   */
  verifiedBefore(token: string | null | undefined): boolean {
    if (!token || this.seen.size === 0) return false
    const key = seenKey(token)
    const expiresAt = this.seen.get(key)
    if (expiresAt === undefined) return false
    if (expiresAt > Date.now()) return true
    this.seen.delete(key)
    return false
  }

  /** Remembers `token` as verified until `expiresAt` (see {@link verifiedBefore}). */
  private remember(token: string, expiresAt: number): void {
    const key = seenKey(token)
    // Deleted first, so a token verified again counts as the newest (a Map keeps insertion order).
    if (!this.seen.delete(key) && this.seen.size >= TOKENS_SEEN_KEPT) {
      const oldest = this.seen.keys().next()
      if (!oldest.done) this.seen.delete(oldest.value)
    }
    this.seen.set(key, expiresAt)
  }

  private async verifyFresh(token: string): Promise<VerifiedToken> {
    // Routed by its unverified issuer, then verified with that key only: a dev token can never
    // pass as an app token (or the reverse), whatever it claims.
    const dev = this.devKey !== undefined && claimedIssuer(token) === DEV_TOKEN_ISSUER
    let payload: JWTPayload
    try {
      if (dev) {
        payload = (
          await jwtVerify(token, this.devKey!, {
            algorithms: ["HS256"],
            issuer: DEV_TOKEN_ISSUER,
            requiredClaims: ["sub"],
          })
        ).payload
      } else {
        if (!this.verifyKey)
          throw new ParleyError(
            ErrorCode.UNAUTHORIZED,
            "this relay takes only its own dev tokens (it was started without an --auth-* key)",
          )
        payload = (
          await jwtVerify(token, this.verifyKey as Uint8Array, {
            ...(this.algorithms ? { algorithms: this.algorithms } : {}),
            ...(this.options.issuer ? { issuer: this.options.issuer } : {}),
            ...(this.options.audience ? { audience: this.options.audience } : {}),
            requiredClaims: ["sub"],
          })
        ).payload
      }
    } catch (error) {
      if (error instanceof ParleyError) throw error
      throw new ParleyError(ErrorCode.UNAUTHORIZED, whyRefused(error), { cause: error })
    }
    const expiresAt = typeof payload.exp === "number" ? payload.exp * 1000 : undefined
    if (expiresAt === undefined && !this.options.allowTokensWithoutExp)
      throw new ParleyError(ErrorCode.UNAUTHORIZED, "tokens must expire (no exp claim)")
    const cap = this.options.maxTokenLifetimeMs ?? 0
    if (expiresAt !== undefined && cap > 0 && expiresAt - Date.now() > cap + LIFETIME_SKEW_MS)
      throw new ParleyError(
        ErrorCode.UNAUTHORIZED,
        `the token's lifetime exceeds ${Math.round(cap / 1000)} s (it expires too far ahead)`,
      )
    return { principal: principalOf(payload), expiresAt, dev }
  }

  /** True when dev tokens can be minted here (dev mode). */
  get canMintDev(): boolean {
    return this.devKey !== undefined
  }

  /**
   * Mints a dev token (dev mode only): signed with the dev secret, never with
   * the app's key, and marked with `iss` {@link DEV_TOKEN_ISSUER}. `name` and
   * `picture` become the claims of the same names (the SDK's default profile).
   */
  async mintDev(
    subject: string,
    options: { role?: string; name?: string; picture?: string } = {},
  ): Promise<string> {
    if (!this.devKey) throw new Error("minting tokens needs dev mode")
    const claims = {
      ...(options.role ? { role: options.role } : {}),
      ...(options.name ? { name: options.name } : {}),
      ...(options.picture ? { picture: options.picture } : {}),
    }
    return new SignJWT(claims)
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(subject)
      .setIssuer(DEV_TOKEN_ISSUER)
      .setIssuedAt()
      .setExpirationTime(DEV_TOKEN_LIFETIME)
      .sign(this.devKey)
  }
}

/** True when `error` says a token could not be verified for now (retryable), not that it is bad. */
export function unavailable(error: unknown): boolean {
  return error instanceof ParleyError && error.code === ErrorCode.UNAVAILABLE
}

/** True when two principals are the same user, or the same service: a refreshed token may not change who. */
export function samePrincipal(a: Principal, b: Principal): boolean {
  if (a.kind === "user" && b.kind === "user") return a.user === b.user
  if (a.kind === "service" && b.kind === "service") return a.subject === b.subject
  return false
}

/**
 * Why jose refused a token, in words the client is told (the close reason of
 * a refused connect, the error frame of a refused refresh): what the app's
 * token must change, and nothing of the relay's keys, settings or users.
 * jose's own messages name its internals ("JWSInvalid", "Compact JWS").
 */
function whyRefused(error: unknown): string {
  const { code, claim, reason } = (error ?? {}) as { code?: unknown; claim?: unknown; reason?: unknown }
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return claim === "exp" ? "the token expired" : `the token's ${String(claim)} claim is too old`
    case "ERR_JWT_CLAIM_VALIDATION_FAILED":
      if (reason === "missing") return `the token has no ${String(claim)} claim`
      if (claim === "aud") return "the token's audience (aud) is wrong"
      if (claim === "iss") return "the token's issuer (iss) is wrong"
      if (claim === "nbf") return "the token is not valid yet (nbf)"
      return `the token's ${String(claim)} claim is invalid`
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
    case "ERR_JWKS_NO_MATCHING_KEY":
      return "the token's signature is invalid"
    case "ERR_JOSE_ALG_NOT_ALLOWED":
    case "ERR_JOSE_NOT_SUPPORTED":
      return "the token's signing algorithm (alg) is not accepted"
    case "ERR_JWS_INVALID":
    case "ERR_JWT_INVALID":
      return "the token is not a signed JWT"
    default:
      // Anything else (the key set could not be fetched, ...) is the relay's to log, not the client's to read.
      return "the token could not be verified"
  }
}

function claimedIssuer(token: string): unknown {
  try {
    return decodeJwt(token).iss
  } catch {
    return undefined
  }
}

function principalOf(payload: JWTPayload): Principal {
  if (payload.role === SERVICE_ROLE) return { kind: "service", subject: String(payload.sub) }
  if (typeof payload.sub === "string" && payload.sub.startsWith(SERVICE_PARTICIPANT_PREFIX))
    throw new ParleyError(
      ErrorCode.UNAUTHORIZED,
      `subjects starting with "${SERVICE_PARTICIPANT_PREFIX}" are reserved for API keys' services`,
    )
  try {
    return { kind: "user", user: parseUserId(payload.sub) }
  } catch (error) {
    throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token's subject is not a valid user id", {
      cause: error,
    })
  }
}
