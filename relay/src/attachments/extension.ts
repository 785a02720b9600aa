import type { IncomingMessage, ServerResponse } from "node:http"
import { getRequestListener } from "@hono/node-server"
import { type UserId, type UserLimit, uploadedAttachmentIds } from "@parley/shared"
import type { ApiKeyStore } from "../api/keys.js"
import { DEFAULT_API_LIMITS } from "../api/limits.js"
import { bodyDeadline } from "../body-deadline.js"
import type { HttpRequest, RelayExtension, RunningCore } from "../extension.js"
import { type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import type { HookEvent, HookEventType } from "../hooks/events.js"
import type { Logger } from "../log.js"
import type { Principal } from "../principal.js"
import type { BlobStore } from "./blob-store.js"
import { DEFAULT_ATTACHMENT_TYPES } from "./content-type.js"
import { DEFAULT_MAX_IMAGE_PIXELS } from "./images.js"
import { DEFAULT_LINK_PREVIEW_LIMITS, LinkPreviewGate } from "./link-preview-gate.js"
import { createAttachmentRoutes } from "./routes.js"
import { AttachmentService } from "./service.js"
import { urlSigningSecret } from "./signing.js"
import { UploadQuota } from "./user-quota.js"

/** Attachments as the relay is started with them (`RelayOptions.attachments`); every field has a default. */
export interface AttachmentOptions {
  /** Largest attachment, in bytes. Default 25 MiB (`--attachment-max-bytes`). */
  readonly maxBytes?: number
  /** Largest chunk of one PATCH, in bytes. Default 1 MiB. */
  readonly chunkBytes?: number
  /** Accepted sniffed types (`image/png`, `audio/*`). Default {@link DEFAULT_ATTACHMENT_TYPES} (`--attachment-types`). */
  readonly allowedTypes?: readonly string[]
  /** Chunks one user may send at once. Default 4 (`--attachment-uploads-per-user`). */
  readonly concurrentChunksPerUser?: number
  /** Bytes one user may upload a minute. Default 256 MiB (`--attachment-bytes-per-minute`). */
  readonly bytesPerMinutePerUser?: number
  /** Bytes one user may upload a day (refilled over 24 h). Default 4 GiB (`--attachment-bytes-per-day`). */
  readonly bytesPerDayPerUser?: number
  /** Uploads one user may open a minute. Default 60. */
  readonly uploadsPerMinutePerUser?: number
  /** Chunks the relay receives at once, all users together. Default 64 (each buffers up to a chunk). */
  readonly maxChunksInFlight?: number
  /** A chunk that sends nothing for this long (ms), or too slowly after it, is cut off (408). Default 10,000 (`--attachment-chunk-idle-ms`). */
  readonly chunkIdleMs?: number
  /** Least average rate of a chunk once `chunkIdleMs` has passed, bytes a second. Default 4,096 (`--attachment-chunk-min-bytes-per-second`). */
  readonly chunkMinBytesPerSecond?: number
  /** Downloads sent to one user at once, all their connections and signed URLs together (429 beyond). Default 32 (`--attachment-downloads-per-user`). */
  readonly downloadsPerUser?: number
  /** A download whose reader takes no bytes for this long (ms) loses its connection. Default 30,000 (`--attachment-download-idle-ms`). */
  readonly downloadIdleMs?: number
  /** Most pixels decoded of one image. Default 40 million. */
  readonly maxImagePixels?: number
  /** Lifetime of signed download URLs, in seconds. Default 900 (15 min). */
  readonly signedUrlSeconds?: number
  /** Between two sweeps of unreferenced uploads, in ms. Default 10 min. */
  readonly sweepIntervalMs?: number
  /** Serve `GET /v1/link-preview` (the relay fetches pages). Default false (`--link-previews`). */
  readonly linkPreviews?: boolean
  /** Let link previews fetch http: and private addresses: tests only. Default false. */
  readonly linkPreviewsAllowPrivate?: boolean
  /** Pages the relay fetches for one user's link previews per minute (cached answers are free). Default 30. */
  readonly linkPreviewsPerUserPerMinute?: number
  /** Pages the relay fetches for one user's link previews at once. Default 2. */
  readonly linkPreviewsPerUserAtOnce?: number
}

/** The defaults of {@link AttachmentOptions}. */
export const DEFAULT_ATTACHMENT_OPTIONS = {
  maxBytes: 25 * 1024 * 1024,
  chunkBytes: 1024 * 1024,
  allowedTypes: DEFAULT_ATTACHMENT_TYPES,
  concurrentChunksPerUser: 4,
  bytesPerMinutePerUser: 256 * 1024 * 1024,
  bytesPerDayPerUser: 4 * 1024 * 1024 * 1024,
  uploadsPerMinutePerUser: 60,
  maxChunksInFlight: 64,
  chunkIdleMs: 10_000,
  chunkMinBytesPerSecond: 4096,
  downloadsPerUser: 32,
  downloadIdleMs: 30_000,
  maxImagePixels: DEFAULT_MAX_IMAGE_PIXELS,
  signedUrlSeconds: 900,
  sweepIntervalMs: 10 * 60_000,
  linkPreviewsPerUserPerMinute: DEFAULT_LINK_PREVIEW_LIMITS.perUserPerMinute,
  linkPreviewsPerUserAtOnce: DEFAULT_LINK_PREVIEW_LIMITS.perUserAtOnce,
} as const

/** What {@link AttachmentsExtension} is built on. */
export interface AttachmentsExtensionOptions extends AttachmentOptions {
  readonly store: BlobStore
  readonly verify: (token: string) => Promise<Principal>
  /** The HTTP API's keys, which may upload and download as their service participant. */
  readonly keys?: ApiKeyStore
  /** Told of every refusal by a per-user limit of link previews (metrics, logs). */
  readonly onUserLimit?: (limit: UserLimit, user: UserId) => void
  /**
   * Longest the body of a request other than an upload chunk may take to
   * arrive (`--api-body-timeout-ms`): upload creation's JSON, a link preview's
   * request (default 30 s). Chunks keep their own pace rule.
   */
  readonly bodyTimeoutMs?: number
  readonly log: Logger
}

/** Deletions that delete attachments, and the sends that link them to their message. */
const HANDLED: ReadonlySet<HookEventType> = new Set<HookEventType>([
  "message.sent",
  "message.deleted",
  "conversation.deleted",
])

const D = DEFAULT_ATTACHMENT_OPTIONS

const PATHS =
  /^\/v1\/(conversations\/[^/]+\/uploads|uploads\/[^/]+|attachments\/[^/]+(\/thumbnail|\/signed-url)?|link-preview)$/

/**
 * Attachments in the relay: the upload and download routes, the delivery
 * target that links uploads to the messages carrying them and deletes them
 * with their message or conversation (deletions and GDPR erasure alike, as
 * the hook pipeline reports them, at least once), and the sweep of uploads no
 * message referenced within 24 hours.
 */
export class AttachmentsExtension implements RelayExtension {
  readonly name = "attachments"
  readonly service: AttachmentService
  private listener: ((req: IncomingMessage, res: ServerResponse) => Promise<void>) | undefined
  private sweeper: NodeJS.Timeout | undefined

  constructor(private readonly options: AttachmentsExtensionOptions) {
    this.service = new AttachmentService({
      store: options.store,
      log: options.log,
      maxBytes: options.maxBytes ?? D.maxBytes,
      chunkBytes: options.chunkBytes ?? D.chunkBytes,
      allowedTypes: options.allowedTypes ?? D.allowedTypes,
      maxImagePixels: options.maxImagePixels ?? D.maxImagePixels,
    })
  }

  /** The delivery target, for the hook pipeline's built-in targets. */
  readonly target = (_core: RunningCore): DeliveryTarget => ({
    name: "attachments",
    accepts: (type) => HANDLED.has(type),
    // It links and deletes files in the relay's own store: nothing it is given leaves the relay.
    heldForPurges: false,
    // A message without uploaded files owes nothing here: it costs no outbox row (a 2,000-message frame
    // would otherwise store and then delete 2,000 events for this target alone). Deletions are all
    // delivered: whether the deleted message brought files is known only from the store.
    wants: (event) =>
      event.event.type !== "message.sent" ||
      uploadedAttachmentIds((event as HookEvent<"message.sent">).subject.message.attachments).length > 0,
    deliver: async (event) => {
      const conversation = event.event.conversationId
      switch (event.event.type) {
        case "message.sent": {
          const { message } = event.subject as {
            message: { id: string; author: UserId; attachments?: readonly unknown[] }
          }
          await this.service.messageSent(
            conversation,
            message.id as never,
            message.author,
            message.attachments,
          )
          return
        }
        case "message.deleted": {
          const { messageId } = event.subject as { messageId: string }
          const deleted = await this.service.messageDeleted(conversation, messageId as never)
          if (deleted > 0) this.options.log.info({ conversation, deleted }, "deleted a message's attachments")
          return
        }
        case "conversation.deleted": {
          const deleted = await this.service.conversationDeleted(conversation)
          if (deleted > 0)
            this.options.log.info({ conversation, deleted }, "deleted a conversation's attachments")
          return
        }
      }
    },
    retryDelay: exponentialBackoff({ baseMs: 1_000, maxMs: 60_000, attempts: 20 }),
  })

  async start(core: RunningCore): Promise<void> {
    this.service.attach(core)
    const secret = await urlSigningSecret(this.options.store)
    const app = createAttachmentRoutes({
      service: this.service,
      store: this.options.store,
      quota: new UploadQuota({
        concurrent: this.options.concurrentChunksPerUser ?? D.concurrentChunksPerUser,
        bytesPerMinute: this.options.bytesPerMinutePerUser ?? D.bytesPerMinutePerUser,
        bytesPerDay: this.options.bytesPerDayPerUser ?? D.bytesPerDayPerUser,
        uploadsPerMinute: this.options.uploadsPerMinutePerUser ?? D.uploadsPerMinutePerUser,
      }),
      verify: this.options.verify,
      ...(this.options.keys ? { keys: this.options.keys } : {}),
      secret: () => secret,
      signedUrlSeconds: this.options.signedUrlSeconds ?? D.signedUrlSeconds,
      maxChunksInFlight: this.options.maxChunksInFlight ?? D.maxChunksInFlight,
      chunkPace: {
        idleMs: this.options.chunkIdleMs ?? D.chunkIdleMs,
        minBytesPerSecond: this.options.chunkMinBytesPerSecond ?? D.chunkMinBytesPerSecond,
      },
      downloads: {
        perUser: this.options.downloadsPerUser ?? D.downloadsPerUser,
        idleMs: this.options.downloadIdleMs ?? D.downloadIdleMs,
      },
      ...(this.options.onUserLimit ? { onUserLimit: this.options.onUserLimit } : {}),
      ...(this.options.linkPreviews ? { linkPreviews: await this.linkPreviewGate() } : {}),
      // Users' requests spend the per-user request budget of the core's ledger.
      ...(core.users ? { requests: core.users } : {}),
      log: this.options.log,
    })
    this.listener = getRequestListener(app.fetch, { overrideGlobalObjects: false })
  }

  private async linkPreviewGate(): Promise<LinkPreviewGate> {
    // Loaded only when link previews are on (they are opt-in): the previewer's fetch is undici's,
    // about 3 MB of heap once loaded, which every full collection marks. Loaded here, while the relay
    // starts, so that a broken install is reported at start and not at the first preview.
    const { LinkPreviewer } = await import("./link-preview.js")
    const previewer = new LinkPreviewer(
      this.options.linkPreviewsAllowPrivate ? { endpoints: { allowHttp: true, allowPrivate: true } } : {},
    )
    return new LinkPreviewGate(
      (url) => previewer.preview(url),
      {
        ...DEFAULT_LINK_PREVIEW_LIMITS,
        perUserPerMinute: this.options.linkPreviewsPerUserPerMinute ?? D.linkPreviewsPerUserPerMinute,
        perUserAtOnce: this.options.linkPreviewsPerUserAtOnce ?? D.linkPreviewsPerUserAtOnce,
      },
      this.options.onUserLimit,
    )
  }

  started(): void {
    const sweep = () =>
      void this.service.sweep().then(
        (deleted) => {
          if (deleted > 0) this.options.log.info({ deleted }, "deleted unreferenced uploads older than 24 h")
        },
        (error: unknown) => this.options.log.warn({ err: error }, "sweeping unreferenced uploads failed"),
      )
    sweep()
    this.sweeper = setInterval(sweep, this.options.sweepIntervalMs ?? D.sweepIntervalMs)
    this.sweeper.unref()
  }

  stop(): void {
    clearInterval(this.sweeper)
  }

  async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
    if (!this.listener) return false
    const path = (req.url ?? "/").split("?")[0]!
    if (!PATHS.test(path)) return false
    const chunk = req.method === "PATCH" && path.startsWith("/v1/uploads/")
    const answered = chunk
      ? undefined
      : bodyDeadline(req, res, this.options.bodyTimeoutMs ?? DEFAULT_API_LIMITS.bodyTimeoutMs)
    try {
      await this.listener(req, res)
    } finally {
      answered?.()
    }
    return true
  }
}
