import type { OpenAPIHono } from "@hono/zod-openapi"
import { ErrorCode, ParleyError, type UserId, UserLimit } from "@parley/shared"
import type { Context, Env } from "hono"
import type { Principal } from "../principal.js"
import { problemResponse } from "./problem.js"

/** The token of `Authorization: Bearer <token>`, if the request carries one. */
export const bearerToken = (c: Context): string | undefined =>
  /^Bearer (\S+)$/i.exec(c.req.header("authorization") ?? "")?.[1]

/** Declares the `userToken` security scheme (a user's own JWT) in `app`'s OpenAPI document. */
export function registerUserTokenScheme<E extends Env>(app: OpenAPIHono<E>): void {
  app.openAPIRegistry.registerComponent("securitySchemes", "userToken", {
    type: "http",
    scheme: "bearer",
    bearerFormat: "JWT",
    description: "The user's own token, the one their client syncs with.",
  })
}

/**
 * The user a request's bearer `token` signs in, or the problem to answer
 * with: 401 without a token that verifies (any verification failure is the
 * same 401: a caller learns nothing about why), 403 for a principal that is
 * not a user (`notUser` says what only users may do).
 */
export async function userOfToken(
  c: Context,
  token: string | undefined,
  verify: (token: string) => Promise<Principal>,
  notUser: string,
): Promise<UserId | Response> {
  let principal: Principal | undefined
  try {
    principal = token ? await verify(token) : undefined
  } catch (error) {
    // The token could not be verified for now (the key set out of reach): the retryable 503, which
    // counts against no address (a 401 does), as on the WebSockets.
    if (error instanceof ParleyError && error.code === ErrorCode.UNAVAILABLE)
      return problemResponse(c, error, 503, { "retry-after": "5" })
    principal = undefined
  }
  if (!principal)
    return problemResponse(
      c,
      new ParleyError(ErrorCode.UNAUTHORIZED, "a valid user token is required (Authorization: Bearer <JWT>)"),
      401,
      { "www-authenticate": 'Bearer realm="parley"' },
    )
  if (principal.kind !== "user") return problemResponse(c, new ParleyError(ErrorCode.FORBIDDEN, notUser), 403)
  return principal.user
}

/** The per-user budget of HTTP requests made with users' own tokens (the core's `UserLedger`). */
export interface RequestBudget {
  /** 0 when `principal` may make one more request now, else the milliseconds until they may. */
  admitRequest(principal: Principal): number
}

/**
 * Takes one request of `user` from `budget`: undefined when it is admitted,
 * else the answer, a 429 problem with rule `http-requests-per-user` and
 * `Retry-After`. Call once the caller is verified, before anything is read
 * for them.
 */
export function overRequestBudget(
  c: Context,
  budget: RequestBudget | undefined,
  user: UserId,
): Response | undefined {
  const wait = budget?.admitRequest({ kind: "user", user }) ?? 0
  if (wait === 0) return undefined
  return problemResponse(
    c,
    new ParleyError(ErrorCode.RATE_LIMITED, "too many requests for this user: slow down", {
      rule: UserLimit.httpRequests,
    }),
    429,
    { "retry-after": String(Math.max(1, Math.ceil(wait / 1000))) },
  )
}
