/** Limits of the HTTP API. */
export interface ApiLimits {
  /** Largest request body accepted; larger ones are refused with 413 before they are read whole. */
  readonly maxBodyBytes: number
  /**
   * Longest a request's body may take to arrive, in ms; beyond, the
   * connection is closed. A body is at most {@link maxBodyBytes}: one sent a
   * byte at a time held its connection for Node's 300 s request timeout.
   */
  readonly bodyTimeoutMs: number
  /** Average requests a second one API key may make; beyond, 429 with `Retry-After`. */
  readonly requestsPerSecond: number
  /** Requests one key may make in a burst. */
  readonly requestBurst: number
  /**
   * Participants one key may add per minute, in groups it creates, to
   * existing ones and as the other user of each direct conversation it asks
   * for, whoever it acts as: each costs the relay an inbox write
   * (a group of 999 about 0.6 s of CPU), and the per-user limits count users'
   * own writes only. Beyond, 429 `RATE_LIMITED` (`participants-per-minute`)
   * with `Retry-After`, nothing written. 0 turns it off.
   */
  readonly participantsPerMinute: number
  /** Event streams one key may hold open at once; beyond, 429. */
  readonly streamsPerKey: number
  /**
   * Events a second one key's streams are sent from the log on average
   * (bursts of 20 times that): beyond, a stream catching up waits before its
   * next read. Each costs the relay its read and encoding, about 20 µs: a
   * replay of a whole log (37,000 events) took 800 ms of CPU, and a key's
   * streams could ask for it again and again.
   */
  readonly streamEventsPerSecond: number
  /** Time between `: ping` comments on an idle event stream. */
  readonly heartbeatMs: number
  /** Reconnection delay a stream asks its client for (`retry:`). */
  readonly retryMs: number
}

/** Defaults of {@link ApiLimits}. */
export const DEFAULT_API_LIMITS: ApiLimits = {
  maxBodyBytes: 256 * 1024,
  // 256 KiB in 30 s is 70 kbit/s: a slow mobile link still makes it.
  bodyTimeoutMs: 30_000,
  requestsPerSecond: 100,
  requestBurst: 200,
  // Ten groups of a thousand members a minute: a bulk import goes at that pace, a key adding without
  // end costs the relay about a tenth of a core.
  participantsPerMinute: 10_000,
  streamsPerKey: 4,
  // A backend catching up after an hour's outage of a busy relay (a few hundred thousand events) takes
  // minutes; one replaying the log over and over costs the relay under 5 % of a core.
  streamEventsPerSecond: 2_000,
  heartbeatMs: 15_000,
  retryMs: 2_000,
}
