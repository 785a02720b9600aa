import type { ServerResponse } from "node:http"
import { Readable } from "node:stream"
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi"
import {
  type ConversationId,
  ErrorCode,
  holdsNameControls,
  isAttachmentId,
  ParleyError,
  type UserId,
  UserLimit,
} from "@parley/shared"
import type { Context, MiddlewareHandler } from "hono"
import { limitBody } from "../api/body-limit.js"
import { type ApiKeyStore, type ApiScope, secretMatches, splitApiKey } from "../api/keys.js"
import { describeOnly, type OpenApiPart, openApiPartOf } from "../api/openapi-part.js"
import { problemApp, problemResponse } from "../api/problem.js"
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
import { type Principal, SERVICE_PARTICIPANT_PREFIX, serviceParticipant } from "../principal.js"
import { endWhenStalled } from "../stalled-reader.js"
import type { BlobStore } from "./blob-store.js"
import { type ChunkSlot, ChunkSlots } from "./chunk-slots.js"
import { INLINE_IMAGES } from "./content-type.js"
import { DownloadSlots, releasing } from "./downloads.js"
import type { LinkPreviewGate } from "./link-preview-gate.js"
import { type AttachmentRecord, attachmentOf, fileKey, servedKey, thumbnailKey } from "./records.js"
import { type AttachmentService, RefusedTypeError } from "./service.js"
import { signUrl, verifyUrl } from "./signing.js"
import type { UploadQuota } from "./user-quota.js"

/** What the attachment routes are built on. */
export interface AttachmentRoutesOptions {
  readonly service: AttachmentService
  readonly store: BlobStore
  readonly quota: UploadQuota
  /** Verifies a user's token (the relay's `Authenticator.verify`). */
  verify(token: string): Promise<Principal>
  /** The API's keys: a backend may upload (`messages:write`) and download (`messages:read`) as its `service.<name>` participant. */
  readonly keys?: ApiKeyStore
  /** The URL-signing secret (see signing.ts), resolved at start. */
  secret(): Buffer
  /** How long a signed URL holds, in seconds. */
  readonly signedUrlSeconds: number
  /** Chunks being received at once on this relay, all users together (each buffers up to a chunk). */
  readonly maxChunksInFlight: number
  /** How slowly a chunk may arrive before it is cut off with 408 (what arrived is kept). */
  readonly chunkPace: { readonly idleMs: number; readonly minBytesPerSecond: number }
  /**
   * Downloads being sent to one user at once, all their connections and signed URLs together
   * (429 beyond), and how long one may take no bytes before it is ended: each holds a socket,
   * an open file or a database read, and a chunk in memory while its reader does not read.
   */
  readonly downloads: { readonly perUser: number; readonly idleMs: number }
  /** Told of every refusal by a per-user download limit (metrics, logs). */
  readonly onUserLimit?: (limit: UserLimit, user: UserId) => void
  /** Link previews, within their limits (only with `--link-previews`). */
  readonly linkPreviews?: LinkPreviewGate
  /** The per-user request budget users' own tokens and signed URLs are held to (API keys are not). */
  readonly requests?: RequestBudget
  readonly log: Logger
  readonly now?: () => number
}

type Env = {
  Variables: { user: UserId }
  /** Set by `@hono/node-server` (absent in `app.request` tests). */
  Bindings: { outgoing?: ServerResponse }
}

const problems = (statuses: readonly (readonly [number, string])[]) =>
  Object.fromEntries(
    statuses.map(([status, description]) => [
      status,
      { description, content: { "application/problem+json": { schema: ProblemSchema } } },
    ]),
  )
const AUTH = [
  [401, "No user token, or an invalid one"],
  [403, "The token is not a user's"],
] as const
const BUDGET = [
  429,
  "The user's HTTP request budget is spent (`http-requests-per-user`, `Retry-After`)",
] as const
const DOWNLOADS_AT_ONCE = [
  429,
  "The user's HTTP request budget is spent (`http-requests-per-user`), or as many downloads are being sent to the user as `--attachment-downloads-per-user` allows (`downloads-at-once-per-user`); `Retry-After`",
] as const
const security: Record<string, string[]>[] = [{ userToken: [] }, { apiKey: ["messages:write"] }]
const readSecurity: Record<string, string[]>[] = [{ userToken: [] }, { apiKey: ["messages:read"] }]

const AttachmentSchema = z
  .object({
    kind: z.literal("file"),
    id: z.string().openapi({ example: "att_0123456789abcdefghjkmnpqrs" }),
    url: z.string().openapi({ example: "/v1/attachments/att_0123456789abcdefghjkmnpqrs" }),
    name: z.string(),
    mimeType: z
      .string()
      .optional()
      .openapi({ description: "Sniffed from the bytes, never the client's claim." }),
    size: z.number().int(),
    width: z.number().int().optional(),
    height: z.number().int().optional(),
    thumbnail: z.object({ url: z.string(), width: z.number().int(), height: z.number().int() }).optional(),
  })
  .openapi("UploadedAttachment")

const CreateUploadSchema = z
  .object({
    name: z
      .string()
      .min(1)
      .max(255)
      .refine((name) => !holdsNameControls(name), {
        message: "a file name without control characters or bidirectional overrides",
      }),
    size: z.number().int().min(1),
    mimeType: z
      .string()
      .max(255)
      .optional()
      .openapi({ description: "The client's claim: logged, never trusted." }),
  })
  .strict()
  .openapi("CreateUpload")

const UploadSchema = z
  .object({
    uploadId: z.string(),
    offset: z.number().int(),
    size: z.number().int(),
    chunkBytes: z.number().int().openapi({ description: "The largest chunk one PATCH may carry." }),
    expiresAt: z.number().int().openapi({ description: "Unix ms: unreferenced uploads are deleted then." }),
  })
  .openapi("Upload")

const UploadParam = z.object({ uploadId: z.string().max(64) })
const AttachmentParam = z.object({ id: z.string().max(64) })
const SignedQuery = z.object({
  exp: z.string().max(16).optional(),
  u: z.string().max(256).optional(),
  sig: z.string().max(64).optional(),
})

const createUploadRoute = createRoute({
  method: "post",
  path: "/v1/conversations/{conversationId}/uploads",
  summary: "Start uploading an attachment",
  description:
    "Opens a resumable upload to a conversation the caller may send messages to. Send the bytes with PATCH /v1/uploads/{uploadId}, at most `chunkBytes` a request.",
  security,
  request: {
    params: z.object({ conversationId: z.string().max(300) }),
    body: { required: true, content: { "application/json": { schema: CreateUploadSchema } } },
  },
  responses: {
    201: { description: "Upload opened", content: { "application/json": { schema: UploadSchema } } },
    ...problems([
      [400, "Malformed body"],
      ...AUTH,
      [404, "No such conversation, or the caller may not send to it"],
      [413, "The declared size exceeds the relay's attachment limit"],
      [
        429,
        "The user opened too many uploads this minute (60), or spent their HTTP request budget (`Retry-After`)",
      ],
    ]),
  },
})
const headUploadRoute = createRoute({
  method: "head",
  path: "/v1/uploads/{uploadId}",
  summary: "Where an upload stands (to resume it)",
  security,
  request: { params: UploadParam },
  responses: {
    204: {
      description: "`Upload-Offset`: bytes stored; `Upload-Length`: the declared size",
      headers: z.object({ "Upload-Offset": z.string(), "Upload-Length": z.string() }),
    },
    401: { description: "No user token, or an invalid one" },
    404: { description: "No such upload of the caller's" },
    429: { description: "The user's HTTP request budget is spent (`Retry-After`)" },
  },
})
const patchUploadRoute = createRoute({
  method: "patch",
  path: "/v1/uploads/{uploadId}",
  summary: "Send the next chunk of an upload",
  description:
    "Header `Upload-Offset` must be the bytes already stored (HEAD tells); the body is the next chunk, at most `chunkBytes`. Each chunk is stored whole or not at all. The last one completes the upload: the type is sniffed from the bytes, images get dimensions and a thumbnail.",
  security,
  request: {
    params: UploadParam,
    headers: z.object({ "upload-offset": z.string().regex(/^\d{1,15}$/) }),
    body: {
      required: true,
      content: { "application/offset+octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
    },
  },
  responses: {
    201: {
      description: "The last chunk: the attachment, for the message that carries it",
      content: { "application/json": { schema: z.object({ attachment: AttachmentSchema }) } },
    },
    204: { description: "Stored; header `Upload-Offset` is the new offset" },
    ...problems([
      [400, "Malformed offset, or a chunk past the declared size"],
      ...AUTH,
      [404, "No such upload of the caller's"],
      [
        408,
        "The chunk came too slowly (no byte for `--attachment-chunk-idle-ms`, or under `--attachment-chunk-min-bytes-per-second` after it): what arrived is stored, header `Upload-Offset` says where to resume",
      ],
      [409, "`Upload-Offset` is not the stored length (header `Upload-Offset` gives it): resume from there"],
      [413, "The chunk exceeds `chunkBytes`"],
      [
        415,
        "Not `application/offset+octet-stream`, or the sniffed type is not accepted (the upload is deleted)",
      ],
      [
        429,
        "The user is sending too many chunks at once, or too many bytes this minute or today, or spent their HTTP request budget (`Retry-After`)",
      ],
      [503, "The relay is receiving too many chunks at once (`Retry-After`)"],
    ]),
  },
})
const bytesResponses = (what: string) => ({
  200: {
    description: `${what}; \`Content-Type\` as sniffed, \`Content-Disposition\` inline for raster images only`,
    content: { "application/octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
  },
  206: { description: "The requested range (`Range: bytes=a-b`)" },
  304: { description: "Not modified (`If-None-Match`)" },
  ...problems([
    [401, "No token and no signature"],
    [
      404,
      "No such attachment, or the caller is not a participant of its conversation, or a wrong or expired signature",
    ],
    [416, "Range not satisfiable"],
    DOWNLOADS_AT_ONCE,
  ]),
})
const downloadRoute = createRoute({
  method: "get",
  path: "/v1/attachments/{id}",
  summary: "Download an attachment",
  description:
    "For participants of the attachment's conversation: a user token (`Authorization: Bearer`), or a signed URL (`?exp=&sig=`, from POST /v1/attachments/{id}/signed-url) for `<img src>`.",
  security: [...readSecurity, {}],
  request: { params: AttachmentParam, query: SignedQuery },
  responses: bytesResponses("The attachment"),
})
const thumbnailRoute = createRoute({
  method: "get",
  path: "/v1/attachments/{id}/thumbnail",
  summary: "Download an image attachment's thumbnail (WebP, at most 320 px a side)",
  security: [...readSecurity, {}],
  request: { params: AttachmentParam, query: SignedQuery },
  responses: bytesResponses("The thumbnail"),
})
const signRoute = createRoute({
  method: "post",
  path: "/v1/attachments/{id}/signed-url",
  summary: "A short-lived URL to an attachment, for `<img src>` and downloads without a header",
  security: readSecurity,
  request: { params: AttachmentParam },
  responses: {
    200: {
      description: "Paths relative to the relay's origin, valid until `expiresAt` (unix ms)",
      content: {
        "application/json": {
          schema: z
            .object({ url: z.string(), thumbnailUrl: z.string().optional(), expiresAt: z.number().int() })
            .openapi("SignedAttachmentUrl"),
        },
      },
    },
    ...problems([
      ...AUTH,
      [404, "No such attachment, or the caller is not a participant of its conversation"],
      BUDGET,
    ]),
  },
})
const linkPreviewRoute = createRoute({
  method: "get",
  path: "/v1/link-preview",
  summary: "Title and description of a public web page (only with --link-previews)",
  description:
    "Fetched by the relay: http(s) only, public addresses only (the host's addresses are checked), a 5 s timeout, at most 512 KiB of `text/html`.",
  security: readSecurity,
  request: { query: z.object({ url: z.string().max(2048) }) },
  responses: {
    200: {
      description: "What the page says about itself",
      content: {
        "application/json": {
          schema: z
            .object({ url: z.string(), title: z.string().optional(), description: z.string().optional() })
            .openapi("LinkPreview"),
        },
      },
    },
    ...problems([
      [400, "Not an http(s) URL, or a private address"],
      ...AUTH,
      [404, "Link previews are off on this relay"],
      [
        429,
        "The user has too many previews being fetched at once, fetched too many this minute, or spent their HTTP request budget (`Retry-After`)",
      ],
      [503, "The page could not be fetched, or is not HTML, or the relay fetches too many at once"],
    ]),
  },
})

const CACHE_SECONDS = 3600

/** Largest body of an upload's creation (its JSON: a name and a type of at most 255 characters, a size). */
const CREATE_UPLOAD_MAX_BODY_BYTES = 8 * 1024

function contentDisposition(record: AttachmentRecord, thumbnail: boolean): string {
  const inline = thumbnail || INLINE_IMAGES.has(record.mimeType ?? "")
  const name = thumbnail ? `${record.name}.thumbnail.webp` : record.name
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, "_")
  return `${inline ? "inline" : "attachment"}; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`
}

/** `[start, end)` of a single `bytes=` range, "unsatisfiable", or undefined for no (or an ignored) range. */
function parseRange(
  header: string | undefined,
  length: number,
): { start: number; end: number } | "unsatisfiable" | undefined {
  const match = header ? /^bytes=(\d*)-(\d*)$/.exec(header.trim()) : null
  if (!match || (match[1] === "" && match[2] === "")) return undefined
  let start: number
  let end: number
  if (match[1] === "") {
    start = Math.max(0, length - Number(match[2]))
    end = length
  } else {
    start = Number(match[1])
    end = match[2] === "" ? length : Math.min(length, Number(match[2]) + 1)
  }
  if (start >= length || start >= end) return "unsatisfiable"
  return { start, end }
}

/** A chunk's sender stalled or trickled below the relay's floor, or its slot went to another chunk; `received` is what arrived. */
class SlowChunk extends Error {
  constructor(
    readonly received: Uint8Array,
    readonly preempted: boolean,
  ) {
    super("slow chunk")
  }
}

/**
 * Reads a chunk's body, at most `max` bytes (undefined beyond), counting what
 * arrived in its `slot`. A sender that sends nothing for `idleMs`, or less
 * than `minBytesPerSecond` on average once `idleMs` has passed, is cut off
 * with {@link SlowChunk}: a slot of the chunks in flight (and of its user's)
 * is not held for minutes by a trickle; so is one whose slot another chunk
 * took (see {@link ChunkSlots}).
 */
async function readChunk(
  body: ReadableStream<Uint8Array> | null,
  max: number,
  pace: { readonly idleMs: number; readonly minBytesPerSecond: number },
  slot: ChunkSlot,
): Promise<Uint8Array | undefined> {
  if (!body) return new Uint8Array(0)
  const parts: Uint8Array[] = []
  let length = 0
  const reader = body.getReader()
  const started = performance.now()
  let lastByte = started
  const tooSlow = () => {
    if (slot.preempted.aborted) return true
    const now = performance.now()
    if (now - lastByte >= pace.idleMs) return true
    const elapsed = now - started
    return elapsed >= pace.idleMs && (length * 1000) / elapsed < pace.minBytesPerSecond
  }
  const cutOff = async () => {
    await reader.cancel().catch(() => {})
    return new SlowChunk(Buffer.concat(parts, length), slot.preempted.aborted)
  }
  const TICK = Symbol("tick")
  const preempted = new Promise<typeof TICK>((resolve) =>
    slot.preempted.addEventListener("abort", () => resolve(TICK), { once: true }),
  )
  let pending: Promise<ReadableStreamReadResult<Uint8Array>> | undefined
  for (;;) {
    pending ??= reader.read()
    let timer: NodeJS.Timeout | undefined
    const next = await Promise.race([
      pending,
      preempted,
      new Promise<typeof TICK>((resolve) => {
        timer = setTimeout(() => resolve(TICK), Math.min(1000, pace.idleMs))
      }),
    ]).finally(() => clearTimeout(timer))
    if (next === TICK) {
      if (!tooSlow()) continue
      throw await cutOff()
    }
    pending = undefined
    if (next.done) break
    length += next.value.length
    slot.received = length
    if (length > max) {
      await reader.cancel().catch(() => {})
      return undefined
    }
    if (next.value.length > 0) lastByte = performance.now()
    parts.push(next.value)
    if (tooSlow()) throw await cutOff()
  }
  return Buffer.concat(parts, length)
}

/**
 * The attachment routes (API.md "Attachments"): resumable uploads in the
 * style of tus (create, HEAD, PATCH at an offset), downloads for the
 * participants of the attachment's conversation (by token or signed URL),
 * and link previews when enabled.
 */
export function createAttachmentRoutes(options: AttachmentRoutesOptions): OpenAPIHono<Env> {
  const { service, store, quota } = options
  const now = options.now ?? Date.now
  const chunkBytes = service.options.chunkBytes
  // A chunk that would take longer than the idle limit to arrive whole at its pace gives up its slot
  // when every slot is taken and another chunk comes (1 MiB in 10 s: about 100 KiB a second).
  const slots = new ChunkSlots(options.maxChunksInFlight, (chunkBytes * 1000) / options.chunkPace.idleMs)
  const downloads = new DownloadSlots(options.downloads.perUser)
  const app = problemApp<Env>(options.log, "attachment route")
  registerUserTokenScheme(app)

  const userOf = async (c: Context): Promise<UserId | Response> => {
    const token = bearerToken(c)
    const key = token && options.keys ? splitApiKey(token) : undefined
    if (key) {
      // An API key: its own participant, with the scope the route needs.
      const record = await options.keys!.get(key.id)
      const scope: ApiScope =
        c.req.method === "GET" || c.req.path.endsWith("/signed-url") ? "messages:read" : "messages:write"
      if (!record || record.revokedAt !== undefined || !secretMatches(record, key.secret))
        return problemResponse(
          c,
          new ParleyError(ErrorCode.UNAUTHORIZED, "a valid API key or user token is required"),
          401,
          {
            "www-authenticate": 'Bearer realm="parley"',
          },
        )
      if (!record.scopes.includes(scope))
        return problemResponse(
          c,
          new ParleyError(ErrorCode.FORBIDDEN, `this API key lacks the scope ${scope}`),
          403,
        )
      return serviceParticipant(record.name)
    }
    const user = await userOfToken(c, token, options.verify, "attachments are uploaded by users")
    if (user instanceof Response) return user
    return overRequestBudget(c, options.requests, user) ?? user
  }
  const authenticate: MiddlewareHandler<Env> = async (c, next) => {
    // Downloads with a signature need no token.
    if (
      c.req.method === "GET" &&
      c.req.query("sig") !== undefined &&
      c.req.path.startsWith("/v1/attachments/")
    )
      return next()
    const user = await userOf(c)
    if (user instanceof Response) return user
    c.set("user", user)
    await next()
  }
  app.use("/v1/conversations/*", authenticate)
  app.use("/v1/uploads/*", authenticate)
  app.use("/v1/attachments/*", authenticate)
  app.use("/v1/link-preview", authenticate)
  // An upload's creation is a small JSON body (a name, a size, a type): read no more than that of it,
  // as the API and the push routes do (chunks are read by `readChunk`, bounded by the chunk size).
  app.use("/v1/conversations/:conversationId/uploads", ...limitBody(CREATE_UPLOAD_MAX_BODY_BYTES))
  // An upload's name goes into a message as the document stores strings (UTF-8): sent whole or refused.
  app.use("/v1/conversations/:conversationId/uploads", requireWellFormedJson())

  app.openapi(createUploadRoute, async (c) => {
    const body = c.req.valid("json")
    if (!quota.open(c.get("user")))
      return problemResponse(
        c,
        new ParleyError(ErrorCode.RATE_LIMITED, "too many uploads opened this minute"),
        429,
        {
          "retry-after": "1",
        },
      ) as never
    const record = await service.createUpload(
      c.req.valid("param").conversationId as ConversationId,
      c.get("user"),
      body,
    )
    return c.json(
      {
        uploadId: record.id,
        offset: 0,
        size: record.size,
        chunkBytes,
        expiresAt: record.createdAt + 24 * 60 * 60 * 1000,
      },
      201,
    )
  })

  // Hono answers HEAD with the GET handler (without the body): registered as GET, documented as HEAD.
  app.openAPIRegistry.registerPath(headUploadRoute)
  app.get("/v1/uploads/:uploadId", async (c) => {
    const { record, offset } = await service.session(c.req.param("uploadId"), c.get("user"))
    return c.body(null, 204, {
      "upload-offset": String(offset),
      "upload-length": String(record.size),
      "cache-control": "no-store",
    })
  })

  app.openapi(patchUploadRoute, async (c) => {
    const user = c.get("user")
    if ((c.req.header("content-type") ?? "").split(";")[0]!.trim() !== "application/offset+octet-stream")
      return problemResponse(
        c,
        new ParleyError(ErrorCode.INVALID_ARGUMENT, "a chunk is sent as application/offset+octet-stream"),
        415,
      )
    const offset = Number(c.req.valid("header")["upload-offset"])
    const { record, offset: stored } = await service.session(c.req.valid("param").uploadId, user)
    // Removed from the conversation (or it was deleted) since the upload began: it ends here.
    if (!(await service.maySend(record.conversation, user)))
      throw new ParleyError(ErrorCode.NOT_FOUND, "no such upload")
    if (record.complete || offset !== stored)
      return problemResponse(
        c,
        new ParleyError(ErrorCode.CONFLICT, `the upload holds ${stored} bytes: send from there`),
        409,
        { "upload-offset": String(stored) },
      )
    const declared = Number(c.req.header("content-length") ?? Number.NaN)
    if (declared > chunkBytes)
      return problemResponse(
        c,
        new ParleyError(ErrorCode.TOO_LARGE, `a chunk is at most ${chunkBytes} bytes`),
        413,
        { connection: "close" },
      )
    if (!slots.available())
      return problemResponse(
        c,
        new ParleyError(ErrorCode.UNAVAILABLE, "too many uploads at once: retry"),
        503,
        {
          "retry-after": "1",
        },
      )
    const cost = Number.isFinite(declared) ? declared : chunkBytes
    const taken = quota.take(user, cost)
    if (typeof taken === "string")
      return problemResponse(
        c,
        new ParleyError(
          ErrorCode.RATE_LIMITED,
          taken === "concurrent"
            ? "too many chunks of yours at once: wait for one to finish"
            : taken === "rate"
              ? "too many bytes a minute: slow down"
              : "you uploaded as many bytes as a day allows: the budget refills over 24 hours",
        ),
        429,
        { "retry-after": String(Math.max(1, Math.ceil(quota.retryAfterMs(user, cost) / 1000))) },
      )
    // Taken in the same turn as `available()` answered: a slot, or a slow chunk's.
    const slot = slots.take()!
    try {
      let chunk: Uint8Array | undefined
      try {
        chunk = await readChunk(c.req.raw.body, chunkBytes, options.chunkPace, slot)
      } catch (error) {
        if (!(error instanceof SlowChunk))
          // The client went away mid-chunk: nothing of it is stored, and nobody is left to answer.
          return problemResponse(c, new ParleyError(ErrorCode.INVALID_ARGUMENT, "the chunk was cut off"), 400)
        // What did arrive is kept: the client resumes from the offset it is told.
        const taken =
          error.received.length > 0 ? await service.appendChunk(record, offset, error.received) : undefined
        // What arrived may be all the upload lacked (a chunk that declared more than the rest): then it is done.
        if (taken?.completed)
          return c.json({ attachment: attachmentOf(taken.completed) }, 201, {
            "upload-offset": String(taken.offset),
          })
        const kept = taken?.offset ?? offset
        return problemResponse(
          c,
          new ParleyError(
            ErrorCode.TIMEOUT,
            error.preempted
              ? `the chunk came too slowly while the relay had no free slot for another one: ${kept} bytes are stored, send the rest from there`
              : `the chunk came too slowly (nothing for ${options.chunkPace.idleMs} ms, or under ${options.chunkPace.minBytesPerSecond} bytes a second): ${kept} bytes are stored, send the rest from there`,
          ),
          408,
          { "upload-offset": String(kept), connection: "close" },
        )
      }
      if (!chunk)
        return problemResponse(
          c,
          new ParleyError(ErrorCode.TOO_LARGE, `a chunk is at most ${chunkBytes} bytes`),
          413,
          {
            connection: "close",
          },
        )
      const result = await service.appendChunk(record, offset, chunk)
      if (!result.completed) return c.body(null, 204, { "upload-offset": String(result.offset) })
      return c.json({ attachment: attachmentOf(result.completed) }, 201, {
        "upload-offset": String(result.offset),
      })
    } catch (error) {
      if (error instanceof RefusedTypeError) return problemResponse(c, error, 415)
      if (error instanceof ParleyError && error.code === ErrorCode.CONFLICT) {
        // Another chunk got there first. Said in the upload's terms: the store's message names its key.
        const stored = (await store.size(fileKey(record))) ?? 0
        return problemResponse(
          c,
          new ParleyError(
            ErrorCode.CONFLICT,
            `Upload-Offset ${offset} is not where the upload stands: it holds ${stored} bytes, send from there`,
          ),
          409,
          { "upload-offset": String(stored) },
        )
      }
      throw error
    } finally {
      slot.release()
      taken()
    }
  })

  const serve = async (c: Context<Env>, thumbnail: boolean) => {
    const id = c.req.param("id") ?? ""
    const variant = thumbnail ? "thumbnail" : "file"
    let record: AttachmentRecord
    const sig = c.req.query("sig")
    if (sig !== undefined) {
      // A signed URL: the signature is checked before anything about the attachment is read.
      const user = c.req.query("u")
      if (
        !isAttachmentId(id) ||
        !verifyUrl(options.secret(), id, variant, c.req.query("exp"), user, sig, now())
      )
        throw new ParleyError(ErrorCode.NOT_FOUND, "no such attachment")
      // A valid signature is the user's: their requests by signed URL spend their budget too. A URL an
      // API key made names its service participant: API keys are the operator's, not held to it.
      if (!user?.startsWith(SERVICE_PARTICIPANT_PREFIX)) {
        const refused = overRequestBudget(c, options.requests, user as UserId)
        if (refused) return refused
      }
      // Still a participant now: leaving or being removed revokes the user's signed URLs.
      record = await service.readable(id, user as UserId)
    } else record = await service.readable(id, c.get("user"))
    if (thumbnail && !record.thumbnail)
      throw new ParleyError(ErrorCode.NOT_FOUND, "this attachment has no thumbnail")
    const key = thumbnail ? thumbnailKey(record) : servedKey(record)
    const length = await store.size(key)
    if (length === undefined) throw new ParleyError(ErrorCode.NOT_FOUND, "no such attachment")
    const etag = `"${record.id}${thumbnail ? "-t" : ""}"`
    const headers: Record<string, string> = {
      "content-type": thumbnail ? "image/webp" : (record.mimeType ?? "application/octet-stream"),
      etag,
      "cache-control": `private, max-age=${CACHE_SECONDS}, immutable`,
      "content-disposition": contentDisposition(record, thumbnail),
      "x-content-type-options": "nosniff",
      // Served bytes never run as a page of this origin, whatever a browser makes of them.
      "content-security-policy": "default-src 'none'; sandbox",
      "accept-ranges": "bytes",
    }
    if (c.req.header("if-none-match") === etag) return c.body(null, 304, headers)
    const range = parseRange(c.req.header("range"), length)
    if (range === "unsatisfiable")
      return problemResponse(c, new ParleyError(ErrorCode.INVALID_ARGUMENT, "range not satisfiable"), 416, {
        "content-range": `bytes */${length}`,
      })
    const { start, end } = range ?? { start: 0, end: length }
    const reader = sig !== undefined ? (c.req.query("u") as UserId) : c.get("user")
    const release = downloads.take(reader)
    if (!release) {
      options.onUserLimit?.(UserLimit.downloadsAtOnce, reader)
      return problemResponse(
        c,
        new ParleyError(
          ErrorCode.RATE_LIMITED,
          `a user may have ${options.downloads.perUser} downloads being sent at once`,
          { rule: UserLimit.downloadsAtOnce },
        ),
        429,
        { "retry-after": "1" },
      )
    }
    const outgoing = c.env?.outgoing
    if (outgoing)
      endWhenStalled(outgoing, options.downloads.idleMs, () =>
        options.log.info(
          { attachment: record.id, user: reader },
          "ended a download its reader stopped taking",
        ),
      )
    // The slot is the user's until the response is done or its connection gone (not when the file is
    // read: its last chunks may wait in memory for the reader). Without a Node response (in-process
    // requests), until the body is read.
    outgoing?.once("close", release)
    const chunks = store.read(key, start, end)
    // One stored chunk read ahead at most: a slow reader holds a chunk, not the file.
    const body = Readable.toWeb(
      Readable.from(outgoing ? chunks : releasing(chunks, release), { highWaterMark: 1 }),
    ) as ReadableStream<Uint8Array>
    return c.body(body, range ? 206 : 200, {
      ...headers,
      "content-length": String(end - start),
      ...(range ? { "content-range": `bytes ${start}-${end - 1}/${length}` } : {}),
    })
  }
  app.openapi(downloadRoute, (c) => serve(c as unknown as Context<Env>, false) as never)
  app.openapi(thumbnailRoute, (c) => serve(c as unknown as Context<Env>, true) as never)

  app.openapi(signRoute, async (c) => {
    const user = c.get("user")
    const record = await service.readable(c.req.valid("param").id, user)
    const exp = Math.floor(now() / 1000) + options.signedUrlSeconds
    const secret = options.secret()
    const path = (variant: "file" | "thumbnail") =>
      `/v1/attachments/${record.id}${variant === "thumbnail" ? "/thumbnail" : ""}?exp=${exp}&u=${encodeURIComponent(user)}&sig=${signUrl(secret, record.id, variant, exp, user)}`
    return c.json(
      {
        url: path("file"),
        ...(record.thumbnail ? { thumbnailUrl: path("thumbnail") } : {}),
        expiresAt: exp * 1000,
      },
      200,
    )
  })

  app.openapi(linkPreviewRoute, async (c) => {
    if (!options.linkPreviews)
      throw new ParleyError(ErrorCode.NOT_FOUND, "link previews are off on this relay")
    const answer = await options.linkPreviews.preview(c.get("user"), c.req.valid("query").url)
    if ("refused" in answer) {
      const retryAfter = { "retry-after": String(Math.max(1, Math.ceil(answer.retryAfterMs / 1000))) }
      if (answer.refused === "busy")
        return problemResponse(
          c,
          new ParleyError(ErrorCode.UNAVAILABLE, "the relay is fetching too many previews: retry"),
          503,
          retryAfter,
        ) as never
      return problemResponse(
        c,
        new ParleyError(
          ErrorCode.RATE_LIMITED,
          answer.refused === "link-previews-per-user"
            ? `a user may have ${options.linkPreviews.limits.perUserPerMinute} links previewed per minute`
            : `a user may have ${options.linkPreviews.limits.perUserAtOnce} links previewed at once`,
          { rule: answer.refused },
        ),
        429,
        retryAfter,
      ) as never
    }
    return c.json(answer, 200)
  })
  return app
}

/**
 * The attachment routes' part of the OpenAPI document, generated from the
 * schemas that validate them; the API's `openApiDocument` merges it in.
 */
export function attachmentsOpenApiPart(): OpenApiPart {
  const unused = describeOnly
  const app = createAttachmentRoutes({
    service: { options: { chunkBytes: 0 } } as unknown as AttachmentService,
    store: {} as BlobStore,
    quota: {} as UploadQuota,
    verify: unused,
    secret: unused,
    signedUrlSeconds: 0,
    maxChunksInFlight: 0,
    chunkPace: { idleMs: 0, minBytesPerSecond: 0 },
    downloads: { perUser: 0, idleMs: 0 },
    log: { error: unused } as unknown as Logger,
  })
  return openApiPartOf(app)
}
