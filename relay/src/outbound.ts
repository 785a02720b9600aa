import { Agent, fetch as undiciFetch } from "undici"

/**
 * Most connections the relay opens to one origin for outgoing requests
 * (webhooks, push services, link previews). A receiver that accepts and never
 * answers would otherwise get one socket per request in flight — one per
 * conversation with an event due, thousands — and the relay would run out of
 * file descriptors (under the common 1,024 soft limit) and fail its own
 * clients. Requests beyond it wait for a connection, bounded by their own
 * timeout.
 */
export const CONNECTIONS_PER_ORIGIN = 16

/**
 * Most requests to addresses users chose (push endpoints, link previews) in
 * flight at once, whatever their origins: an attacker's endpoints on many
 * hosts or ports would get past {@link CONNECTIONS_PER_ORIGIN}. Requests
 * beyond it wait for a slot, bounded by their own signal. Well inside the
 * descriptors `--max-connections` leaves the relay by default (a quarter of
 * the limit, 256 under 1,024).
 */
export const USER_CHOSEN_REQUESTS_IN_FLIGHT = 64

/** An undici Agent holding at most `connections` (default {@link CONNECTIONS_PER_ORIGIN}) connections per origin. */
export function cappedAgent(
  options: ConstructorParameters<typeof Agent>[0] = {},
  connections = CONNECTIONS_PER_ORIGIN,
): Agent {
  return new Agent({ ...options, connections })
}

/**
 * `fetch` through `agent`. undici's own fetch: Node 20's built-in one is an
 * older undici that does not take this one's dispatcher; their Request and
 * Response are the same WHATWG shapes.
 */
export function fetchThrough(agent: Agent): typeof fetch {
  return ((input: string | URL, init?: RequestInit) =>
    undiciFetch(input, { ...(init as object), dispatcher: agent } as never)) as unknown as typeof fetch
}

/**
 * At most `max` calls of a `fetch` in flight (until the response's headers, or
 * the failure); the others wait in order, each until its own signal aborts.
 */
export class InFlightLimit {
  private running = 0
  private readonly waiting: { go: () => void; signal: AbortSignal | undefined }[] = []

  constructor(private readonly max: number) {}

  /** `send`, counted against the limit. */
  wrap(send: typeof fetch): typeof fetch {
    return ((input: string | URL | Request, init?: RequestInit) =>
      this.run(init?.signal ?? undefined, () => send(input, init))) as typeof fetch
  }

  /** Runs `task` once a slot is free (waiting at most until `signal` aborts), counted until it settles. */
  async run<T>(signal: AbortSignal | undefined, task: () => Promise<T>): Promise<T> {
    await this.acquire(signal)
    try {
      return await task()
    } finally {
      this.release()
    }
  }

  private acquire(signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted()
    if (this.running < this.max) {
      this.running++
      return Promise.resolve()
    }
    return new Promise((resolve, reject) => {
      const entry = {
        signal,
        go: () => {
          signal?.removeEventListener("abort", abort)
          this.running++
          resolve()
        },
      }
      const abort = () => {
        const at = this.waiting.indexOf(entry)
        if (at >= 0) this.waiting.splice(at, 1)
        reject(signal!.reason)
      }
      signal?.addEventListener("abort", abort, { once: true })
      this.waiting.push(entry)
    })
  }

  private release(): void {
    this.running--
    this.waiting.shift()?.go()
  }
}

/** The relay's one limit of requests to addresses users chose: push services and link previews share it. */
export const userChosenRequests = new InFlightLimit(USER_CHOSEN_REQUESTS_IN_FLIGHT)
