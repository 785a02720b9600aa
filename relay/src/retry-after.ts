/**
 * A failure the other side answered with a wait to respect before trying
 * again (`Retry-After` on a 429 or 503): webhooks and push services.
 */
export class RetryAfterError extends Error {
  override readonly name = "RetryAfterError"
  constructor(
    message: string,
    /** The wait asked for, in ms; undefined when the answer named none. */
    readonly retryAfterMs: number | undefined,
  ) {
    super(message)
  }
}

/**
 * The wait a `Retry-After` header asks for (RFC 9110: seconds, or an HTTP
 * date), in ms; undefined when absent or unreadable.
 */
export function retryAfterMs(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined
  const text = value.trim()
  if (/^\d+$/.test(text)) return Number(text) * 1000
  const at = Date.parse(text)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}

/**
 * `scheduled`, or longer when `error` asked for a longer wait, at most `most`:
 * never sooner than the schedule, and no answer holds a retry back for good.
 */
export function respectRetryAfter(scheduled: number, error: unknown, most: number): number {
  if (!(error instanceof RetryAfterError) || error.retryAfterMs === undefined) return scheduled
  return Math.max(scheduled, Math.min(error.retryAfterMs, most))
}
