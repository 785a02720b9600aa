import { DEFAULT_HOOK_ATTEMPTS, DEFAULT_HOOK_TIMEOUT_MS } from "./hooks/dispatcher.js"
import { DEFAULT_HOOK_MEMORY_MB } from "./hooks/worker-host.js"
import { DEFAULT_STORAGE_TIMEOUT_MS } from "./storage/guard.js"
import type { TransportLimits } from "./ws-transport.js"

// The one place of the relay's defaults: `startRelay` falls back on these and the
// command line shows them in `--help`. Limits of the core keep theirs beside their
// code (DEFAULT_CORE_LIMITS, DEFAULT_AWARENESS_LIMITS, DEFAULT_UPDATE_COST_LIMITS).

/** Defaults of the transport's limits. */
export const DEFAULT_TRANSPORT_LIMITS: TransportLimits = {
  maxFrameBytes: 1024 * 1024,
  // What may queue behind a client's initial sync (which does not count, however large).
  maxBufferedBytes: 8 * 1024 * 1024,
  maxMessagesPerSecond: 100,
  messageBurst: 200,
  pingIntervalMs: 15_000,
  pingTimeoutMs: 30_000,
  socketAwarenessPerSecond: 500,
  socketAwarenessBurst: 1000,
  addressAuthFailuresPerMinute: 120,
  addressRequestsPerSecond: 100,
  connectionsPerAddress: 512,
  // 0: the file-descriptor limit less a reserve (see defaultMaxConnections).
  maxConnections: 0,
  requestHeadersTimeoutMs: 10_000,
  // The SDK closes its socket once its last channel closes; one opens its first channel at once.
  muxIdleMs: 30_000,
}

/** Default of `RelayOptions.maxTokenLifetimeMs`: a day. */
export const DEFAULT_MAX_TOKEN_LIFETIME_MS = 24 * 60 * 60 * 1000

/**
 * Defaults of the relay's options that are not limits. There is no default
 * database: PostgreSQL storage needs its connection string.
 */
export const DEFAULT_RELAY_OPTIONS = {
  port: 1234,
  host: "127.0.0.1",
  dataDir: "./data",
  storage: "sqlite",
  log: "info",
  maxTokenLifetimeMs: DEFAULT_MAX_TOKEN_LIFETIME_MS,
  storageTimeoutMs: DEFAULT_STORAGE_TIMEOUT_MS,
  hookTimeoutMs: DEFAULT_HOOK_TIMEOUT_MS,
  hookAttempts: DEFAULT_HOOK_ATTEMPTS,
  hookMemoryMb: DEFAULT_HOOK_MEMORY_MB,
} as const
