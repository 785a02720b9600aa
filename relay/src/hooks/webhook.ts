import { createHash } from "node:crypto"
import { ErrorCode, ParleyError } from "@parley/shared"
import { Webhook, WebhookVerificationError } from "standardwebhooks"
import { discardBody } from "../discard-body.js"
import { RetryAfterError, respectRetryAfter, retryAfterMs } from "../retry-after.js"
import { type DeliveryTarget, DroppedDelivery, PermanentDeliveryError } from "./dispatcher.js"
import type { HookEvent, HookEventType } from "./events.js"

/**
 * Delays between webhook attempts (ms), as the Standard Webhooks spec suggests:
 * 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; then the delivery is dead-lettered.
 */
export const WEBHOOK_RETRY_SCHEDULE: readonly number[] = [
  5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
]

// `whsec_<base64>` is the Standard Webhooks secret format; any other string is used as raw UTF-8 bytes.
const keyOf = (secret: string): Webhook =>
  secret.startsWith("whsec_")
    ? new Webhook(secret)
    : new Webhook(new TextEncoder().encode(secret), { format: "raw" })

/**
 * Connections of a webhook's `CONNECTIONS_PER_ORIGIN` (16) that `typing.started` posts have to
 * themselves, and how many of them may be in flight: one more is dropped, not queued. Durable
 * deliveries have the rest, which typing never takes. They shared all 16 before: with 60 users
 * typing and a receiver slow to answer typing posts, another conversation's `message.sent` arrived
 * 9–31 s late, queued behind typing posts that their receiver would have ignored by then (an
 * outside probe).
 */
export const TYPING_CONNECTIONS = 2

/** Options of {@link webhookTarget}. */
export interface WebhookTargetOptions {
  readonly url: string
  readonly secret: string
  /** Delays between attempts; its length + 1 is the number of attempts. */
  readonly schedule?: readonly number[]
  readonly fetch?: typeof fetch
  readonly now?: () => Date
}

/** Longest wait a receiver's `Retry-After` may ask for: the schedule's longest. */
const MAX_RETRY_AFTER_MS = 36_000_000

/** Statuses worth retrying: the receiver may accept the same request later. */
const retryable = (status: number) => status === 408 || status === 429 || status >= 500

/**
 * How a webhook is named in metric labels, logs and dead letters: its origin
 * and a digest of the whole URL (`webhook:https://hooks.example.com#1a2b3c4d`).
 * Receivers often take their credential in the URL (a path like Slack's
 * `/services/…`, a `?token=`), and `/metrics` is open by default.
 */
export function webhookName(url: string): string {
  return `webhook:${new URL(url).origin}#${createHash("sha256").update(url).digest("hex").slice(0, 8)}`
}

/**
 * A webhook URL as a delivery target: every event except the raw
 * `document.updated`, POSTed as JSON and signed. The `webhook-id` is the event
 * id, the same on every attempt. (`typing.started` is not durable: it is
 * POSTed once, without retries, on connections of its own, and dropped with
 * {@link DroppedDelivery} while {@link TYPING_CONNECTIONS} posts are in flight.)
 */
export function webhookTarget(options: WebhookTargetOptions): DeliveryTarget {
  const signer = keyOf(options.secret)
  const schedule = options.schedule ?? WEBHOOK_RETRY_SCHEDULE
  // One webhook's connections are capped: a receiver that hangs would get one per conversation lane.
  // Typing has a pool of its own within the cap, so that it never holds a connection a durable
  // delivery waits for, nor waits in the same queue. undici (a few MB of heap) is loaded by the
  // first delivery, not by every relay that loads hooks.
  const pools: Record<"durable" | "typing", Promise<typeof fetch> | undefined> = {
    durable: options.fetch && Promise.resolve(options.fetch),
    typing: options.fetch && Promise.resolve(options.fetch),
  }
  const through = (pool: "durable" | "typing"): Promise<typeof fetch> => {
    pools[pool] ??= import("../outbound.js").then(({ CONNECTIONS_PER_ORIGIN, cappedAgent, fetchThrough }) =>
      fetchThrough(
        cappedAgent({}, pool === "typing" ? TYPING_CONNECTIONS : CONNECTIONS_PER_ORIGIN - TYPING_CONNECTIONS),
      ),
    )
    return pools[pool]
  }
  let typingInFlight = 0
  const now = options.now ?? (() => new Date())
  const name = webhookName(options.url)
  /** POSTs `event` through `send`; resolves with the answer once its body is read (the connection is free). */
  const post = async (send: typeof fetch, event: HookEvent, signal: AbortSignal) => {
    const body = JSON.stringify(event)
    const id = event.event.id
    const timestamp = now()
    const response = await send(options.url, {
      method: "POST",
      signal,
      headers: {
        "content-type": "application/json",
        "user-agent": "parley-relay",
        "webhook-id": id,
        "webhook-timestamp": String(Math.floor(timestamp.getTime() / 1000)),
        "webhook-signature": signer.sign(id, timestamp, body),
      },
      body,
      // A redirect is not followed: the receiver could send the signed event (a POST, with 307/308)
      // to an address of the relay's network that the operator never configured.
      redirect: "manual",
    })
    // The status is the answer; the body (at most a little of it) is read only to reuse the connection.
    await discardBody(response.body)
    return response
  }
  return {
    name,
    accepts: (type: HookEventType) => type !== "document.updated",
    async deliver(event: HookEvent, { signal }) {
      let response: Response
      if (event.event.type === "typing.started") {
        // Counted until the connection is free again: with at most as many posts in flight as the
        // pool has connections, none ever waits in it (typing waited for is stale by the time it goes).
        if (typingInFlight >= TYPING_CONNECTIONS)
          throw new DroppedDelivery(`${name}: ${TYPING_CONNECTIONS} typing posts in flight already`)
        typingInFlight++
        try {
          response = await post(await through("typing"), event, signal)
        } finally {
          typingInFlight--
        }
      } else response = await post(await through("durable"), event, signal)
      if (response.ok) return
      if (response.status >= 300 && response.status < 400)
        throw new PermanentDeliveryError(
          `${name} answered ${response.status}: redirects are not followed, configure the URL it redirects to`,
        )
      const message = `${name} answered ${response.status}`
      if (retryable(response.status))
        throw new RetryAfterError(message, retryAfterMs(response.headers.get("retry-after"), now().getTime()))
      throw new PermanentDeliveryError(message)
    },
    // A receiver asking for more time (429, 503 with `Retry-After`) gets it, within the schedule's
    // longest wait; never less than the schedule's.
    retryDelay: (failures, error) => {
      const delay = schedule[failures - 1]
      return delay === undefined ? undefined : respectRetryAfter(delay, error, MAX_RETRY_AFTER_MS)
    },
  }
}

/**
 * Checks a webhook request the relay sent: the signature (HMAC-SHA256 of
 * `id.timestamp.body` with `secret`) and that the timestamp is within five
 * minutes. Returns the event; throws UNAUTHORIZED otherwise. Pass the raw body,
 * exactly as received.
 */
export function verifyWebhook(
  secret: string,
  headers: Record<string, string | string[] | undefined> | Headers,
  body: string | Buffer,
): HookEvent {
  const flat: Record<string, string> = {}
  const entries = headers instanceof Headers ? headers.entries() : Object.entries(headers)
  for (const [name, value] of entries) {
    if (value !== undefined) flat[name.toLowerCase()] = Array.isArray(value) ? value.join(",") : value
  }
  try {
    return keyOf(secret).verify(body, flat) as HookEvent
  } catch (error) {
    if (error instanceof WebhookVerificationError)
      throw new ParleyError(ErrorCode.UNAUTHORIZED, `webhook verification failed: ${error.message}`)
    throw error
  }
}
