import { OpenAPIHono } from "@hono/zod-openapi"
import { ErrorCode, ParleyError } from "@parley/shared"
import type { Context, Env } from "hono"
import { HTTPException } from "hono/http-exception"
import type { ContentfulStatusCode } from "hono/utils/http-status"
import type { Logger } from "../log.js"

/** HTTP status of each error code (codes of other parts map through here too; unknown ones are 500). */
const STATUS: Readonly<Record<string, ContentfulStatusCode>> = {
  [ErrorCode.INVALID_ARGUMENT]: 400,
  [ErrorCode.MALFORMED_FRAME]: 400,
  [ErrorCode.UNAUTHORIZED]: 401,
  [ErrorCode.FORBIDDEN]: 403,
  [ErrorCode.NOT_FOUND]: 404,
  [ErrorCode.CONFLICT]: 409,
  // A stream resumed from an event the log no longer keeps (the event log's code).
  EVENTS_EXPIRED: 410,
  [ErrorCode.TOO_LARGE]: 413,
  [ErrorCode.INVALID_UPDATE]: 422,
  [ErrorCode.RATE_LIMITED]: 429,
  [ErrorCode.INTERNAL]: 500,
  [ErrorCode.UNAVAILABLE]: 503,
  [ErrorCode.STORAGE_UNAVAILABLE]: 503,
  [ErrorCode.DAMAGED]: 503,
  [ErrorCode.TIMEOUT]: 504,
}

/** The status an error code is answered with. */
export const statusOf = (code: string): ContentfulStatusCode => STATUS[code] ?? 500

/**
 * An RFC 9457 problem: `type` names Parley's error code (`urn:parley:error:<CODE>`),
 * `code` repeats it for clients that switch on it, `rule` names the document rule
 * that refused a write.
 */
export interface Problem {
  readonly type: string
  readonly title: string
  readonly status: number
  readonly detail: string
  readonly code: string
  readonly rule?: string
}

/** The problem describing `error`, with `status` overriding the code's own. */
export function problemOf(error: ParleyError, status: number = statusOf(error.code)): Problem {
  return {
    type: `urn:parley:error:${error.code}`,
    title: error.code.toLowerCase().replaceAll("_", " "),
    status,
    detail: error.message,
    code: error.code,
    ...(error.rule !== undefined ? { rule: error.rule } : {}),
  }
}

/**
 * Seconds a client is asked to wait (`Retry-After`) before retrying a request
 * refused because storage is failing: the relay probes it every 2 s at most.
 */
export const STORAGE_RETRY_AFTER_SECONDS = 2

/**
 * Answers with the problem of `error` as `application/problem+json`; a
 * storage failure with `Retry-After` too (it is retryable).
 */
export function problemResponse(
  c: Context,
  error: ParleyError,
  status: ContentfulStatusCode = statusOf(error.code),
  headers: Record<string, string> = {},
): Response {
  return c.body(JSON.stringify(problemOf(error, status)), status, {
    "content-type": "application/problem+json",
    "cache-control": "no-store",
    ...(error.code === ErrorCode.STORAGE_UNAVAILABLE
      ? { "retry-after": String(STORAGE_RETRY_AFTER_SECONDS) }
      : {}),
    ...headers,
  })
}

/** A refused request, answered as a problem by the API's error handler. */
export const refuse = (code: ErrorCode, message: string, rule?: string): ParleyError =>
  new ParleyError(code, message, rule === undefined ? undefined : { rule })

/**
 * A Hono app whose failures are problem details: a request that fails its
 * schema is a 400 naming the first fields, a thrown `ParleyError` its own
 * status, anything else a logged 500 (`what` names the routes in the log).
 */
export function problemApp<E extends Env>(log: Logger, what: string): OpenAPIHono<E> {
  const app = new OpenAPIHono<E>({
    defaultHook: (result, c) => {
      if (result.success) return
      // Named by where it was: an unknown query parameter was reported as a body field.
      const where = (result as { readonly target?: string }).target
      const whole = where === "query" ? "(query)" : where === "param" ? "(path)" : "(body)"
      const detail = result.error.issues
        .slice(0, 10)
        // A message may list what the body held (every unknown key): the answer names no more than a few.
        .map(
          (i) =>
            `${i.path.length > 0 ? `${where === "query" ? "query " : ""}${i.path.join(".")}` : whole}: ${i.message.length > 200 ? `${i.message.slice(0, 200)}…` : i.message}`,
        )
        .join("; ")
      return problemResponse(c, new ParleyError(ErrorCode.INVALID_ARGUMENT, detail))
    },
  })
  app.onError((error, c) => {
    if (error instanceof ParleyError) return problemResponse(c, error)
    if (error instanceof HTTPException && error.status < 500)
      return problemResponse(
        c,
        new ParleyError(ErrorCode.INVALID_ARGUMENT, error.message || "bad request"),
        error.status as ContentfulStatusCode,
      )
    // The client went away before its body was read: nobody to answer, nothing failed here (logged at
    // error with a stack, every such request of a flood wrote a line: an outside probe saw 867 a second).
    if (clientAborted(error)) {
      log.debug({ path: c.req.path }, `${what} aborted by its client`)
      return problemResponse(c, new ParleyError(ErrorCode.INVALID_ARGUMENT, "the request was aborted"))
    }
    log.error({ err: error, path: c.req.path }, `${what} failed`)
    return problemResponse(c, new ParleyError(ErrorCode.INTERNAL, "internal error"))
  })
  return app
}

/** Whether `error` is Node's report of a request its client aborted while its body was read. */
function clientAborted(error: unknown): boolean {
  return (
    error instanceof Error &&
    error.message === "aborted" &&
    (error as { code?: string }).code === "ECONNRESET"
  )
}
