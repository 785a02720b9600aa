import { createPublicKey, type KeyObject, randomBytes } from "node:crypto"
import { ErrorCode, ParleyError, parseUserId } from "@parley/shared"
import { createRemoteJWKSet, type JWTPayload, type JWTVerifyGetKey, jwtVerify, SignJWT } from "jose"
import type { Principal } from "./principal.js"

/** How tokens are verified: exactly one key source. */
export type AuthKey =
  | { readonly kind: "secret"; readonly secret: string }
  | { readonly kind: "public-key"; readonly pem: string }
  | { readonly kind: "jwks"; readonly url: string }

/** Token verification settings. */
export interface AuthOptions {
  readonly key: AuthKey
  /** Required `iss` claim, if set. */
  readonly issuer?: string
  /** Required `aud` claim, if set. */
  readonly audience?: string
}

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
 */
export class Authenticator {
  private readonly verifyKey: Uint8Array | KeyObject | JWTVerifyGetKey
  private readonly algorithms: string[] | undefined
  private readonly secret: Uint8Array | undefined

  constructor(private readonly options: AuthOptions) {
    const { key } = options
    if (key.kind === "secret") {
      this.secret = new TextEncoder().encode(key.secret)
      this.verifyKey = this.secret
      this.algorithms = ["HS256"]
    } else if (key.kind === "public-key") {
      const publicKey = createPublicKey(key.pem)
      this.verifyKey = publicKey
      this.algorithms = algorithmsFor(publicKey)
    } else {
      this.verifyKey = createRemoteJWKSet(new URL(key.url))
      this.algorithms = undefined
    }
  }

  /** A random secret for dev mode. */
  static randomSecret(): string {
    return randomBytes(32).toString("base64url")
  }

  /** Verifies `token`; throws UNAUTHORIZED when it is missing, invalid or expired. */
  async verify(token: string | null | undefined): Promise<Principal> {
    if (!token) throw new ParleyError(ErrorCode.UNAUTHORIZED, "a token is required")
    let payload: JWTPayload
    try {
      const result = await jwtVerify(token, this.verifyKey as Uint8Array, {
        ...(this.algorithms ? { algorithms: this.algorithms } : {}),
        ...(this.options.issuer ? { issuer: this.options.issuer } : {}),
        ...(this.options.audience ? { audience: this.options.audience } : {}),
        requiredClaims: ["sub"],
      })
      payload = result.payload
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error)
      throw new ParleyError(ErrorCode.UNAUTHORIZED, `invalid token: ${reason}`, { cause: error })
    }
    if (payload.role === SERVICE_ROLE) return { kind: "service", subject: String(payload.sub) }
    try {
      return { kind: "user", user: parseUserId(payload.sub) }
    } catch (error) {
      throw new ParleyError(ErrorCode.UNAUTHORIZED, "the token's subject is not a valid user id", {
        cause: error,
      })
    }
  }

  /** True when tokens can be minted here (an HS256 secret is configured). */
  get canMint(): boolean {
    return this.secret !== undefined
  }

  /** Mints a token (dev mode and tests). Only with an HS256 secret. */
  async mint(subject: string, options: { role?: string; expiresIn?: string | number } = {}): Promise<string> {
    if (!this.secret) throw new Error("minting tokens needs an HS256 secret")
    const jwt = new SignJWT(options.role ? { role: options.role } : {})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(subject)
      .setIssuedAt()
      .setExpirationTime(options.expiresIn ?? "24h")
    if (this.options.issuer) jwt.setIssuer(this.options.issuer)
    if (this.options.audience) jwt.setAudience(this.options.audience)
    return jwt.sign(this.secret)
  }
}
