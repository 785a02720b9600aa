import { ErrorCode, ParleyError } from "@parley/client"

const PLAIN: Partial<Record<ErrorCode, string>> = {
  [ErrorCode.FORBIDDEN]: "not permitted: you are not a participant, or your role does not allow it",
  [ErrorCode.NOT_FOUND]: "this conversation does not exist",
  [ErrorCode.UNAUTHORIZED]: "the relay did not accept your sign-in",
  [ErrorCode.TOO_LARGE]: "it is too large",
  [ErrorCode.RATE_LIMITED]: "too much at once; try again in a moment",
}

/** A sentence for a person: the plain meaning of a Parley error code, with the SDK's detail. */
export function explain(error: unknown): string {
  if (error instanceof ParleyError) {
    const plain = PLAIN[error.code]
    return plain ? `${plain} (${error.message})` : error.message
  }
  return error instanceof Error ? error.message : String(error)
}
