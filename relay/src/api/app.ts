import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi"
import {
  type ConversationId,
  ErrorCode,
  type MessageId,
  type MessageView,
  ParleyError,
  type UserId,
} from "@parley/shared"
import type { Context, MiddlewareHandler } from "hono"
import type { ContentfulStatusCode } from "hono/utils/http-status"
import { attachmentsOpenApiPart } from "../attachments/routes.js"
import type { RunningCore } from "../extension.js"
import { SealedReads } from "../history/sealed-reads.js"
import type { Logger } from "../log.js"
import { serviceParticipant } from "../principal.js"
import { pushOpenApiPart } from "../push/routes.js"
import { RateLimiter } from "../rate-limit.js"
import { credentialsVerified } from "../request-scope.js"
import { storageUnavailable } from "../storage/guard.js"
import { limitBody } from "./body-limit.js"
import type { ApiEventSource } from "./event-source.js"
import { EventStreams } from "./event-stream.js"
import type { IdempotencyStore } from "./idempotency.js"
import { type ApiKeyRecord, type ApiKeyStore, type ApiScope, secretMatches, splitApiKey } from "./keys.js"
import { type ApiLimits, DEFAULT_API_LIMITS } from "./limits.js"
import { SEALED_READS_PER_KEY, SEALED_READS_PER_PAGE, SEALED_SCAN_LIMIT } from "./message-pages.js"
import {
  type Actor,
  ApiOperations,
  type ConversationView,
  idempotentMessageId,
  type TargetRefusals,
} from "./operations.js"
import { problemApp, problemResponse, refuse } from "./problem.js"
import * as S from "./schemas.js"
import { requireWellFormedJson } from "./well-formed.js"

/** What the API is built on. */
export interface ApiOptions {
  readonly core: RunningCore
  readonly keys: ApiKeyStore
  /** Where idempotent sends are recorded (the backend's `idempotency`). */
  readonly idempotency: IdempotencyStore
  readonly log: Logger
  /**
   * Whether storage answers (the relay's `StorageGuard`): while it does not, writes are refused at
   * once with the retryable STORAGE_UNAVAILABLE rather than each waiting for a storage deadline.
   */
  readonly storage?: { readonly available: boolean }
  /** The durable event log behind `/v1/events`; without it the stream answers 503. */
  readonly events?: ApiEventSource
  readonly limits?: Partial<ApiLimits>
  /** Aborted when the relay stops: open event streams end. */
  readonly signal?: AbortSignal
  /**
   * The open `/v1/events` streams; made here when not given (the extension gives its own, to tell
   * them of purges). `limits`, `log`, `events` and `signal` are then its.
   */
  readonly streams?: EventStreams
  /** Erases everything `user` wrote (GDPR); without it the erasure route answers 503. */
  erase?(user: UserId): Promise<{ readonly conversations: number; readonly messages: number }>
}

type Env = { Variables: { key: ApiKeyRecord } }

/** Body bytes one request's share of a key's rate covers: each further 16 KiB costs another. */
const BODY_BYTES_PER_REQUEST = 16 * 1024

/** The shares of a key's rate a body of `bytes` costs beyond its request's own. */
const bodyShares = (bytes: number): number => Math.floor(bytes / BODY_BYTES_PER_REQUEST)

/** The body length a request declares (0 when it declares none, or nonsense). */
function declaredLength(c: Context): number {
  const declared = Number(c.req.header("content-length") ?? 0)
  return Number.isSafeInteger(declared) && declared > 0 ? declared : 0
}

const problemContent = { "application/problem+json": { schema: S.ProblemSchema } }
const PROBLEMS = Object.fromEntries(
  (
    [
      [
        400,
        "Malformed JSON, an unknown field or an invalid value (a string that is not well-formed UTF-16, holding a lone surrogate, among them)",
      ],
      [401, "No API key, or an unknown or revoked one"],
      [
        403,
        "The key lacks the scope, or the document rules refuse the write (`rule` names the rule): a write as a non-participant is refused with `participant-only`, whether or not the conversation exists",
      ],
      [
        404,
        "No such conversation (a read) or message, of a conversation the actor takes part in (a write); to a key without the read scope of what a write names (`messages:read`, `conversations:read`), any message or participant the actor may not act on, one answer whatever it is",
      ],
      [409, "Already exists, or an idempotency key or message id reused for a different message"],
      [413, "Request body too large"],
      [415, "A body that is not `content-type: application/json` in UTF-8"],
      [422, "Well-formed, but the conversation refuses it (e.g. metadata too large or nested too deep)"],
      [429, "Too many requests (or event streams) for this key"],
      [
        503,
        "Storage is failing (`STORAGE_UNAVAILABLE`, retryable: retry after `Retry-After` seconds; a send's `detail` names the message id to retry with, so that it is sent once), the conversation's stored state is damaged (`DAMAGED`), or the relay is stopping (`UNAVAILABLE`)",
      ],
    ] as const
  ).map(([status, description]) => [status, { description, content: problemContent }]),
) as Record<
  400 | 401 | 403 | 404 | 409 | 413 | 415 | 422 | 429 | 503,
  { description: string; content: typeof problemContent }
>

const json = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { "application/json": { schema } },
})
const body = <T extends z.ZodType>(schema: T) => ({
  body: { required: true, content: { "application/json": { schema } } },
})

/** One operation of the API, secured by an API key with `scope`. */
function operation<
  const R extends Omit<Parameters<typeof createRoute>[0], "security" | "responses"> & {
    responses: Record<number, unknown>
  },
>(scope: ApiScope, config: R) {
  return createRoute({
    ...config,
    // A route without query parameters still refuses unknown ones (a misspelt filter is an error).
    request: { query: S.NoQuery, ...config.request },
    description:
      `${config.description ?? ""}\n\nScope: \`${scope}\` (and \`act-as-user\` with \`asUser\`).`.trim(),
    security: [{ apiKey: [scope] }],
    // A route's own description of a status (its 503, say) says more than the shared one.
    responses: { ...PROBLEMS, ...config.responses } as R["responses"] & typeof PROBLEMS,
  } as never) as unknown as R & { method: R["method"]; path: R["path"] }
}

/** The `/v1/events` streams of an API with `options` and `limits`. */
export function eventStreams(
  options: Pick<ApiOptions, "log" | "events" | "signal">,
  limits: ApiLimits,
): EventStreams {
  return new EventStreams({
    limits,
    log: options.log,
    ...(options.events ? { source: options.events } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  })
}

/**
 * Builds the HTTP API (`/v1/...`): Hono routes declared with zod schemas, which
 * validate every request and generate the OpenAPI 3.1 document.
 */
export function createApi(options: ApiOptions): OpenAPIHono<Env> {
  const limits = { ...DEFAULT_API_LIMITS, ...options.limits }
  const ops = new ApiOperations(options.core, options.idempotency)
  const buckets = new Map<string, RateLimiter>()
  /** Per key: participants it may still add this minute (see `ApiLimits.participantsPerMinute`). */
  const additions = new Map<string, RateLimiter>()
  /**
   * Takes `count` participants added from the key's budget; undefined, or the
   * refusal to answer with (429 with `Retry-After`, nothing written). A request
   * adding more than a minute's worth passes on a full budget, into debt.
   */
  const chargeAdditions = (c: Context<Env>, count: number): Response | undefined => {
    const perMinute = limits.participantsPerMinute
    if (perMinute <= 0 || count === 0) return undefined
    const key = c.get("key")
    let bucket = additions.get(key.id)
    if (!bucket) {
      bucket = new RateLimiter(perMinute / 60, perMinute)
      additions.set(key.id, bucket)
    }
    const needed = Math.min(count, perMinute)
    if (bucket.available() >= needed) {
      bucket.spend(count)
      return undefined
    }
    return problemResponse(
      c,
      refuse(
        ErrorCode.RATE_LIMITED,
        `this API key may add ${perMinute} participants a minute: retry later`,
        "participants-per-minute",
      ),
      429,
      { "retry-after": String(Math.max(1, Math.ceil(bucket.msUntil(needed) / 1000))) },
    )
  }
  /**
   * The sealed history reads of one listing, each segment or directory page
   * it looks at paid for with a request's worth of the key's rate: a page that
   * looks at 16 segments costs what 17 cheap requests cost, so a key looping
   * costly pages is held to its rate in work, not in requests. Granted only
   * while the key's budget holds one.
   */
  const pageReads = (c: Context<Env>): SealedReads => {
    const bucket = buckets.get(c.get("key").id)
    return new SealedReads(SEALED_READS_PER_PAGE, (wanted) => {
      let paid = 0
      while (paid < wanted && (!bucket || bucket.take())) paid++
      return paid
    })
  }
  /**
   * The sealed history reads of a send's search for an earlier attempt: not
   * cut short (the send must not be written twice), but each segment read is
   * taken from the key's rate, into debt.
   */
  const searchReads = (c: Context<Env>): SealedReads => {
    const bucket = buckets.get(c.get("key").id)
    return new SealedReads(Number.POSITIVE_INFINITY, (wanted) => {
      bucket?.spend(wanted)
      return wanted
    })
  }
  const streams = options.streams ?? eventStreams(options, limits)

  const app = problemApp<Env>(options.log, "API request")
  app.openAPIRegistry.registerComponent("securitySchemes", "apiKey", {
    type: "http",
    scheme: "bearer",
    description: "An API key made with `parley-relay keys create` (`pk_...`).",
  })

  app.notFound((c) =>
    problemResponse(c, new ParleyError(ErrorCode.NOT_FOUND, `no route ${c.req.method} ${c.req.path}`)),
  )

  /** A JWT's compact form: three base64url parts (see the `authenticate` middleware). */
  const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

  const authenticate: MiddlewareHandler<Env> = async (c, next) => {
    const header = c.req.header("authorization") ?? ""
    const presented = /^Bearer (\S+)$/i.exec(header)?.[1]
    const parts = presented ? splitApiKey(presented) : undefined
    // A token of the WebSocket's kind (a JWT: a user's, say) is no API key, and checked for nothing here:
    // told so, 403, which is no failed sign-in of the address. As a 401 it counted as one, and an app
    // calling a `/v1` route with its user's token locked everyone behind its address out (an outside probe).
    if (!parts && presented !== undefined && JWT_SHAPE.test(presented))
      return problemResponse(
        c,
        new ParleyError(
          ErrorCode.FORBIDDEN,
          "the HTTP API takes an API key (Authorization: Bearer pk_...), not a user's token: a user's token is for the WebSocket and the user routes (uploads, push)",
        ),
        403,
      )
    const record = parts ? await options.keys.get(parts.id) : undefined
    // One answer for every failure: a prober learns nothing about which ids exist.
    if (!parts || !record || record.revokedAt !== undefined || !secretMatches(record, parts.secret))
      return problemResponse(
        c,
        new ParleyError(ErrorCode.UNAUTHORIZED, "a valid API key is required (Authorization: Bearer pk_...)"),
        401,
        { "www-authenticate": 'Bearer realm="parley"' },
      )
    credentialsVerified()
    let bucket = buckets.get(record.id)
    if (!bucket) {
      bucket = new RateLimiter(limits.requestsPerSecond, limits.requestBurst)
      buckets.set(record.id, bucket)
    }
    const taken = bucket.take()
    // A body's further shares are charged as declared, before it is read: charged once it had
    // arrived whole, a body sent one byte short paid none, and a key held 330 MB of the relay's memory
    // in bodies that never finished (an outside probe). What a body brings past its declared length
    // (a chunked one declares none) is charged once it arrived.
    if (taken) bucket.spend(bodyShares(Math.min(declaredLength(c), limits.maxBodyBytes)))
    if (!taken)
      return problemResponse(
        c,
        new ParleyError(ErrorCode.RATE_LIMITED, "too many requests for this API key"),
        429,
        // Until a request's worth is back: a key in debt (sealed reads, bodies) waits longer than a request's.
        { "retry-after": String(Math.max(1, Math.ceil(bucket.msUntil(1) / 1000))) },
      )
    c.set("key", record)
    await next()
  }

  // The whole document, the push routes included (see `openApiDocument`), made and serialized once on
  // first request: serialized per request, its 100 KB cost 2-4 ms each, open to anyone (an outside probe).
  let served: string | undefined
  app.get("/v1/openapi.json", (c) => {
    served ??= JSON.stringify(openApiDocument())
    return c.body(served, 200, { "content-type": "application/json" })
  })
  // Authenticated first: a stranger's body is never read, whatever its length.
  app.use("/v1/*", async (c, next) => {
    if (c.req.path === "/v1/openapi.json") return next()
    return authenticate(c, next)
  })
  // While storage fails every write would fail too, only after waiting for a storage deadline (its
  // idempotency record, a document to load): refused at once, as the update path refuses a client's.
  app.use("/v1/*", async (c, next) => {
    if (options.storage && !options.storage.available && c.req.method !== "GET" && c.req.method !== "HEAD")
      throw storageUnavailable("storage is failing: writes are refused until it answers again; retry later")
    return next()
  })
  // A parameter given twice is refused by name: the schemas read one value, and a repeated `limit` was
  // reported as "received NaN".
  app.use("/v1/*", async (c, next) => {
    const seen = new Set<string>()
    for (const key of new URL(c.req.url).searchParams.keys()) {
      if (seen.has(key)) throw refuse(ErrorCode.INVALID_ARGUMENT, `query ${key}: given more than once`)
      seen.add(key)
    }
    return next()
  })
  app.use("/v1/*", ...limitBody(limits.maxBodyBytes))
  // Every string of every body, metadata's too, is stored as the request says or refused (400).
  // A body's parse, walk and validation cost with its size (a 200 KB one 40–70 ms): beyond its first 16 KiB
  // it takes more of the key's rate, a request's worth per 16 KiB (one past the burst waits for the refill).
  app.use(
    "/v1/*",
    requireWellFormedJson((c, bytes) => {
      const key = (c as Context<Env>).get("key")
      const extra = bodyShares(bytes) - bodyShares(Math.min(declaredLength(c), limits.maxBodyBytes))
      if (key && extra > 0) buckets.get(key.id)?.spend(extra)
    }),
  )

  const need = (c: Context<Env>, scope: ApiScope) => {
    const key = c.get("key")
    if (!key.scopes.includes(scope))
      throw refuse(ErrorCode.FORBIDDEN, `this API key lacks the scope ${JSON.stringify(scope)}`)
    return key
  }
  /** The actor of a write needing `scope`: the key's own participant, or `asUser` (with `act-as-user`). */
  const actorOf = (c: Context<Env>, scope: ApiScope, asUser: string | undefined): Actor => {
    const key = need(c, scope)
    if (asUser === undefined)
      return {
        principal: { kind: "service", subject: key.name, user: serviceParticipant(key.name) },
        user: serviceParticipant(key.name),
      }
    need(c, "act-as-user")
    const user = asUser as UserId
    return { principal: { kind: "service", subject: key.name, user }, user }
  }
  const reply = (c: Context, data: unknown, status: ContentfulStatusCode = 200) =>
    c.json(data as never, status) as never
  // A write's answer is a read of what it wrote to (another's last message, someone's reactions): whole
  // only to a key that may read it, else what identifies it. A write scope is no read scope.
  const conversationAnswer = (c: Context<Env>, view: ConversationView) =>
    c.get("key").scopes.includes("conversations:read")
      ? conversationRead(c, view)
      : { id: view.id, kind: view.kind }
  /**
   * A conversation as `conversations:read` sees it: its last message (someone's words) only with
   * `messages:read` too. Without it, a key made to manage rooms read every room's latest message.
   */
  const conversationRead = (c: Context<Env>, view: ConversationView) => {
    if (c.get("key").scopes.includes("messages:read") || view.lastMessage === undefined) return view
    const { lastMessage: _, ...rest } = view
    return rest
  }
  const messageAnswer = (c: Context<Env>, view: MessageView) =>
    c.get("key").scopes.includes("messages:read")
      ? view
      : { id: view.id, ...(view.seq !== undefined ? { seq: view.seq } : {}) }
  /**
   * How a write refuses the message (`messages:read`) or participant (`conversations:read`) it names:
   * precisely to a key that may read it, else one refusal whatever the target is (see
   * `TargetRefusals`). A write scope is no read scope, in its refusals either.
   */
  const refusalsFor = (c: Context<Env>, scope: "messages:read" | "conversations:read"): TargetRefusals =>
    c.get("key").scopes.includes(scope) ? "precise" : "blind"
  /**
   * The answer to a write to a message that was there (an edit, a reaction): the message to a key that
   * may read it, else its id alone. Its number was someone else's message's place in the conversation
   * (only a send's answer carries one: the key wrote that message).
   */
  const targetAnswer = (messageId: string, view: MessageView | undefined) => view ?? { id: messageId }
  const conversationOrRef = (description: string) =>
    json(z.union([S.ConversationSchema, S.ConversationRefSchema]), description)
  const messageOrRef = (description: string) =>
    json(z.union([S.MessageSchema, S.MessageRefSchema]), description)
  const conversationId = (id: string) => id as ConversationId

  // --- conversations

  app.openapi(
    operation("conversations:write", {
      method: "post",
      path: "/v1/conversations",
      summary: "Create a group conversation",
      description: "The actor becomes its owner; each participant gets its role (default member).",
      request: body(S.CreateConversationBody),
      responses: { 201: conversationOrRef("Created") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "conversations:write", input.asUser)
      const refused = chargeAdditions(c, input.participants.length)
      if (refused) return refused as never
      return reply(c, conversationAnswer(c, await ops.createGroup(actor, input)), 201)
    },
  )

  app.openapi(
    operation("conversations:write", {
      method: "post",
      path: "/v1/conversations/direct",
      summary: "Find or create a direct conversation",
      description:
        "The direct conversation of the actor and `with`: 201 when created, 200 when it was there; to a key without `conversations:read`, 200 either way (whether two users talk is a read).",
      request: body(S.DirectConversationBody),
      responses: { 200: conversationOrRef("Found"), 201: conversationOrRef("Created") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "conversations:write", input.asUser)
      // Charged whether or not it exists (as a group's creation is): asking is what may add the other user.
      const refused = chargeAdditions(c, 1)
      if (refused) return refused as never
      const { conversation, created } = await ops.direct(actor, input.with as UserId)
      // 200 or 201 told a key that may not read whether the two users already talked (an outside probe).
      const told = created && c.get("key").scopes.includes("conversations:read")
      return reply(c, conversationAnswer(c, conversation), told ? 201 : 200)
    },
  )

  app.openapi(
    operation("conversations:read", {
      method: "get",
      path: "/v1/conversations/{id}",
      summary: "Get a conversation",
      description:
        "Participants, roles, read/delivered markers, and its last message to a key that also holds `messages:read`.",
      request: { params: S.ConversationParams },
      responses: { 200: json(S.ConversationSchema, "The conversation") },
    }),
    async (c) => {
      need(c, "conversations:read")
      return reply(c, conversationRead(c, await ops.get(conversationId(c.req.valid("param").id))))
    },
  )

  app.openapi(
    operation("conversations:write", {
      method: "patch",
      path: "/v1/conversations/{id}",
      summary: "Rename a conversation or set its metadata",
      request: { params: S.ConversationParams, ...body(S.UpdateConversationBody) },
      responses: { 200: conversationOrRef("The conversation after the change") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "conversations:write", input.asUser)
      return reply(
        c,
        conversationAnswer(c, await ops.update(conversationId(c.req.valid("param").id), actor, input)),
      )
    },
  )

  app.openapi(
    operation("conversations:write", {
      method: "delete",
      path: "/v1/conversations/{id}",
      summary: "Delete a conversation",
      request: { params: S.ConversationParams, query: S.AsUserQuery },
      responses: { 204: { description: "Deleted (or already deleted)" } },
    }),
    async (c) => {
      const actor = actorOf(c, "conversations:write", c.req.valid("query").asUser)
      await ops.delete(conversationId(c.req.valid("param").id), actor)
      return c.body(null, 204) as never
    },
  )

  app.openapi(
    operation("conversations:write", {
      method: "post",
      path: "/v1/conversations/{id}/participants",
      summary: "Add participants",
      request: { params: S.ConversationParams, ...body(S.AddParticipantsBody) },
      responses: { 200: json(S.ParticipantsChangeSchema, "The users added (present ones are skipped)") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "conversations:write", input.asUser)
      const refused = chargeAdditions(c, input.users.length)
      if (refused) return refused as never
      const users = await ops.addParticipants(
        conversationId(c.req.valid("param").id),
        actor,
        input.users as UserId[],
        input.role,
      )
      return reply(c, { users })
    },
  )

  app.openapi(
    operation("conversations:write", {
      method: "delete",
      path: "/v1/conversations/{id}/participants/{user}",
      summary: "Remove a participant",
      description:
        "Anyone may remove themselves (leave). To a key without `conversations:read`, the actor's own rights come first (a member removing another is refused `admin-only`, whoever it names), then a user who is not a participant, or whom the actor may not remove, is refused with one 404 (`no participant … that <actor> may remove`).",
      request: { params: S.ParticipantParams, query: S.AsUserQuery },
      responses: { 200: json(S.ParticipantsChangeSchema, "The users removed (empty when absent)") },
    }),
    async (c) => {
      const actor = actorOf(c, "conversations:write", c.req.valid("query").asUser)
      const { id, user } = c.req.valid("param")
      return reply(c, {
        users: await ops.removeParticipant(
          conversationId(id),
          actor,
          user as UserId,
          refusalsFor(c, "conversations:read"),
        ),
      })
    },
  )

  app.openapi(
    operation("conversations:write", {
      method: "put",
      path: "/v1/conversations/{id}/participants/{user}/role",
      summary: "Change a participant's role",
      description:
        "To a key without `conversations:read`, the actor's own rights come first (a member is refused `admin-only`, whoever it names, and whether or not the role is set already), then a user who is not a participant, or whose role the actor may not change, is refused with one 404 (`no participant … whose role <actor> may change`).",
      request: { params: S.ParticipantParams, ...body(S.ChangeRoleBody) },
      responses: { 200: conversationOrRef("The conversation after the change") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "conversations:write", input.asUser)
      const { id, user } = c.req.valid("param")
      return reply(
        c,
        conversationAnswer(
          c,
          await ops.changeRole(
            conversationId(id),
            actor,
            user as UserId,
            input.role,
            refusalsFor(c, "conversations:read"),
          ),
        ),
      )
    },
  )

  // --- messages

  app.openapi(
    operation("messages:write", {
      method: "post",
      path: "/v1/conversations/{id}/messages",
      summary: "Send a message (idempotent)",
      description:
        "With a message `id` or an `Idempotency-Key` header, a replay returns the message with 200 instead of sending another, however old the first send (also once the message is sealed into history), racing it, or after a relay restart; 409 when the id or key was used for a different message (another body, author or field). A client-chosen `id` with `asUser` needs `messages:read` too (403): the replay's comparison would tell a key that may not read whether it guessed another user's message.",
      request: { params: S.ConversationParams, headers: S.IdempotencyHeaders, ...body(S.SendMessageBody) },
      responses: {
        201: messageOrRef("Sent"),
        200: messageOrRef("Sent before (a retry)"),
      },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "messages:write", input.asUser)
      // A send under an id the conversation has compares that message with this one (200 or 409): as
      // another user, a key that may not read would learn whether a guessed body is theirs. Its own
      // Idempotency-Key's ids are derived from the key, so nobody else's message is ever under one.
      if (
        input.id !== undefined &&
        input.asUser !== undefined &&
        !c.get("key").scopes.includes("messages:read")
      )
        throw refuse(
          ErrorCode.FORBIDDEN,
          'a message id chosen by the client, with asUser, needs the scope "messages:read" (a replay is compared with the message stored under that id); send with an Idempotency-Key header instead',
        )
      const idempotencyKey = c.req.valid("header")["idempotency-key"]
      const derived =
        idempotencyKey === undefined ? undefined : idempotentMessageId(c.get("key").id, idempotencyKey)
      if (derived && input.id !== undefined && input.id !== derived)
        throw refuse(ErrorCode.INVALID_ARGUMENT, "give a message id or an Idempotency-Key, not both")
      const { asUser: _, ...message } = input
      const { message: sent, created } = await ops.send(
        conversationId(c.req.valid("param").id),
        actor,
        {
          ...(message as Omit<typeof message, "id">),
          id: (derived ?? input.id ?? newId()) as MessageId,
          idempotent: derived !== undefined || input.id !== undefined,
        } as never,
        searchReads(c),
      )
      return reply(c, messageAnswer(c, sent), created ? 201 : 200)
    },
  )

  app.openapi(
    operation("messages:read", {
      method: "get",
      path: "/v1/conversations/{id}/messages",
      summary: "List messages by sequence number",
      description: `Pages through the whole conversation, sealed history included: without \`after\` or \`before\` the latest \`limit\` messages; \`next\` gives the cursor of the next page (older ones for \`before\` and the latest, newer ones for \`after\`), absent at the end. Messages are in sequence order within a page, deleted ones as placeholders (\`type: "deleted"\`, empty body). Cursors are sequence numbers, so pages stay put while messages arrive. A page looks at no more than ${SEALED_SCAN_LIMIT.toLocaleString("en")} sealed messages in no more than ${SEALED_READS_PER_PAGE} sealed segments (and history directory pages): a page may hold fewer than \`limit\`, with \`type\` even none, and still have a \`next\` (with nothing yet, the cursor you sent; the relay holds what it read, the next page goes further): continue with it. Each segment a page looks at takes a request's worth of the key's rate; a page that could look at none is answered 429 \`RATE_LIMITED\` (rule \`${SEALED_READS_PER_KEY}\`) with \`Retry-After\`.`,
      request: { params: S.ConversationParams, query: S.MessagesQuery },
      responses: { 200: json(S.MessageListSchema, "Messages in sequence order, and the next page's cursor") },
    }),
    async (c) => {
      need(c, "messages:read")
      try {
        return reply(
          c,
          await ops.messages(conversationId(c.req.valid("param").id), c.req.valid("query"), pageReads(c)),
        )
      } catch (error) {
        if (!(error instanceof ParleyError) || error.rule !== SEALED_READS_PER_KEY) throw error
        const wait = buckets.get(c.get("key").id)?.msUntil(1) ?? 0
        return problemResponse(c, error, 429, {
          "retry-after": String(Math.max(1, Math.ceil(wait / 1000))),
        }) as never
      }
    },
  )

  app.openapi(
    operation("messages:write", {
      method: "patch",
      path: "/v1/conversations/{id}/messages/{messageId}",
      summary: "Edit a message (its author only)",
      description:
        'To a key without `messages:read`, a message that is not there, deleted or another\'s is refused with one 404 (`no message … that <actor> may edit`), and the answer is `{"id"}`.',
      request: { params: S.MessageParams, ...body(S.EditMessageBody) },
      responses: { 200: messageOrRef("The message after the edit") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "messages:write", input.asUser)
      const { id, messageId } = c.req.valid("param")
      const edited = await ops.edit(
        conversationId(id),
        actor,
        messageId as MessageId,
        input.body,
        refusalsFor(c, "messages:read"),
      )
      return reply(c, targetAnswer(messageId, edited))
    },
  )

  app.openapi(
    operation("messages:write", {
      method: "delete",
      path: "/v1/conversations/{id}/messages/{messageId}",
      summary: "Delete a message (its author, owners and admins)",
      description:
        "To a key without `messages:read`, a message that is not there or that the actor may not delete (another's, to a member), deleted already or not, is refused with one 404 (`no message … that <actor> may delete`).",
      request: { params: S.MessageParams, query: S.AsUserQuery },
      responses: { 204: { description: "Deleted (or already deleted)" } },
    }),
    async (c) => {
      const actor = actorOf(c, "messages:write", c.req.valid("query").asUser)
      const { id, messageId } = c.req.valid("param")
      await ops.deleteMessage(
        conversationId(id),
        actor,
        messageId as MessageId,
        refusalsFor(c, "messages:read"),
      )
      return c.body(null, 204) as never
    },
  )

  app.openapi(
    operation("messages:read", {
      method: "get",
      path: "/v1/conversations/{id}/pins",
      summary: "The pinned messages (sticky, not unpinned), oldest first",
      request: { params: S.ConversationParams },
      responses: { 200: json(S.MessageListSchema, "The pinned messages") },
    }),
    async (c) => {
      need(c, "messages:read")
      return reply(c, await ops.pinned(conversationId(c.req.valid("param").id)))
    },
  )

  app.openapi(
    operation("messages:write", {
      method: "delete",
      path: "/v1/conversations/{id}/pins/{messageId}",
      summary: "Unpin a sticky message (its author, owners and admins)",
      description:
        "Refused with 403 and rule `unpin-author-or-admin` for anyone else. To a key without `messages:read`, a message that is not there, deleted, not sticky or not the actor's to unpin is refused with one 404 (`no pinned message … that <actor> may unpin`).",
      request: { params: S.MessageParams, query: S.AsUserQuery },
      responses: { 204: { description: "Unpinned (or already unpinned)" } },
    }),
    async (c) => {
      const actor = actorOf(c, "messages:write", c.req.valid("query").asUser)
      const { id, messageId } = c.req.valid("param")
      await ops.unpin(conversationId(id), actor, messageId as MessageId, refusalsFor(c, "messages:read"))
      return c.body(null, 204) as never
    },
  )

  app.openapi(
    operation("messages:write", {
      method: "post",
      path: "/v1/conversations/{id}/messages/{messageId}/reactions",
      summary: "React to a message",
      description:
        'To a key without `messages:read`, the answer is `{"id"}`, and a message that is not there (or deleted) is refused with 404: a reaction is added only to a message that is there, so its success tells that the id exists.',
      request: { params: S.MessageParams, ...body(S.ReactBody) },
      responses: { 200: messageOrRef("The message with its reactions") },
    }),
    async (c) => {
      const input = c.req.valid("json")
      const actor = actorOf(c, "messages:write", input.asUser)
      const { id, messageId } = c.req.valid("param")
      const view = await ops.react(
        conversationId(id),
        actor,
        messageId as MessageId,
        input.emoji,
        true,
        refusalsFor(c, "messages:read"),
      )
      return reply(c, targetAnswer(messageId, view))
    },
  )

  app.openapi(
    operation("messages:write", {
      method: "delete",
      path: "/v1/conversations/{id}/messages/{messageId}/reactions/{emoji}",
      summary: "Remove a reaction",
      description:
        'To a key without `messages:read`, the answer is `{"id"}` for any id: removing a reaction that is not there, from any message or none, changes nothing.',
      request: { params: S.ReactionParams, query: S.AsUserQuery },
      responses: { 200: messageOrRef("The message with its reactions") },
    }),
    async (c) => {
      const actor = actorOf(c, "messages:write", c.req.valid("query").asUser)
      const { id, messageId, emoji } = c.req.valid("param")
      const view = await ops.react(
        conversationId(id),
        actor,
        messageId as MessageId,
        emoji,
        false,
        refusalsFor(c, "messages:read"),
      )
      return reply(c, targetAnswer(messageId, view))
    },
  )

  for (const which of ["read", "delivered"] as const) {
    app.openapi(
      operation("messages:write", {
        method: "post",
        path: `/v1/conversations/{id}/${which}`,
        summary: which === "read" ? "Mark read up to a message" : "Mark delivered up to a message",
        description: `Moves the actor's ${which} marker (forward only) to \`upTo\`, or to the latest message.${which === "read" ? " Reading implies delivery." : ""} To a key without \`messages:read\`, a message id the conversation does not have is refused with 404 (so its success tells that the id exists), and the answer is \`{"user"}\` alone.`,
        request: { params: S.ConversationParams, ...body(S.MarkReadBody) },
        responses: {
          200: json(
            z.union([S.MarkReadResultSchema, S.MarkerRefSchema]),
            "The markers after the change (whose they are, to a key without `messages:read`)",
          ),
        },
      }),
      async (c) => {
        const input = c.req.valid("json")
        const actor = actorOf(c, "messages:write", input.asUser)
        const refusals = refusalsFor(c, "messages:read")
        const markers = await ops.mark(
          which,
          conversationId(c.req.valid("param").id),
          actor,
          input.upTo,
          refusals,
        )
        // The numbers were a read: where a message named is, how many the conversation holds.
        return reply(c, refusals === "precise" ? markers : { user: markers.user })
      },
    )
  }

  // --- users

  app.openapi(
    operation("conversations:read", {
      method: "get",
      path: "/v1/users/{user}/conversations",
      summary: "A user's conversations with unread counts",
      description:
        "Newest activity first, paged by `offset`/`limit`. Kept current by the relay shortly after each change. Each entry's `lastMessage` (a preview of someone's words) only to a key that also holds `messages:read`.",
      request: { params: S.UserParams, query: S.PageQuery },
      responses: { 200: json(S.InboxPageSchema, "One page") },
    }),
    async (c) => {
      need(c, "conversations:read")
      const { offset, limit } = c.req.valid("query")
      const page = await ops.inbox(c.req.valid("param").user as UserId, offset, limit)
      // The previews are someone's words: with `messages:read` only, as a conversation's last message.
      if (c.get("key").scopes.includes("messages:read")) return reply(c, page)
      return reply(c, {
        ...page,
        conversations: page.conversations.map(({ lastMessage: _, ...entry }) => entry),
      })
    },
  )

  app.openapi(
    operation("conversations:read", {
      method: "get",
      path: "/v1/users/{user}/unread",
      summary: "A user's unread totals",
      request: { params: S.UserParams },
      responses: { 200: json(S.UnreadSchema, "Unread messages, in all and per conversation") },
    }),
    async (c) => {
      need(c, "conversations:read")
      return reply(c, await ops.unread(c.req.valid("param").user as UserId))
    },
  )

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/users/{user}/content",
      summary: "Erase everything a user wrote (GDPR)",
      description:
        "Every message the user wrote, in every conversation and sealed history segment, becomes a deletion placeholder, written through the relay's update path (connected devices are told); the relay then purges the text from its logs, snapshots, hook events and inboxes, and deletes every file the user uploaded, sent with a message or not. Answers once all of it is written; idempotent (run again, `messages` is 0). One erasure runs at a time. The user stays a participant: remove them separately if wanted.\n\nScope: `users:erase`.",
      request: { params: S.UserParams, query: S.NoQuery },
      security: [{ apiKey: ["users:erase"] }],
      responses: {
        200: json(S.ErasureSchema, "What was erased"),
        ...PROBLEMS,
        503: {
          description: "Erasure is not available on this relay, or storage is failing (retryable)",
          content: problemContent,
        },
      },
    }),
    async (c) => {
      need(c, "users:erase")
      const user = c.req.valid("param").user as UserId
      if (!options.erase) throw refuse(ErrorCode.UNAVAILABLE, "erasure is not available on this relay")
      return reply(c, { user, ...(await options.erase(user)) })
    },
  )

  // --- events

  app.openapi(
    operation("events:read", {
      method: "get",
      path: "/v1/events",
      summary: "Stream events (Server-Sent Events)",
      description:
        "The hooks' typed events as SSE: `id:` is the event log position, `event:` the type, `data:` the JSON event. Resume with `Last-Event-ID` (after a disconnect or a relay restart) within the log's retention; `: ping` every heartbeat; `retry:` set. Without `Last-Event-ID` or `after`, starts with events recorded from now on.",
      request: { query: S.EventsQuery, headers: S.EventsHeaders },
      responses: {
        200: {
          description: "The event stream",
          content: { "text/event-stream": { schema: S.EventStreamSchema } },
        },
        410: { description: "Resumed from an event no longer kept: start again", content: problemContent },
        503: { description: "This relay keeps no event log", content: problemContent },
      },
    }),
    async (c) => {
      const key = need(c, "events:read")
      const query = c.req.valid("query")
      const after = c.req.valid("header")["last-event-id"] ?? query.after
      // The key again before every batch (from the key cache: a storage read per key every few seconds).
      const stillValid = async () => {
        const record = await options.keys.get(key.id)
        return record !== undefined && record.revokedAt === undefined
      }
      return streams.open(
        c,
        key.id,
        {
          ...(after !== undefined ? { after } : {}),
          ...(query.conversation !== undefined ? { conversation: query.conversation as ConversationId } : {}),
          ...(query.user !== undefined ? { user: query.user as UserId } : {}),
          ...(query.type !== undefined && query.type.length > 0 ? { types: query.type } : {}),
        },
        stillValid,
      ) as never
    },
  )

  return app
}

const newId = (): string => `api_${crypto.randomUUID().replaceAll("-", "")}`

/** The OpenAPI document's info. */
export const openApiInfo = {
  openapi: "3.1.0",
  info: {
    title: "Parley relay HTTP API",
    version: "1",
    description:
      "Server-to-server API of the Parley relay: backends create conversations, send and read messages, and stream events. Authenticate with an API key (`parley-relay keys create`). Errors are RFC 9457 problem details (`application/problem+json`) carrying Parley's error `code`.",
  },
} as const

/** The OpenAPI 3.1 document of the API, generated from the same schemas that validate requests. */
export function openApiDocument(): Record<string, unknown> {
  const unused = () => {
    throw new Error("the document is generated without serving requests")
  }
  const app = createApi({
    core: { read: unused, write: unused, derive: unused, deriveDeferredEach: unused, isConnected: unused },
    keys: { create: unused, get: unused, list: unused, revoke: unused },
    idempotency: { begin: unused, complete: unused, advance: unused },
    log: { error: unused, warn: unused } as unknown as Logger,
  })
  const doc = app.getOpenAPI31Document(openApiInfo) as unknown as {
    paths: Record<string, unknown>
    components: { securitySchemes: Record<string, unknown>; schemas: Record<string, unknown> }
  }
  // The devices' push registration routes (relay/src/push/routes.ts) are served beside the API.
  const push = pushOpenApiPart()
  // So are the attachment routes (relay/src/attachments/routes.ts).
  const attachments = attachmentsOpenApiPart()
  return {
    ...doc,
    paths: { ...doc.paths, ...push.paths, ...attachments.paths },
    components: {
      ...doc.components,
      schemas: { ...doc.components.schemas, ...push.schemas, ...attachments.schemas },
      securitySchemes: {
        ...doc.components.securitySchemes,
        ...push.securitySchemes,
        ...attachments.securitySchemes,
      },
    },
  }
}
