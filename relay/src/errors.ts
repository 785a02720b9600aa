import { CloseCode, type ErrorCode } from "@parley/shared"

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
    case "MALFORMED_FRAME":
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
