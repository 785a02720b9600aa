import { createHmac } from "node:crypto"
import { type ConversationId, ErrorCode, ParleyError, type UserId } from "@parley/shared"
import webpush from "web-push"
import { discardBody } from "../discard-body.js"
import type { RunningCore } from "../extension.js"
import type { InboxSummary, PushNotificationHandler } from "../hooks/define.js"
import { type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import { eventLogPosition, type HookEvent } from "../hooks/events.js"
import { inboxSummary } from "../inbox/summary.js"
import type { Logger } from "../log.js"
import { RetryAfterError, retryAfterMs } from "../retry-after.js"
import { type DeviceJob, DeviceSends, type SendOutcome } from "./device-sends.js"
import { checkEndpointBeforeSend, type EndpointPolicy } from "./endpoint.js"
import { DAY_MS, DEFAULT_PUSH_WAKE_DAYS, pushStanding, WAKE_PAYLOAD, WAKE_TOPIC } from "./lifetime.js"
import { liveMessageOf, notificationFor, type PushNotification } from "./notification.js"
import { publicOnlyFetch } from "./public-fetch.js"
import type { PushSubscriptionRecord, PushSubscriptionStore } from "./store.js"

/** The relay's VAPID identity (RFC 8292): push services check it on every request. */
export interface VapidKeys {
  /** P-256 public key, base64url (uncompressed point): the `applicationServerKey` devices subscribe with. */
  readonly publicKey: string
  /** P-256 private key, base64url. */
  readonly privateKey: string
  /** A `mailto:` or `https:` URL push services may contact about this sender. */
  readonly subject: string
}

/** A hook module's `onPushNotification`, with the module's name for logs. */
export interface PushRewriter {
  readonly hook: string
  readonly handler: PushNotificationHandler
}

/** Options of {@link pushTarget}. */
export interface PushTargetOptions {
  readonly store: PushSubscriptionStore
  readonly vapid: VapidKeys
  readonly log: Logger
  /** Whether `user` has a connection open to the conversation document `name` (then nothing is pushed to them). */
  isActive(name: string, user: UserId): boolean | Promise<boolean>
  readonly endpoints?: EndpointPolicy
  /** Hook modules' `onPushNotification`, run in order for every notification. */
  readonly rewriters?: readonly PushRewriter[]
  /** How long the push service keeps an undelivered notification, in seconds. Default 1 day. */
  readonly ttlSeconds?: number
  /**
   * Delay before a failing device's next try after `failures` failed ones; undefined to drop what
   * it waits for. Also the delivery's, when something else than a device failed (a hook's rewrite).
   */
  readonly retryDelay?: (failures: number) => number | undefined
  /** Time allowed to one device's request (name resolution included), in ms. Default 5 s. */
  readonly deviceTimeoutMs?: number
  readonly fetch?: typeof fetch
  /**
   * How long after its credentials' end a subscription not renewed gets
   * content-free wake-ups before it is deleted, in ms. Default 30 days.
   */
  readonly wakeMs?: number
  /** The clock (ms since the epoch) subscriptions' credentials are judged by; default `Date.now`. */
  readonly now?: () => number
  /**
   * A recipient's unread counts and mutes for the badge (an `UnreadTotals`
   * cache); default: derived from every conversation they are in, per push.
   */
  summary?(user: UserId, conversation: ConversationId): Promise<InboxSummary>
}

/** Default delays between tries: 5 s doubling to 5 min, 8 tries (about 12 min): later, a notification is stale. */
export const DEFAULT_PUSH_RETRY = exponentialBackoff({ baseMs: 5_000, maxMs: 300_000, attempts: 8 })

/** Statuses after which the push service may accept the same request later. */
const retryable = (status: number) => status === 408 || status === 429 || status >= 500

/**
 * Web Push as a delivery target of the hook pipeline: for each `message.sent`,
 * a notification to every device of every participant but the author who has
 * no connection open to the conversation and has not muted it (`emergency`
 * messages ignore mutes and go at high urgency). Payloads are encrypted
 * (aes128gcm, RFC 8291) and requests signed with VAPID by `web-push`; the
 * request itself is sent here, so that it is bounded by the attempt's signal
 * and its endpoint is checked first.
 *
 * Recipients and their devices are served at once, each request bounded by
 * its own timeout. A device whose push service answers 404 or 410 is
 * forgotten. A device that fails (a network error, 408, 429, 5xx, no answer
 * in time) holds up nothing: it is set aside and retried on its own schedule
 * ({@link DeviceSends}), and the event counts as delivered. Only a failure of
 * the relay's own (a hook's `onPushNotification` throws, the store fails)
 * fails the attempt, which the dispatcher retries; devices already served by
 * an earlier attempt of the same event are skipped then (remembered in
 * memory: after a restart, they may get it twice).
 */
export function pushTarget(core: RunningCore, options: PushTargetOptions): DeliveryTarget {
  const ttl = options.ttlSeconds ?? 86_400
  const endpoints = options.endpoints ?? {}
  const send = options.fetch ?? publicOnlyFetch(endpoints)
  const retryDelay = options.retryDelay ?? DEFAULT_PUSH_RETRY
  const now = options.now ?? Date.now
  const wakeMs = options.wakeMs ?? DEFAULT_PUSH_WAKE_DAYS * DAY_MS
  const devices = new DeviceSends({
    send: deliverTo,
    store: options.store,
    retryDelay,
    timeoutMs: options.deviceTimeoutMs ?? 5_000,
    log: options.log,
  })
  /** Event id → `${user}\0${device}` of the devices an unfinished event already reached. */
  const served = new Map<string, Set<string>>()
  const deviceKey = (sub: PushSubscriptionRecord) => `${sub.user}\u0000${sub.device}`
  /**
   * The user ids of a participants list, made once per list: an event's list is
   * the conversation's cached one (the same array until its members change), so
   * a message in a 1,000-member room walks no member list here.
   */
  const usersOf = new WeakMap<readonly { readonly user: UserId }[], readonly UserId[]>()
  const usersIn = (participants: readonly { readonly user: UserId }[]): readonly UserId[] => {
    let users = usersOf.get(participants)
    if (!users) {
      users = participants.map((p) => p.user)
      usersOf.set(participants, users)
    }
    return users
  }

  async function rewrite(
    notification: PushNotification,
    recipient: UserId,
    event: HookEvent<"message.sent">,
    signal: AbortSignal,
  ): Promise<PushNotification | undefined> {
    let current = notification
    for (const { hook, handler } of options.rewriters ?? []) {
      const result = await handler(current, {
        hook,
        recipient,
        event,
        signal,
        log: options.log.child({ hook, eventId: event.event.id }),
      })
      if (result === false) return undefined
      if (result) current = checkedRewrite(result, hook)
    }
    return current
  }

  /** One try to send `job` to one device. */
  async function deliverTo(
    sub: PushSubscriptionRecord,
    job: DeviceJob,
    signal: AbortSignal,
  ): Promise<SendOutcome> {
    const { notification } = job
    const where = { user: sub.user, device: sub.device }
    // Decided at each try (a retry may come after the credentials' end): a subscription is told what a
    // message says only while the token that registered or renewed it holds, so one a leaked token
    // registered reads nothing after that token expired; it is only woken, and then dropped.
    const at = now()
    const standing = pushStanding(sub, at, wakeMs)
    if (standing === "expired") {
      // Unless the device renewed it since it was read: then the next notification goes to it.
      if (await options.store.removeLapsed(sub.user, sub.device, at - wakeMs))
        options.log.info(where, "push subscription not renewed since its credentials expired: dropped")
      return "gone"
    }
    const wake = standing === "wake"
    const payload = wake ? WAKE_PAYLOAD : job.payload
    try {
      await checkEndpointBeforeSend(sub.endpoint, endpoints)
    } catch (error) {
      // A name that does not resolve now (DNS down) may later: retried, not dropped.
      if (!(error instanceof ParleyError)) return error instanceof Error ? error : new Error(String(error))
      // Registered before the policy tightened, or its name now resolves inward: never sent to again.
      options.log.warn({ ...where, err: error }, "push endpoint refused: subscription dropped")
      await options.store.remove(sub.user, sub.device)
      return "gone"
    }
    const request = webpush.generateRequestDetails(
      { endpoint: sub.endpoint, keys: { p256dh: sub.p256dh, auth: sub.auth } },
      payload,
      {
        vapidDetails: options.vapid,
        TTL: ttl,
        // A wake-up tells neither the conversation nor the priority, not even in headers: the push
        // service may be the endpoint's owner.
        urgency: wake ? "normal" : notification.urgency,
        contentEncoding: "aes128gcm",
        // Replaces an undelivered notification of the same conversation on the push service.
        topic: wake ? WAKE_TOPIC : topicOf(options.vapid.privateKey, sub, notification.conversationId),
      },
    )
    let response: Response
    try {
      response = await send(request.endpoint, {
        method: request.method,
        headers: request.headers as Record<string, string>,
        body: new Uint8Array(request.body),
        signal,
        redirect: "manual",
      })
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error))
    }
    // The endpoint is any user's choice: its body is never read whole (see discardBody).
    await discardBody(response.body)
    if (response.ok) return "sent"
    if (response.status === 404 || response.status === 410) {
      options.log.info({ ...where, status: response.status }, "push subscription expired: dropped")
      await options.store.removeEndpoint(sub.endpoint)
      return "gone"
    }
    if (retryable(response.status))
      return new RetryAfterError(
        `push service answered ${response.status}`,
        retryAfterMs(response.headers.get("retry-after")),
      )
    // 400, 403, 413...: this request will never be accepted; the other devices are not held up by it.
    options.log.warn({ ...where, status: response.status }, "push service refused the notification")
    return "sent"
  }

  /** Builds `user`'s notification of `event` and offers it to each of their devices. */
  async function serve(
    event: HookEvent<"message.sent">,
    user: UserId,
    subs: readonly PushSubscriptionRecord[],
    reached: Set<string>,
    signal: () => AbortSignal,
  ): Promise<void> {
    const conversation = event.event.conversationId
    const summary = options.summary
      ? await options.summary(user, conversation)
      : await inboxSummary(core, user)
    if (event.subject.message.priority !== "emergency" && summary.muted.includes(conversation)) return
    const built = notificationFor(event, summary.totalUnread)
    const notification = built && (await rewrite(built, user, event, signal()))
    if (!notification) return
    const position = eventLogPosition(conversation, event.event.id)
    const job = {
      conversation,
      payload: JSON.stringify(notification),
      notification,
      ...(position === undefined ? {} : { position }),
      expiresAt: Date.now() + ttl * 1000,
    }
    await Promise.all(
      subs.map(async (sub) => {
        await devices.offer(sub, job, signal())
        reached.add(deviceKey(sub))
      }),
    )
  }

  return {
    name: "push",
    accepts: (type) => type === "message.sent",
    // The attempt's signal is read only where a notification goes out: reading it makes an
    // AbortController, and most events (every recipient connected, or none with a device) send nothing.
    async deliver(hookEvent, attempt) {
      const event = hookEvent as HookEvent<"message.sent">
      // Purged before this attempt (a deleted message, a deleted conversation): nothing to tell anyone.
      const message = liveMessageOf(event)
      if (!message) return
      const author = message.author
      const conversation = event.event.conversationId
      let reached = served.get(event.event.id)
      if (!reached) {
        // Only an optimisation (events dead-lettered leave theirs behind): forgetting costs a repeat.
        if (served.size > 10_000) served.clear()
        reached = new Set()
        served.set(event.event.id, reached)
      }
      // One query for every member's devices (a large room costs no query per member), then who is
      // active is asked only of members with a device: most members of a big room have none here.
      // The author is asked about with the others and skipped in the answer.
      const devices = new Map<UserId, PushSubscriptionRecord[]>()
      const at = now()
      for (const sub of await options.store.listMany(usersIn(event.conversation.participants))) {
        if (sub.user === author || reached.has(deviceKey(sub))) continue
        if (pushStanding(sub, at, wakeMs) === "expired") {
          // Its grace after the credentials' end is over: dropped (unless renewed since), not even woken.
          if (await options.store.removeLapsed(sub.user, sub.device, at - wakeMs))
            options.log.info(
              { user: sub.user, device: sub.device },
              "push subscription not renewed since its credentials expired: dropped",
            )
          continue
        }
        devices.set(sub.user, [...(devices.get(sub.user) ?? []), sub])
      }
      const byUser = new Map<UserId, PushSubscriptionRecord[]>()
      for (const [user, subs] of devices)
        if (!(await options.isActive(conversation, user))) byUser.set(user, subs)
      // Every recipient at once: none waits for another's devices (a slow one is any member's choice).
      const seen = reached
      const results = await Promise.allSettled(
        [...byUser].map(([user, subs]) => serve(event, user, subs, seen, () => attempt.signal)),
      )
      const failure = results.find((r): r is PromiseRejectedResult => r.status === "rejected")
      if (failure) throw failure.reason
      served.delete(event.event.id)
    },
    retryDelay,
    purged({ conversationId, scope }) {
      devices.purged(conversationId, scope)
    },
  }
}

/** Largest notification a rewriter may return, as JSON (what a push service takes is about 4 KiB). */
const MAX_REWRITTEN_BYTES = 4 * 1024

/**
 * A rewriter's notification as plain JSON of at most {@link MAX_REWRITTEN_BYTES}:
 * what goes on is what was measured (a getter or a Map held more than its
 * JSON said). Throws INVALID_ARGUMENT (the attempt fails, and is retried).
 */
function checkedRewrite(result: unknown, hook: string): PushNotification {
  let json: string | undefined
  try {
    json =
      typeof result === "object" && result !== null && !Array.isArray(result)
        ? JSON.stringify(result)
        : undefined
  } catch {
    json = undefined
  }
  if (json === undefined || Buffer.byteLength(json) > MAX_REWRITTEN_BYTES)
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `${hook}: onPushNotification may return only undefined, false or a notification of at most ${MAX_REWRITTEN_BYTES / 1024} KiB as JSON`,
    )
  return JSON.parse(json) as PushNotification
}

/**
 * A `Topic` header value (at most 32 base64url characters) for `conversation`
 * on `sub`'s device: the same for each of its notifications, so the push
 * service keeps only the latest, but telling it nothing. The header goes to
 * the push service in the clear: a plain hash of the id named a direct
 * conversation's pair to anyone who hashed `dm~alice~bob`, and linked one
 * conversation's notifications across its members' devices (an outside
 * probe). Keyed with the relay's VAPID private key (a secret every push
 * request needs anyway) and the device's own auth secret.
 */
function topicOf(key: string, sub: PushSubscriptionRecord, conversation: string): string {
  return createHmac("sha256", key).update(`${sub.auth}\u0000${conversation}`).digest("base64url").slice(0, 32)
}
