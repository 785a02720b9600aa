import {
  CloseCode,
  ErrorCode,
  encodeError,
  encodeTokenAccepted,
  isTokenRefresh,
  ParleyError,
  readFrame,
  toParleyError,
} from "@parley/shared"
import { type Authenticator, samePrincipal, unavailable, type VerifiedToken } from "./auth.js"
import type { Deadlines, Due } from "./deadlines.js"
import type { Logger } from "./log.js"
import type { RelayMetrics } from "./metrics.js"
import { describePrincipal } from "./principal.js"
import type { UserLedger } from "./user-limits.js"

/** Longest token a refresh may carry: about what fits in the URL a connection opens with. */
export const MAX_REFRESH_TOKEN_BYTES = 16 * 1024

/** What every lease of a transport shares (one object, not one per socket). */
export interface LeaseContext {
  readonly auth: Authenticator
  /** The transport's logger (a lease adds its `doc` to what it logs, without a child logger per socket). */
  readonly log: Logger
  readonly metrics: RelayMetrics
  /** Where the expiries wait: one timer for every socket's lease. */
  readonly deadlines: Deadlines
  /**
   * The per-user limits: a refresh costs a token check and an answer, like
   * a connection attempt's, and pays from the same budget.
   */
  readonly users: UserLedger
}

/** The socket (or multiplexed channel) a {@link TokenLease} belongs to. */
export interface LeaseHolder {
  /** The token it connected (or opened) with. */
  readonly token: VerifiedToken
  /** The client reads Parley's extension frames (typed errors, `tokenAccepted`). */
  readonly wantsParley: boolean
  /** The document it is attached to, for the log. */
  readonly name: string
  send(frame: Uint8Array): void
  /** The lease ended (expired, or a refresh was refused): close with this code. */
  leaseEnded(code: number, reason: string): void
}

/**
 * How long one socket may stay open: until its token's `exp`, moved by every
 * token refresh the client sends over the socket (Parley subtype `token`).
 * At expiry a `parley=1` client gets a typed UNAUTHORIZED error, then every
 * client is closed with 4401. A refresh must verify like a connecting token
 * and name the same user (or service) with the same role; otherwise the
 * socket is closed with 4401 too.
 */
export class TokenLease implements Due {
  private expiresAt: number | undefined
  private checking = false
  /** A refresh that arrived while another was being checked; only the latest waits. */
  private waiting: string | undefined
  private ended = false

  constructor(
    private readonly context: LeaseContext,
    private readonly holder: LeaseHolder,
  ) {
    this.expiresAt = holder.token.expiresAt
    this.arm()
  }

  /**
   * Takes `frame` if it is a token refresh and returns true; returns false for
   * every other frame, which is the core's.
   */
  receive(frame: Uint8Array): boolean {
    if (!isTokenRefresh(frame)) return false
    if (this.ended) return true
    let token: string
    try {
      const read = readFrame(frame)
      if (read.type !== "parley" || read.message?.type !== "token") throw new Error("not a token refresh")
      token = read.message.token
    } catch {
      this.ended = true
      this.context.deadlines.clear(this)
      this.context.metrics.errors.inc({ code: ErrorCode.MALFORMED_FRAME })
      this.holder.leaseEnded(CloseCode.MalformedFrame.code, CloseCode.MalformedFrame.reason)
      return true
    }
    if (Buffer.byteLength(token, "utf8") > MAX_REFRESH_TOKEN_BYTES) {
      this.refused(new ParleyError(ErrorCode.UNAUTHORIZED, "the refreshed token is too long"))
      return true
    }
    if (this.checking) this.waiting = token
    else void this.check(token)
    return true
  }

  /**
   * True once the token has expired, ending the lease at once (the typed
   * error, then 4401) if its timer has not yet: that timer runs only when the
   * event loop gets to it, and a document whose load finished meanwhile (a
   * large synchronous read, a busy relay) was sent before it did. The socket
   * asks before every frame it sends, so nothing is read after the expiry.
   */
  expired(): boolean {
    if (this.ended || this.expiresAt === undefined || Date.now() < this.expiresAt) return false
    this.due()
    return true
  }

  /** When the lease ends unless a refresh moves it: the current token's expiry (undefined: never; 0 once ended). */
  get until(): number | undefined {
    return this.ended ? 0 : this.expiresAt
  }

  /** The socket closed: no more timer. */
  stop(): void {
    this.ended = true
    this.context.deadlines.clear(this)
  }

  /** Checks refreshes one at a time, in order, ending with the latest one that waited. */
  private async check(first: string): Promise<void> {
    this.checking = true
    try {
      let next: string | undefined = first
      while (next !== undefined && !this.ended) {
        const token: string = next
        this.waiting = undefined
        // Paid before it is verified (a new token's verification costs 100-200 µs of CPU, a known one's
        // lookup and answer about 60 µs; the frame is a few bytes): otherwise one user's sockets, each at
        // its frame rate, keep the relay busy (200 of them: 23 % of a core).
        try {
          this.context.users.admitConnection(this.holder.token.principal)
        } catch (error) {
          return this.limited(toParleyError(error))
        }
        let verified: VerifiedToken
        try {
          verified = await this.context.auth.verifyToken(token)
        } catch (error) {
          if (!unavailable(error)) return this.refused(toParleyError(error, ErrorCode.UNAUTHORIZED))
          // The key set is out of reach: the new token may be good, and the one the socket lives on
          // still holds until its expiry, which closes the socket as usual if no refresh verifies by then.
          this.putOff(toParleyError(error))
          next = this.waiting
          continue
        }
        if (this.ended) return
        if (!samePrincipal(verified.principal, this.holder.token.principal))
          return this.refused(
            new ParleyError(ErrorCode.UNAUTHORIZED, "the refreshed token is for another user or role"),
          )
        this.accepted(verified)
        next = this.waiting
      }
    } finally {
      this.checking = false
    }
  }

  private accepted(token: VerifiedToken): void {
    this.expiresAt = token.expiresAt
    this.arm()
    this.context.metrics.tokens.inc({ event: "refreshed" })
    this.context.log.debug(
      {
        doc: this.holder.name,
        principal: describePrincipal(token.principal),
        expiresAt: token.expiresAt,
        ...(token.dev ? { dev: true } : {}),
      },
      "token refreshed",
    )
    if (this.holder.wantsParley)
      this.holder.send(
        encodeTokenAccepted(token.expiresAt === undefined ? 0 : Math.floor(token.expiresAt / 1000)),
      )
  }

  /** The user's budget of verifications is spent: closed with 4429 `connection-attempts-per-user`. */
  private limited(error: ParleyError): void {
    this.context.metrics.tokens.inc({ event: "refused" })
    this.context.metrics.errors.inc({ code: error.code })
    this.context.log.info(
      { doc: this.holder.name, principal: describePrincipal(this.holder.token.principal) },
      "closed: token refreshes beyond the user's connection attempts",
    )
    this.end(error, CloseCode.TooManyConnectionAttempts)
  }

  private putOff(error: ParleyError): void {
    this.context.metrics.tokens.inc({ event: "unverified" })
    this.context.metrics.errors.inc({ code: error.code })
    this.context.log.warn(
      {
        doc: this.holder.name,
        principal: describePrincipal(this.holder.token.principal),
        reason: error.message,
      },
      "token refresh not verified for now: the socket keeps its token until it expires",
    )
  }

  private refused(error: ParleyError): void {
    this.context.metrics.tokens.inc({ event: "refused" })
    this.context.metrics.errors.inc({ code: ErrorCode.UNAUTHORIZED })
    this.context.log.info(
      {
        doc: this.holder.name,
        principal: describePrincipal(this.holder.token.principal),
        reason: error.message,
      },
      "token refresh refused",
    )
    this.end(error, CloseCode.TokenRefused)
  }

  private arm(): void {
    if (this.ended || this.expiresAt === undefined) this.context.deadlines.clear(this)
    else this.context.deadlines.set(this, this.expiresAt)
  }

  /** @internal The token's expiry passed (see {@link Deadlines}). */
  due(): void {
    if (this.ended) return
    if (this.expiresAt !== undefined && Date.now() < this.expiresAt) {
      this.arm()
      return
    }
    this.context.metrics.tokens.inc({ event: "expired" })
    this.context.log.info(
      { doc: this.holder.name, principal: describePrincipal(this.holder.token.principal) },
      "closed: token expired",
    )
    this.end(new ParleyError(ErrorCode.UNAUTHORIZED, "the token expired"), CloseCode.TokenExpired)
  }

  private end(error: ParleyError, close: { readonly code: number; readonly reason: string }): void {
    if (this.ended) return
    this.ended = true
    this.context.deadlines.clear(this)
    if (this.holder.wantsParley) this.holder.send(encodeError({ code: error.code, message: error.message }))
    this.holder.leaseEnded(close.code, close.reason)
  }
}
