/** Limits of the HTTP API. */
export interface ApiLimits {
  /** Largest request body accepted; larger ones are refused with 413 before they are read whole. */
  readonly maxBodyBytes: number
  /** Average requests a second one API key may make; beyond, 429 with `Retry-After`. */
  readonly requestsPerSecond: number
  /** Requests one key may make in a burst. */
  readonly requestBurst: number
  /** Event streams one key may hold open at once; beyond, 429. */
  readonly streamsPerKey: number
  /** Time between `: ping` comments on an idle event stream. */
  readonly heartbeatMs: number
  /** Reconnection delay a stream asks its client for (`retry:`). */
  readonly retryMs: number
}

/** Defaults of {@link ApiLimits}. */
export const DEFAULT_API_LIMITS: ApiLimits = {
  maxBodyBytes: 256 * 1024,
  requestsPerSecond: 100,
  requestBurst: 200,
  streamsPerKey: 4,
  heartbeatMs: 15_000,
  retryMs: 2_000,
}
