import { ErrorCode, ParleyError } from "@parley/client"

const PLAIN: Partial<Record<ErrorCode, string>> = {
  [ErrorCode.FORBIDDEN]: "not permitted (you are not a participant, or your role does not allow it)",
  [ErrorCode.NOT_FOUND]: "this conversation does not exist",
  [ErrorCode.UNAUTHORIZED]: "the relay did not accept your sign-in",
  [ErrorCode.RATE_LIMITED]: "too much at once; try again in a moment",
}

/** Refusals whose rule says more than the code's plain meaning: their own message is for people. */
const SAID_BY_RULE: ReadonlySet<string> = new Set(["last-owner"])

/** A phrase for a person: the plain meaning of a Parley error code, else the error's message. */
export function explain(error: unknown): string {
  if (error instanceof ParleyError && error.rule !== undefined && SAID_BY_RULE.has(error.rule))
    return error.message
  // What is too large, and the limit, is in the message ("the title is too long: at most 200 characters").
  if (error instanceof ParleyError && error.code === ErrorCode.TOO_LARGE) return error.message
  if (error instanceof ParleyError) return PLAIN[error.code] ?? error.message
  return error instanceof Error ? error.message : String(error)
}

/** The technical detail (code and message), for a tooltip. */
export function detail(error: unknown): string {
  if (error instanceof ParleyError) return `${error.code}: ${error.message}`
  return error instanceof Error ? error.message : String(error)
}
