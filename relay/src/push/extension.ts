import type { IncomingMessage, ServerResponse } from "node:http"
import { getRequestListener } from "@hono/node-server"
import type { UserId } from "@parley/shared"
import { DEFAULT_API_LIMITS } from "../api/limits.js"
import { bodyDeadline } from "../body-deadline.js"
import type { AfterSaved, ConnectionChange, HttpRequest, RelayExtension, RunningCore } from "../extension.js"
import type { DeliveryTarget } from "../hooks/dispatcher.js"
import type { Logger } from "../log.js"
import type { Principal } from "../principal.js"
import type { EndpointPolicy } from "./endpoint.js"
import { DAY_MS, DEFAULT_PUSH_WAKE_DAYS } from "./lifetime.js"
import { isPushPath } from "./off.js"
import { type PushRewriter, pushTarget, type VapidKeys } from "./push-target.js"
import { createPushRoutes } from "./routes.js"
import type { PushSubscriptionStore } from "./store.js"
import { UnreadTotals } from "./unread-totals.js"

/** Push notifications as the relay is started with them (`RelayOptions.push`). */
export interface PushOptions {
  /** The relay's VAPID keys; without them (and outside dev mode, which makes some) push is off. */
  readonly vapid?: VapidKeys
  /** Accept `http:` endpoints: tests and local development only. Default false. */
  readonly allowHttpEndpoints?: boolean
  /** Accept endpoints on loopback and private addresses: tests and local development only. Default false. */
  readonly allowPrivateEndpoints?: boolean
  /** How long a push service keeps an undelivered notification, in seconds. Default 86400. */
  readonly ttlSeconds?: number
  /** Devices per user. Default 20. */
  readonly maxDevicesPerUser?: number
  /**
   * How long after the credentials that registered (or last renewed) a
   * subscription expired it gets content-free wake-ups before it is deleted,
   * in ms; 0 = deleted when they expire. Default 30 days (`--push-wake-days`).
   */
  readonly wakeMs?: number
  /** Delay before the next attempt after `failures` failed ones; undefined to dead-letter. Default: 5 s doubling, 8 attempts. */
  readonly retryDelay?: (failures: number) => number | undefined
  /**
   * How often subscriptions past their wake-up grace are deleted, in ms
   * (also at start). Default one hour. A push or a listing drops one too;
   * the sweep reaches those of users nobody writes to any more.
   */
  readonly sweepEveryMs?: number
}

/** Default of {@link PushOptions.sweepEveryMs}. */
const SWEEP_EVERY_MS = 3_600_000

/**
 * Who is connected to which conversation beyond this relay (a cluster): the
 * relay reports its own users, and asks before pushing.
 */
export interface ConversationPresence {
  /** `user`'s first connection to `document` on this relay opened (`present`), or their last one closed. */
  changed(document: string, user: string, present: boolean): void
  /** The users connected to `document` through any relay. Rejects when that cannot be known now. */
  present(document: string): Promise<ReadonlySet<string>>
}

/** What {@link PushExtension} is built on. */
export interface PushExtensionOptions extends PushOptions {
  readonly vapid: VapidKeys
  readonly store: PushSubscriptionStore
  /** Verifies a user's token: who it names and until when (`Authenticator.verifyToken`). */
  readonly verify: (
    token: string,
  ) => Promise<{ readonly principal: Principal; readonly expiresAt: number | undefined }>
  readonly rewriters?: readonly PushRewriter[]
  /** Longest a registration's body may take to arrive (`--api-body-timeout-ms`; default 30 s). */
  readonly bodyTimeoutMs?: number
  readonly log: Logger
  /** Connections through the other relays of a cluster; without it only this relay's count. */
  readonly presence?: ConversationPresence
}

/**
 * Web Push in the relay: the registration routes (`/v1/push/public-key`,
 * `/v1/me/push-subscriptions`), who is connected to which conversation (a
 * user with a connection open to it gets no push for it), and the delivery
 * target the hook pipeline sends notifications through ({@link target}).
 * In a cluster ({@link PushExtensionOptions.presence}) connections through
 * every relay count; if that cannot be known (Redis down), only this relay's
 * do, and a user connected elsewhere gets a push.
 */
export class PushExtension implements RelayExtension {
  readonly name = "push"
  /** Document → user → open connections (asked once per recipient of every message: no key built per ask). */
  private readonly connections = new Map<string, Map<UserId, number>>()
  private listener: ((req: IncomingMessage, res: ServerResponse) => Promise<void>) | undefined
  private readonly endpoints: EndpointPolicy
  /** Recipients' unread totals for badges, kept current from saved changes. */
  readonly totals = new UnreadTotals()

  constructor(private readonly options: PushExtensionOptions) {
    this.endpoints = {
      allowHttp: options.allowHttpEndpoints ?? false,
      allowPrivate: options.allowPrivateEndpoints ?? false,
    }
  }

  /** Per document, the cluster's answer being fetched: the recipients of one message share one query. */
  private readonly asking = new Map<string, Promise<ReadonlySet<string> | undefined>>()

  /** Whether `user` has a connection open to the document `name` on this relay (or, in a cluster, on any). */
  isActive(name: string, user: UserId): boolean | Promise<boolean> {
    if ((this.connections.get(name)?.get(user) ?? 0) > 0) return true
    const presence = this.options.presence
    if (!presence) return false
    let asking = this.asking.get(name)
    if (!asking) {
      asking = presence.present(name).then(
        (users) => users,
        (error: unknown) => {
          this.options.log.warn({ err: error, doc: name }, "could not ask who else is connected: pushing")
          return undefined
        },
      )
      this.asking.set(name, asking)
      void asking.finally(() => this.asking.delete(name))
    }
    return asking.then((users) => users?.has(user) ?? false)
  }

  /** The delivery target, for the hook pipeline's built-in targets. */
  readonly target = (core: RunningCore): DeliveryTarget =>
    pushTarget(core, {
      store: this.options.store,
      vapid: this.options.vapid,
      log: this.options.log,
      isActive: (name, user) => this.isActive(name, user),
      summary: (user, conversation) => this.totals.summary(core, user, conversation),
      endpoints: this.endpoints,
      ...(this.options.wakeMs !== undefined ? { wakeMs: this.options.wakeMs } : {}),
      ...(this.options.rewriters ? { rewriters: this.options.rewriters } : {}),
      ...(this.options.ttlSeconds !== undefined ? { ttlSeconds: this.options.ttlSeconds } : {}),
      ...(this.options.retryDelay ? { retryDelay: this.options.retryDelay } : {}),
    })

  start(core: RunningCore): void {
    const app = createPushRoutes({
      store: this.options.store,
      // Users' requests spend the per-user request budget of the core's ledger.
      ...(core.users ? { requests: core.users } : {}),
      publicKey: this.options.vapid.publicKey,
      verify: this.options.verify,
      endpoints: this.endpoints,
      log: this.options.log,
      ...(this.options.maxDevicesPerUser !== undefined ? { maxDevices: this.options.maxDevicesPerUser } : {}),
      ...(this.options.wakeMs !== undefined ? { wakeMs: this.options.wakeMs } : {}),
    })
    this.listener = getRequestListener(app.fetch, { overrideGlobalObjects: false })
    this.sweep()
    this.sweeper = setInterval(() => this.sweep(), this.options.sweepEveryMs ?? SWEEP_EVERY_MS)
    this.sweeper.unref()
  }

  stop(): void {
    clearInterval(this.sweeper)
  }

  private sweeper: ReturnType<typeof setInterval> | undefined

  /**
   * Deletes the subscriptions not renewed within the wake-up grace after their
   * credentials' end: a device's endpoint and keys are not kept for good
   * after its user stopped using it (or a leaked token's registration ended).
   */
  private sweep(): void {
    const endedBy = Date.now() - (this.options.wakeMs ?? DEFAULT_PUSH_WAKE_DAYS * DAY_MS)
    this.options.store.removeAllLapsed(endedBy).then(
      (removed) => {
        if (removed > 0)
          this.options.log.info({ removed }, "push: subscriptions past their wake-up grace deleted")
      },
      (error: unknown) => this.options.log.warn({ err: error }, "push: sweeping lapsed subscriptions failed"),
    )
  }

  afterSaved(change: AfterSaved): void {
    this.totals.afterSaved(change)
  }

  connectionChanged({ name, principal, open }: ConnectionChange): void {
    if (principal.kind !== "user") return
    let users = this.connections.get(name)
    const before = users?.get(principal.user) ?? 0
    const count = before + (open ? 1 : -1)
    if (count > 0) {
      if (!users) {
        users = new Map()
        this.connections.set(name, users)
      }
      users.set(principal.user, count)
    } else if (users) {
      users.delete(principal.user)
      if (users.size === 0) this.connections.delete(name)
    }
    if (before > 0 !== count > 0) this.options.presence?.changed(name, principal.user, count > 0)
  }

  async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
    const path = (req.url ?? "/").split("?")[0]!
    if (!this.listener) return false
    if (!isPushPath(path)) return false
    const answered = bodyDeadline(req, res, this.options.bodyTimeoutMs ?? DEFAULT_API_LIMITS.bodyTimeoutMs)
    try {
      await this.listener(req, res)
    } finally {
      answered()
    }
    return true
  }
}
