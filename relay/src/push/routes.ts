import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi"
import { ErrorCode, ParleyError, type UserId } from "@parley/shared"
import type { MiddlewareHandler } from "hono"
import { limitBody } from "../api/body-limit.js"
import { describeOnly, type OpenApiPart, openApiPartOf } from "../api/openapi-part.js"
import { problemApp } from "../api/problem.js"
import { ProblemSchema } from "../api/schemas.js"
import {
  bearerToken,
  overRequestBudget,
  type RequestBudget,
  registerUserTokenScheme,
  userOfToken,
} from "../api/user-token.js"
import { requireWellFormedJson } from "../api/well-formed.js"
import type { Logger } from "../log.js"
import type { Principal } from "../principal.js"
import { checkEndpointUrl, type EndpointPolicy, MAX_ENDPOINT_LENGTH } from "./endpoint.js"
import { DAY_MS, DEFAULT_PUSH_WAKE_DAYS, pushStanding } from "./lifetime.js"
import type { PushSubscriptionRecord, PushSubscriptionStore } from "./store.js"

/** Default devices a user may register; one more is refused (409) until one is removed. */
export const DEFAULT_MAX_PUSH_DEVICES = 20

/** What the push routes are built on. */
export interface PushRoutesOptions {
  readonly store: PushSubscriptionStore
  /** The relay's VAPID public key (base64url), which devices subscribe with. */
  readonly publicKey: string
  /**
   * Verifies a user's token (the relay's `Authenticator.verifyToken`): who it
   * names and its `exp` (ms; undefined for a token without one), which a
   * subscription it registers or renews gets full notifications until.
   */
  verify(token: string): Promise<{ readonly principal: Principal; readonly expiresAt: number | undefined }>
  readonly endpoints?: EndpointPolicy
  readonly maxDevices?: number
  /** How long after its credentials' end a subscription not renewed gets wake-ups before it is deleted, in ms. Default 30 days. */
  readonly wakeMs?: number
  /** The per-user request budget the routes are held to. */
  readonly requests?: RequestBudget
  readonly log: Logger
  /** The clock (ms since the epoch): registration times, and whose credentials expired; default `Date.now`. */
  readonly now?: () => number
}

type Env = { Variables: { user: UserId; credentialsUntil: number | null } }

const base64url = (bytes: number, what: string) =>
  z
    .string()
    .max(200)
    .refine(
      (value) => /^[A-Za-z0-9_-]+={0,2}$/.test(value) && Buffer.from(value, "base64url").length === bytes,
      {
        message: `${what} must be ${bytes} bytes, base64url`,
      },
    )

/** A browser's `PushSubscription.toJSON()`, and the device it belongs to. */
const RegisterSchema = z
  .object({
    device: z
      .string()
      .regex(/^[A-Za-z0-9._~-]{1,128}$/)
      .openapi({ description: "Chosen by the device, stable per installation (1–128 of `A-Za-z0-9._~-`)." }),
    subscription: z
      .object({
        endpoint: z
          .string()
          .max(MAX_ENDPOINT_LENGTH)
          .openapi({ example: "https://fcm.googleapis.com/fcm/send/..." }),
        expirationTime: z.number().nullable().optional(),
        keys: z
          .object({
            p256dh: base64url(65, "p256dh").openapi({ description: "The subscription's P-256 public key." }),
            auth: base64url(16, "auth").openapi({ description: "The subscription's authentication secret." }),
          })
          .strict(),
      })
      .strict(),
    renew: z.boolean().optional().openapi({
      description:
        "Only renew: the device's subscription must be this one already (404 otherwise: removed, replaced or dropped), and nothing is created. What the SDK sends at each connect and fresh token, so that a device removed elsewhere is not registered again.",
    }),
  })
  .strict()
  .openapi("PushRegistration")

const DeviceSchema = z
  .object({
    device: z.string(),
    endpoint: z.string(),
    createdAt: z.number().int(),
    credentialsUntil: z.number().int().nullable().openapi({
      description:
        'Until when (ms since the epoch) the token that registered or last renewed it holds: full notifications until then, content-free wake-ups (`{"wake":true}`) after, for `--push-wake-days`; null for a token without `exp`.',
    }),
  })
  .openapi("PushDevice")

const problems = (statuses: readonly (readonly [number, string])[]) =>
  Object.fromEntries(
    statuses.map(([status, description]) => [
      status,
      { description, content: { "application/problem+json": { schema: ProblemSchema } } },
    ]),
  )
const AUTH_PROBLEMS = [
  [401, "No user token, or an invalid one"],
  [403, "The token is not a user's (a service's)"],
  [429, "The user's HTTP request budget is spent (`http-requests-per-user`, `Retry-After`)"],
] as const
const security = [{ userToken: [] }]
const DeviceParam = z.object({ device: z.string().regex(/^[A-Za-z0-9._~-]{1,128}$/) })

const publicKeyRoute = createRoute({
  method: "get",
  path: "/v1/push/public-key",
  summary: "The relay's VAPID public key",
  description:
    "The `applicationServerKey` devices subscribe with (`PushManager.subscribe`). No token needed.",
  responses: {
    200: {
      description: "The key",
      content: {
        "application/json": { schema: z.object({ publicKey: z.string() }).openapi("PushPublicKey") },
      },
    },
  },
})
const registerRoute = createRoute({
  method: "post",
  path: "/v1/me/push-subscriptions",
  summary: "Register this device's Web Push subscription",
  description:
    "Adds or replaces the caller's subscription for `device`. The caller is the user of the token. The same subscription (endpoint and keys) again is a renewal: its `credentialsUntil` moves to this token's expiry when that is later, never earlier. A replaced one takes this token's expiry. At the device limit, the caller's subscription whose credentials expired longest ago makes room; 409 when none did.",
  security,
  request: { body: { required: true, content: { "application/json": { schema: RegisterSchema } } } },
  responses: {
    200: { description: "Registered", content: { "application/json": { schema: DeviceSchema } } },
    ...problems([
      [400, "Malformed body, or an endpoint the relay refuses (not https, a private address)"],
      ...AUTH_PROBLEMS,
      [
        404,
        "`renew` and the device has no such subscription (removed, replaced or dropped): register it again",
      ],
      [409, "The user already has the most devices allowed, none of them with expired credentials"],
      [413, "Request body too large"],
    ]),
  },
})
const listRoute = createRoute({
  method: "get",
  path: "/v1/me/push-subscriptions",
  summary: "The caller's registered devices",
  security,
  responses: {
    200: {
      description: "The devices, oldest first (their keys are not returned)",
      content: { "application/json": { schema: z.object({ devices: z.array(DeviceSchema) }) } },
    },
    ...problems(AUTH_PROBLEMS),
  },
})
const removeRoute = createRoute({
  method: "delete",
  path: "/v1/me/push-subscriptions/{device}",
  summary: "Unregister one of the caller's devices",
  security,
  request: { params: DeviceParam },
  responses: {
    204: { description: "Removed" },
    ...problems([...AUTH_PROBLEMS, [404, "The caller has no such device"]]),
  },
})

const deviceOf = (record: PushSubscriptionRecord) => ({
  device: record.device,
  endpoint: record.endpoint,
  createdAt: record.createdAt,
  credentialsUntil: record.credentialsUntil,
})

/**
 * The routes devices register their Web Push subscriptions with, for the
 * user of the token they present (`Authorization: Bearer <the user's JWT>`,
 * the token they sync with): nobody registers, lists or removes another
 * user's devices.
 */
export function createPushRoutes(options: PushRoutesOptions): OpenAPIHono<Env> {
  const now = options.now ?? Date.now
  const maxDevices = options.maxDevices ?? DEFAULT_MAX_PUSH_DEVICES
  const wakeMs = options.wakeMs ?? DEFAULT_PUSH_WAKE_DAYS * DAY_MS
  const endpoints = options.endpoints ?? {}
  const app = problemApp<Env>(options.log, "push route")
  registerUserTokenScheme(app)

  const authenticate: MiddlewareHandler<Env> = async (c, next) => {
    let expiresAt: number | undefined
    const user = await userOfToken(
      c,
      bearerToken(c),
      async (token) => {
        const verified = await options.verify(token)
        expiresAt = verified.expiresAt
        return verified.principal
      },
      "push subscriptions belong to users",
    )
    if (user instanceof Response) return user
    // Renewals (the SDK's, at each connect and fresh token) spend this budget like any request.
    const refused = overRequestBudget(c, options.requests, user)
    if (refused) return refused
    c.set("user", user)
    c.set("credentialsUntil", expiresAt ?? null)
    await next()
  }
  app.use("/v1/me/*", authenticate)
  app.use("/v1/me/*", ...limitBody(8 * 1024))
  app.use("/v1/me/*", requireWellFormedJson())

  /** The user's subscriptions, those past their wake-up grace deleted (as a push to them would). */
  async function current(user: UserId, at: number): Promise<PushSubscriptionRecord[]> {
    const all = await options.store.list(user)
    const kept: PushSubscriptionRecord[] = []
    for (const sub of all)
      if (pushStanding(sub, at, wakeMs) === "expired")
        await options.store.removeLapsed(user, sub.device, at - wakeMs)
      else kept.push(sub)
    return kept
  }

  app.openapi(publicKeyRoute, (c) => c.json({ publicKey: options.publicKey }, 200))

  app.openapi(registerRoute, async (c) => {
    const user = c.get("user")
    const credentialsUntil = c.get("credentialsUntil")
    const { device, subscription, renew } = c.req.valid("json")
    const keys = { endpoint: subscription.endpoint, ...subscription.keys }
    // The device's own subscription again (what the SDK sends at each connect and fresh token): one
    // write, its endpoint not checked again. Only the holder of its keys renews it this way; any other
    // registration under the name is a replacement, which gets no more than its own token's lifetime.
    if (await options.store.renew(user, device, keys, credentialsUntil)) {
      const renewed = (await options.store.list(user)).find((s) => s.device === device)
      if (renewed) return c.json(deviceOf(renewed), 200)
    }
    if (renew)
      throw new ParleyError(
        ErrorCode.NOT_FOUND,
        "this device has no such subscription to renew: register it again",
      )
    checkEndpointUrl(subscription.endpoint, endpoints)
    const at = now()
    const existing = await current(user, at)
    if (existing.length >= maxDevices && !existing.some((s) => s.device === device)) {
      // Subscriptions whose credentials expired make room for one the user's valid token registers:
      // a leaked token filling the limit locks the user out no longer than it lives.
      const lapsed = existing
        .filter((s) => pushStanding(s, at, wakeMs) !== "full")
        .sort((a, b) => (a.credentialsUntil ?? 0) - (b.credentialsUntil ?? 0))[0]
      if (!lapsed)
        throw new ParleyError(
          ErrorCode.CONFLICT,
          `at most ${maxDevices} devices per user: remove one (DELETE /v1/me/push-subscriptions/{device}) first`,
        )
      // Only as lapsed as it was read: a device of the user's that renewed it meanwhile keeps it.
      if (!(await options.store.removeLapsed(user, lapsed.device, at)))
        throw new ParleyError(
          ErrorCode.CONFLICT,
          `at most ${maxDevices} devices per user: remove one (DELETE /v1/me/push-subscriptions/{device}) first`,
        )
      options.log.info(
        { user, device: lapsed.device, credentialsUntil: lapsed.credentialsUntil },
        "push: a subscription whose credentials expired made room for a new one",
      )
    }
    const record: PushSubscriptionRecord = {
      user,
      device,
      endpoint: subscription.endpoint,
      p256dh: subscription.keys.p256dh,
      auth: subscription.keys.auth,
      createdAt: at,
      credentialsUntil,
    }
    await options.store.put(record)
    const stored = (await options.store.list(user)).find((s) => s.device === device) ?? record
    return c.json(deviceOf(stored), 200)
  })

  app.openapi(listRoute, async (c) =>
    c.json({ devices: (await current(c.get("user"), now())).map(deviceOf) }, 200),
  )

  app.openapi(removeRoute, async (c) => {
    if (!(await options.store.remove(c.get("user"), c.req.valid("param").device)))
      throw new ParleyError(ErrorCode.NOT_FOUND, "no such device")
    return c.body(null, 204)
  })
  return app
}

/**
 * The push routes' part of the OpenAPI document (paths and the `userToken`
 * scheme), generated from the schemas that validate them; the API's
 * `openApiDocument` merges it in.
 */
export function pushOpenApiPart(): OpenApiPart {
  const unused = describeOnly
  const app = createPushRoutes({
    store: {
      put: unused,
      renew: unused,
      list: unused,
      listMany: unused,
      remove: unused,
      removeEndpoint: unused,
      removeLapsed: unused,
      removeAllLapsed: unused,
    },
    publicKey: "",
    verify: unused,
    log: { error: unused } as unknown as Logger,
  })
  return openApiPartOf(app)
}
