import type { IncomingMessage, ServerResponse } from "node:http"
import { getRequestListener } from "@hono/node-server"
import { bodyDeadline } from "../body-deadline.js"
import type { HttpRequest, RelayExtension, RunningCore } from "../extension.js"
import type { Logger } from "../log.js"
import type { PurgedContent } from "../purge/redact.js"
import { type ApiOptions, createApi, eventStreams } from "./app.js"
import type { ApiEventSource } from "./event-source.js"
import type { EventStreams } from "./event-stream.js"
import type { IdempotencyStore } from "./idempotency.js"
import type { ApiKeyStore } from "./keys.js"
import { type ApiLimits, DEFAULT_API_LIMITS } from "./limits.js"

/** What the HTTP API extension is given. */
export interface ApiExtensionOptions {
  readonly keys: ApiKeyStore
  /** Where idempotent sends are recorded (the backend's `idempotency`). */
  readonly idempotency: IdempotencyStore
  readonly log: Logger
  /** Whether storage answers (see {@link ApiOptions.storage}). */
  readonly storage?: ApiOptions["storage"]
  /** The event log `/v1/events` streams from; default: the core's (`RunningCore.events`). */
  readonly events?: ApiEventSource
  readonly limits?: Partial<ApiLimits>
  /** Erases everything a user wrote (`ErasureAdmin.erase`); without it `DELETE /v1/users/{user}/content` answers 503. */
  readonly erase?: ApiOptions["erase"]
}

/**
 * The HTTP API (`/v1/...`) on the relay's port: an extension, so it gets the
 * running core (writes through the one update path) when the relay starts and
 * its requests from the transport before the transport's own routes.
 */
export class ApiExtension implements RelayExtension {
  readonly name = "http-api"
  private listener: ((req: IncomingMessage, res: ServerResponse) => Promise<void>) | undefined
  private readonly stopping = new AbortController()
  private streams: EventStreams | undefined

  constructor(private readonly options: ApiExtensionOptions) {}

  start(core: RunningCore): void {
    // The relay's durable event log, which the core offers its extensions when it keeps one.
    const events = this.options.events ?? (core as RunningCore & { readonly events?: ApiEventSource }).events
    const signal = this.stopping.signal
    const limits = { ...DEFAULT_API_LIMITS, ...this.options.limits }
    this.streams = eventStreams({ log: this.options.log, signal, ...(events ? { events } : {}) }, limits)
    const app = createApi({
      streams: this.streams,
      core,
      keys: this.options.keys,
      idempotency: this.options.idempotency,
      log: this.options.log,
      ...(this.options.storage ? { storage: this.options.storage } : {}),
      signal: this.stopping.signal,
      ...(events ? { events } : {}),
      ...(this.options.limits ? { limits: this.options.limits } : {}),
      ...(this.options.erase ? { erase: this.options.erase } : {}),
    })
    // Node's own Request and Response stay global: the relay may share its process with an app
    // (and the SDK in tests) that must not get @hono/node-server's stand-ins.
    this.listener = getRequestListener(app.fetch, { overrideGlobalObjects: false })
  }

  async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
    const path = (req.url ?? "/").split("?")[0]!
    if (!this.listener || (path !== "/v1" && !path.startsWith("/v1/"))) return false
    // A body that does not arrive in time ends its connection (upload chunks have their own pace; event
    // streams send no body).
    const answered = bodyDeadline(req, res, this.bodyTimeoutMs)
    try {
      await this.listener(req, res)
    } finally {
      answered()
    }
    return true
  }

  private get bodyTimeoutMs(): number {
    return this.options.limits?.bodyTimeoutMs ?? DEFAULT_API_LIMITS.bodyTimeoutMs
  }

  /** What the open event streams hold of purged content goes too. */
  contentPurged(purge: PurgedContent): void {
    this.streams?.purged(purge)
  }

  /** Ends the open event streams (their clients resume elsewhere, or here after the restart). */
  stop(): void {
    this.stopping.abort()
  }
}
