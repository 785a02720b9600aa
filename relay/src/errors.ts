import { CloseCode, ErrorCode, type ParleyError, UserLimit } from "@parley/shared"

/** The close code a connection gets for an error it cannot be told about in a typed error frame. */
export function closeFor(code: ErrorCode): { code: number; reason: string } {
  switch (code) {
    case "UNAUTHORIZED":
      return CloseCode.Unauthorized
    case "FORBIDDEN":
      return CloseCode.Forbidden
    case "NOT_FOUND":
      return CloseCode.NotFound
    case "INVALID_UPDATE":
    case "INVALID_ARGUMENT":
    case "CONFLICT":
    case "MALFORMED_FRAME":
    case "EVENTS_EXPIRED":
      return CloseCode.MalformedFrame
    case "TOO_LARGE":
      return CloseCode.TooLarge
    case "RATE_LIMITED":
      return CloseCode.RateLimited
    case "UNAVAILABLE":
    case "TIMEOUT":
    case "STORAGE_UNAVAILABLE":
      return CloseCode.Unavailable
    case "INTERNAL":
      return CloseCode.Internal
    case "DAMAGED":
      return CloseCode.Damaged
  }
}

const USER_LIMITS = new Set<string>(Object.values(UserLimit))

/**
 * The close code for `error`: that of its code, except that a per-user limit
 * keeps 4429 and gives its name as the reason (`sockets-per-user`, ...), and
 * a refused update (4400, 4403) gives its rule, so a client or an operator
 * reading the close can tell which limit or rule it met.
 */
export function closeOf(error: ParleyError): { code: number; reason: string } {
  if (error.code === ErrorCode.RATE_LIMITED && error.rule !== undefined && USER_LIMITS.has(error.rule))
    return { code: CloseCode.RateLimited.code, reason: error.rule }
  // A refused update's rule says why (`update-values`, `epoch`, `participant-only`, ...): a stock
  // client, which gets no typed error, sees it as the close reason rather than "Malformed frame".
  if (
    (error.code === ErrorCode.INVALID_UPDATE || error.code === ErrorCode.FORBIDDEN) &&
    error.rule !== undefined
  )
    return { code: closeFor(error.code).code, reason: error.rule }
  // A refused token says why (expired, wrong audience, lifetime over the cap, ...): the developer
  // integrating auth reads it in the SDK's error instead of only in the relay's log. Each of these
  // messages is written for the client (see `auth.ts`): it says what the token must change, nothing of
  // the relay's keys or users.
  if (error.code === ErrorCode.UNAUTHORIZED && error.message !== "")
    return { code: CloseCode.Unauthorized.code, reason: clipReason(error.message) }
  return closeFor(error.code)
}

/** Longest close reason a WebSocket close frame carries, in UTF-8 bytes (RFC 6455: 125 less the code). */
const MAX_CLOSE_REASON_BYTES = 123

/** `reason`, cut to fit a close frame (whole characters, an ellipsis where cut). */
export function clipReason(reason: string): string {
  if (Buffer.byteLength(reason, "utf8") <= MAX_CLOSE_REASON_BYTES) return reason
  let clipped = reason
  while (Buffer.byteLength(`${clipped}…`, "utf8") > MAX_CLOSE_REASON_BYTES) clipped = clipped.slice(0, -1)
  return `${clipped}…`
}
