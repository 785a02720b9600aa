import { ErrorCode, ParleyError } from "@parley/shared"
import { expiryOfToken } from "./token.js"

/** A Web Push subscription as the browser gives it: `PushSubscription.toJSON()` (or the subscription itself). */
export interface PushSubscriptionInput {
  readonly endpoint: string
  readonly keys: { readonly p256dh: string; readonly auth: string }
  readonly expirationTime?: number | null
}

/** What a browser's `PushSubscription` offers (typed here so the SDK needs no DOM types). */
export interface BrowserPushSubscription {
  toJSON(): unknown
}

/** One of the user's devices the relay pushes to. */
export interface PushDevice {
  readonly device: string
  readonly endpoint: string
  readonly createdAt: number
  /**
   * Until when (ms since the epoch) the token that registered or last renewed
   * it holds: the device gets full notifications until then, only
   * `{ "wake": true }` after (see {@link isPushWake}); null for a token without `exp`.
   */
  readonly credentialsUntil: number | null
}

/**
 * How much later a token must expire than the one the registration was last
 * renewed with before the client renews it again: at most about one renewal
 * per minute, however often it connects or gets a token.
 */
export const PUSH_RENEWAL_STEP_MS = 60_000

/**
 * Whether a token expiring at `until` is worth a renewal of a registration
 * whose credentials hold until `last`: it must expire later, by a minute
 * (about one renewal per minute of its lifetime), or by anything once they
 * are within a minute of their end (tokens shorter than two minutes).
 */
function renewsEnough(until: number, last: number, now: number): boolean {
  return until > last && (until - last >= PUSH_RENEWAL_STEP_MS || last - now < PUSH_RENEWAL_STEP_MS)
}

/**
 * Whether a push payload (the service worker's `event.data.json()`) is a
 * content-free wake-up: the relay sends `{ "wake": true }` instead of a
 * notification to a device whose registration was not renewed since its
 * token expired. Show a generic notification ({@link WAKE_NOTIFICATION}); the
 * app fetches the messages with its own fresh token when opened.
 */
export function isPushWake(payload: unknown): boolean {
  return typeof payload === "object" && payload !== null && (payload as { wake?: unknown }).wake === true
}

/** What to show for a wake-up: nothing of any message, which the device was not sent. */
export const WAKE_NOTIFICATION = { title: "New messages", tag: "parley-wake" } as const

/** The relay's HTTP origin for a WebSocket URL (`wss://relay.example/x` → `https://relay.example`). */
export function httpOriginOf(url: string): string {
  const parsed = new URL(url)
  parsed.protocol =
    parsed.protocol === "wss:" ? "https:" : parsed.protocol === "ws:" ? "http:" : parsed.protocol
  return parsed.origin
}

/** The typed error of a refused push request (the relay answers RFC 9457 problems with Parley's `code`). */
async function refusal(response: Response): Promise<ParleyError> {
  const problem = (await response.json().catch(() => undefined)) as
    | { code?: string; detail?: string }
    | undefined
  const code = (Object.values(ErrorCode) as string[]).includes(problem?.code ?? "")
    ? (problem!.code as ErrorCode)
    : response.status === 401
      ? ErrorCode.UNAUTHORIZED
      : ErrorCode.UNAVAILABLE
  return new ParleyError(code, problem?.detail ?? `the relay answered ${response.status}`)
}

/**
 * The user's push registrations on the relay (`/v1/me/push-subscriptions`),
 * authenticated with the user's own token.
 */
export class PushRegistrations {
  /** This device's registration, made through this object: what {@link renewWith} renews. */
  private registered: { readonly device: string; readonly subscription: PushSubscriptionInput } | undefined
  /** The `exp` (ms) of the token it was registered or last renewed with; null: a token without one (never lapses). */
  private renewedUntil: number | null = null
  /** Registrations and renewals one at a time: a renewal never sends a subscription a newer registration replaced. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    private readonly origin: string,
    private readonly token: () => Promise<string>,
    private readonly fetcher: typeof fetch = (...args) => fetch(...args),
    /** A renewal failed (other than the relay no longer having the subscription). */
    private readonly onRenewalError: (error: ParleyError) => void = () => {},
  ) {}

  /** The relay's VAPID public key: pass it as `applicationServerKey` to `PushManager.subscribe`. */
  async publicKey(): Promise<string> {
    const response = await this.fetcher(`${this.origin}/v1/push/public-key`)
    if (!response.ok) throw await refusal(response)
    return ((await response.json()) as { publicKey: string }).publicKey
  }

  /**
   * Registers (or replaces) this device's subscription under `device`, a name
   * stable per installation: the browser's `PushSubscription` itself, or its `toJSON()`.
   */
  async register(
    device: string,
    subscription: PushSubscriptionInput | BrowserPushSubscription,
  ): Promise<PushDevice> {
    const json = (
      "toJSON" in subscription ? subscription.toJSON() : subscription
    ) as Partial<PushSubscriptionInput>
    const { endpoint, keys } = json
    if (typeof endpoint !== "string" || typeof keys?.p256dh !== "string" || typeof keys.auth !== "string")
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        "a push subscription needs an endpoint and its p256dh and auth keys",
      )
    const input = { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } }
    return this.serially(async () => {
      const token = await this.token()
      const registered = (await this.call("POST", "", { device, subscription: input }, token)) as PushDevice
      this.registered = { device, subscription: input }
      this.renewedUntil = expiryOfToken(token) ?? null
      return registered
    })
  }

  /**
   * Renews this device's registration with `token`, a token the client just
   * got (it connects, or refreshes one ahead of expiry): the relay sends a
   * device full notifications only until the token that registered or last
   * renewed it expires. Done in the background, only when `token` expires at
   * least {@link PUSH_RENEWAL_STEP_MS} later than the last one did (any later
   * once that one is within a minute of its end; or it has no `exp` where the
   * last had one). A device the relay no longer has (removed
   * elsewhere, replaced, dropped) is not registered again.
   */
  renewWith(token: string): void {
    if (!this.registered) return
    void this.serially(async () => {
      const registered = this.registered
      const last = this.renewedUntil
      const until = expiryOfToken(token) ?? null
      if (!registered || last === null || !(until === null || renewsEnough(until, last, Date.now()))) return
      try {
        await this.call("POST", "", { ...registered, renew: true }, token)
        if (this.registered === registered) this.renewedUntil = until
      } catch (error) {
        const refused =
          error instanceof ParleyError ? error : new ParleyError(ErrorCode.UNAVAILABLE, String(error))
        if (refused.code === ErrorCode.NOT_FOUND) {
          if (this.registered === registered) this.registered = undefined
          return
        }
        this.onRenewalError(refused)
      }
    })
  }

  /** Runs `task` after the registrations and renewals asked for before it. */
  private serially<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task)
    this.queue = run.catch(() => {})
    return run
  }

  /** Stops pushing to `device`; false when the relay had no such device. */
  async unregister(device: string): Promise<boolean> {
    if (this.registered?.device === device) this.registered = undefined
    try {
      await this.call("DELETE", `/${encodeURIComponent(device)}`)
      return true
    } catch (error) {
      if (error instanceof ParleyError && error.code === ErrorCode.NOT_FOUND) return false
      throw error
    }
  }

  /** The user's registered devices, oldest first. */
  async devices(): Promise<PushDevice[]> {
    return ((await this.call("GET", "")) as { devices: PushDevice[] }).devices
  }

  private async call(method: string, path: string, body?: unknown, token?: string): Promise<unknown> {
    const response = await this.fetcher(`${this.origin}/v1/me/push-subscriptions${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token ?? (await this.token())}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    if (!response.ok) throw await refusal(response)
    return response.status === 204 ? undefined : response.json()
  }
}
