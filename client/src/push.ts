import { ErrorCode, ParleyError } from "@parley/shared"

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
}

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
  constructor(
    private readonly origin: string,
    private readonly token: () => Promise<string>,
    private readonly fetcher: typeof fetch = (...args) => fetch(...args),
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
    return (await this.call("POST", "", {
      device,
      subscription: { endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } },
    })) as PushDevice
  }

  /** Stops pushing to `device`; false when the relay had no such device. */
  async unregister(device: string): Promise<boolean> {
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

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const response = await this.fetcher(`${this.origin}/v1/me/push-subscriptions${path}`, {
      method,
      headers: {
        authorization: `Bearer ${await this.token()}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    if (!response.ok) throw await refusal(response)
    return response.status === 204 ? undefined : response.json()
  }
}
