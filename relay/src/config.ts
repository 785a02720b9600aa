import { readFileSync } from "node:fs"
import { parseArgs } from "node:util"
import type { AuthKey } from "./auth.js"
import { LOG_LEVELS, type LogLevel } from "./log.js"
import type { RelayOptions } from "./relay.js"
import { DEFAULT_DATABASE_URL, type StorageKind } from "./storage/index.js"
import { DEFAULT_UPDATE_COST_LIMITS as COST } from "./update-cost.js"
import { DEFAULT_USER_LIMITS as USER } from "./user-limits.js"

type Kind = "string" | "boolean" | "integer"

/** Every flag, its environment variable, and what it means (the README's table is this list). */
export const FLAGS = {
  port: {
    kind: "integer",
    env: "PARLEY_PORT",
    help: "port to listen on; 0 = any free port",
    default: "1234",
  },
  host: { kind: "string", env: "PARLEY_HOST", help: "interface to bind", default: "127.0.0.1" },
  "data-dir": { kind: "string", env: "PARLEY_DATA_DIR", help: "data directory (sqlite)", default: "./data" },
  storage: { kind: "string", env: "PARLEY_STORAGE", help: "memory | sqlite | postgres", default: "sqlite" },
  "database-url": {
    kind: "string",
    env: "DATABASE_URL",
    help: "PostgreSQL connection string (storage postgres)",
    default: DEFAULT_DATABASE_URL,
  },
  "auth-secret": { kind: "string", env: "PARLEY_AUTH_SECRET", help: "HS256 secret of tokens" },
  "auth-public-key": {
    kind: "string",
    env: "PARLEY_AUTH_PUBLIC_KEY",
    help: "path of a PEM public key (RS*, PS*, ES*, EdDSA tokens)",
  },
  "auth-jwks-url": { kind: "string", env: "PARLEY_AUTH_JWKS_URL", help: "JWKS URL of token keys" },
  "auth-issuer": { kind: "string", env: "PARLEY_AUTH_ISSUER", help: "required iss claim" },
  "auth-audience": { kind: "string", env: "PARLEY_AUTH_AUDIENCE", help: "required aud claim" },
  "allow-tokens-without-exp": {
    kind: "boolean",
    env: "PARLEY_ALLOW_TOKENS_WITHOUT_EXP",
    help: "accept tokens without an exp claim (refused by default)",
  },
  "max-token-lifetime-ms": {
    kind: "integer",
    env: "PARLEY_MAX_TOKEN_LIFETIME_MS",
    help: "refuse tokens whose exp is further ahead than this; 0 = no cap",
    default: String(24 * 60 * 60 * 1000),
  },
  "log-level": { kind: "string", env: "PARLEY_LOG_LEVEL", help: LOG_LEVELS.join(" | "), default: "info" },
  dev: { kind: "boolean", env: "PARLEY_DEV", help: "mint tokens at /dev/token (insecure)" },
  "force-dev": { kind: "boolean", env: "PARLEY_FORCE_DEV", help: "allow --dev on a non-loopback host" },
  static: { kind: "string", env: "PARLEY_STATIC", help: "serve a built web app from DIR at /" },
  "idle-unload-ms": {
    kind: "integer",
    env: "PARLEY_IDLE_UNLOAD_MS",
    help: "unload a document this long after its last connection",
    default: "30000",
  },
  "max-documents": {
    kind: "integer",
    env: "PARLEY_MAX_DOCUMENTS",
    help: "most documents loaded at once (then 4503)",
    default: "10000",
  },
  "max-frame-bytes": {
    kind: "integer",
    env: "PARLEY_MAX_FRAME_BYTES",
    help: "largest frame accepted (then close 4413)",
    default: String(1024 * 1024),
  },
  "max-buffered-bytes": {
    kind: "integer",
    env: "PARLEY_MAX_BUFFERED_BYTES",
    help: "send queue per connection, beyond its initial sync (then close 4429)",
    default: String(8 * 1024 * 1024),
  },
  "max-messages-per-second": {
    kind: "integer",
    env: "PARLEY_MAX_MESSAGES_PER_SECOND",
    help: "frames per second per connection on average (then close 4429)",
    default: "100",
  },
  "message-burst": {
    kind: "integer",
    env: "PARLEY_MESSAGE_BURST",
    help: "frames per connection in a burst",
    default: "200",
  },
  "max-awareness-entries": {
    kind: "integer",
    env: "PARLEY_MAX_AWARENESS_ENTRIES",
    help: "awareness entries one user may have in one document at once (more are dropped)",
    default: "16",
  },
  "max-awareness-state-bytes": {
    kind: "integer",
    env: "PARLEY_MAX_AWARENESS_STATE_BYTES",
    help: "largest awareness state, in bytes of JSON (larger ones are dropped)",
    default: "4096",
  },
  "awareness-frames-per-second": {
    kind: "integer",
    env: "PARLEY_AWARENESS_FRAMES_PER_SECOND",
    help: "awareness frames per second one user may have applied in one document (more are held back)",
    default: "10",
  },
  "awareness-burst": {
    kind: "integer",
    env: "PARLEY_AWARENESS_BURST",
    help: "awareness frames one user may have applied in one document in a burst",
    default: "30",
  },
  "awareness-claims-per-minute": {
    kind: "integer",
    env: "PARLEY_AWARENESS_CLAIMS_PER_MINUTE",
    help: "new client ids one user may claim through awareness in one document per minute",
    default: "10",
  },
  "ping-interval-ms": {
    kind: "integer",
    env: "PARLEY_PING_INTERVAL_MS",
    help: "ping (and send a keepalive frame to) every connection this often; 0 = never",
    default: "15000",
  },
  "ping-timeout-ms": {
    kind: "integer",
    env: "PARLEY_PING_TIMEOUT_MS",
    help: "drop a connection that leaves a ping unanswered this long",
    default: "30000",
  },
  "socket-awareness-per-second": {
    kind: "integer",
    env: "PARLEY_SOCKET_AWARENESS_PER_SECOND",
    help: "awareness frames per second per connection on average, apart from other frames (then close 4429)",
    default: "500",
  },
  "socket-awareness-burst": {
    kind: "integer",
    env: "PARLEY_SOCKET_AWARENESS_BURST",
    help: "awareness frames per connection in a burst",
    default: "1000",
  },
  "max-sockets-per-user": {
    kind: "integer",
    env: "PARLEY_MAX_SOCKETS_PER_USER",
    help: "connections one user may have open (then close 4429 sockets-per-user); 0 = no limit",
    default: String(USER.maxSocketsPerUser),
  },
  "max-documents-per-user": {
    kind: "integer",
    env: "PARLEY_MAX_DOCUMENTS_PER_USER",
    help: "documents one user may have open (then close 4429 documents-per-user); 0 = no limit",
    default: String(USER.maxDocumentsPerUser),
  },
  "user-updates-per-second": {
    kind: "integer",
    env: "PARLEY_USER_UPDATES_PER_SECOND",
    help: "updates per second per user across connections, one more per 16 KiB (then close 4429 updates-per-user); 0 = no limit",
    default: String(USER.userUpdatesPerSecond),
  },
  "user-update-burst": {
    kind: "integer",
    env: "PARLEY_USER_UPDATE_BURST",
    help: "updates per user in a burst",
    default: String(USER.userUpdateBurst),
  },
  "max-pending-bytes-per-user": {
    kind: "integer",
    env: "PARLEY_MAX_PENDING_BYTES_PER_USER",
    help: "update bytes of one user waiting to be stored (then close 4429 pending-bytes-per-user); 0 = no limit",
    default: String(USER.maxPendingBytesPerUser),
  },
  "max-queued-bytes-per-user": {
    kind: "integer",
    env: "PARLEY_MAX_QUEUED_BYTES_PER_USER",
    help: "unread bytes queued to one user's connections, initial syncs but the largest included (then close 4429 queued-bytes-per-user); 0 = no limit",
    default: String(USER.maxQueuedBytesPerUser),
  },
  "user-conversations-per-minute": {
    kind: "integer",
    env: "PARLEY_USER_CONVERSATIONS_PER_MINUTE",
    help: "conversations one user may create per minute (then RATE_LIMITED conversations-per-minute); 0 = no limit",
    default: String(USER.userConversationsPerMinute),
  },
  "user-participants-per-minute": {
    kind: "integer",
    env: "PARLEY_USER_PARTICIPANTS_PER_MINUTE",
    help: "participants one user may add per minute (then RATE_LIMITED participants-per-minute); 0 = no limit",
    default: String(USER.userParticipantsPerMinute),
  },
  "compact-after-updates": {
    kind: "integer",
    env: "PARLEY_COMPACT_AFTER_UPDATES",
    help: "snapshot a document after this many log entries",
    default: "500",
  },
  "compact-after-bytes": {
    kind: "integer",
    env: "PARLEY_COMPACT_AFTER_BYTES",
    help: "...or this many log bytes",
    default: String(8 * 1024 * 1024),
  },
  "max-update-structs": {
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_STRUCTS",
    help: "structs in one update (then INVALID_UPDATE, rule update-structs)",
    default: String(COST.maxUpdateStructs),
  },
  "max-update-values": {
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_VALUES",
    help: "values (messages, map values) one update writes (rule update-values)",
    default: String(COST.maxUpdateValues),
  },
  "max-update-client-ids": {
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_CLIENT_IDS",
    help: "client ids one update writes under (rule update-client-ids)",
    default: String(COST.maxUpdateClientIds),
  },
  "client-ids-per-user-per-day": {
    kind: "integer",
    env: "PARLEY_CLIENT_IDS_PER_USER_PER_DAY",
    help: "new client ids a user adds to a document per day (then RATE_LIMITED, rule client-id-growth)",
    default: String(COST.clientIdsPerUserPerDay),
  },
  "max-deleted-on-arrival": {
    kind: "integer",
    env: "PARLEY_MAX_DELETED_ON_ARRIVAL",
    help: "structs an update deletes with its own delete set (rule deleted-on-arrival)",
    default: String(COST.maxDeletedOnArrival),
  },
  "max-siblings": {
    kind: "integer",
    env: "PARLEY_MAX_SIBLINGS",
    help: "items one update inserts at one position (rule siblings)",
    default: String(COST.maxSiblings),
  },
  "max-integration-steps": {
    kind: "integer",
    env: "PARLEY_MAX_INTEGRATION_STEPS",
    help: "estimated Yjs conflict-resolution and split steps per update (rule integration-cost)",
    default: String(COST.maxIntegrationSteps),
  },
  "max-delete-ranges": {
    kind: "integer",
    env: "PARLEY_MAX_DELETE_RANGES",
    help: "ranges in one update's delete set (rule delete-ranges)",
    default: String(COST.maxDeleteRanges),
  },
  "max-delete-visits": {
    kind: "integer",
    env: "PARLEY_MAX_DELETE_VISITS",
    help: "document structs one update's delete set reaches (rule delete-visits)",
    default: String(COST.maxDeleteVisits),
  },
  hooks: { kind: "string", env: "PARLEY_HOOKS", help: "load every hook module in DIR (see HOOKS.md)" },
  webhook: {
    kind: "string",
    env: "PARLEY_WEBHOOKS",
    help: "POST signed events to URL; repeatable (env: comma-separated)",
  },
  "webhook-secret": { kind: "string", env: "PARLEY_WEBHOOK_SECRET", help: "signing secret of webhooks" },
  "hook-timeout-ms": {
    kind: "integer",
    env: "PARLEY_HOOK_TIMEOUT_MS",
    help: "time per hook call or webhook attempt",
    default: "10000",
  },
  "hook-attempts": {
    kind: "integer",
    env: "PARLEY_HOOK_ATTEMPTS",
    help: "attempts per event and hook module before it is dead-lettered",
    default: "8",
  },
  "storage-timeout-ms": {
    kind: "integer",
    env: "PARLEY_STORAGE_TIMEOUT_MS",
    help: "longest a storage call (or PostgreSQL connect, query, statement) may take before it fails",
    default: "5000",
  },
  help: { kind: "boolean", env: "", help: "print this help" },
} as const satisfies Record<string, { kind: Kind; env: string; help: string; default?: string }>

type FlagName = keyof typeof FLAGS

/** A configuration error: printed without a stack trace, exit code 2. */
export class ConfigError extends Error {
  override readonly name = "ConfigError"
}

/** The help text. */
export function usage(): string {
  const lines = ["Usage: parley-relay [options]", "", "Options (environment variable in brackets):"]
  for (const [name, flag] of Object.entries(FLAGS)) {
    const value = flag.kind === "boolean" ? "" : ` <${flag.kind === "integer" ? "n" : "value"}>`
    const def = "default" in flag ? ` (default ${flag.default})` : ""
    const env = flag.env ? ` [${flag.env}]` : ""
    lines.push(`  --${name}${value}  ${flag.help}${def}${env}`)
  }
  return lines.join("\n")
}

/** The relay options given by `argv` and `env`: a flag wins over its environment variable. */
export function parseConfig(
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): (RelayOptions & { help?: boolean }) | { help: true } {
  const parsed = parseArgs({
    args: [...argv],
    options: Object.fromEntries(
      Object.entries(FLAGS).map(([name, flag]) => [
        name,
        {
          type: flag.kind === "boolean" ? ("boolean" as const) : ("string" as const),
          ...(name === "webhook" ? { multiple: true } : {}),
        },
      ]),
    ),
    strict: true,
    allowPositionals: false,
  }).values as Record<string, string | boolean | undefined>

  const raw = (name: FlagName): string | boolean | undefined => {
    const flag = FLAGS[name]
    if (parsed[name] !== undefined) return parsed[name]
    const fromEnv = flag.env ? env[flag.env] : undefined
    if (fromEnv !== undefined && fromEnv !== "") {
      return flag.kind === "boolean" ? !["0", "false", "no"].includes(fromEnv.toLowerCase()) : fromEnv
    }
    return "default" in flag ? flag.default : undefined
  }
  const text = (name: FlagName) => raw(name) as string | undefined
  const bool = (name: FlagName) => raw(name) === true
  const int = (name: FlagName): number => {
    const value = text(name)
    const n = Number(value)
    if (!Number.isInteger(n) || n < 0)
      throw new ConfigError(`--${name} must be a non-negative integer, got ${value}`)
    return n
  }

  if (bool("help")) return { help: true }

  const storage = text("storage") as StorageKind
  if (!["memory", "sqlite", "postgres"].includes(storage))
    throw new ConfigError(`--storage must be memory, sqlite or postgres, got ${storage}`)
  const logLevel = text("log-level") as LogLevel
  if (!LOG_LEVELS.includes(logLevel))
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(", ")}`)
  const port = int("port")
  if (port > 65535) throw new ConfigError("--port must be at most 65535")

  const keys: AuthKey[] = []
  const secret = text("auth-secret")
  if (secret) keys.push({ kind: "secret", secret })
  const publicKey = text("auth-public-key")
  if (publicKey) {
    try {
      keys.push({ kind: "public-key", pem: readFileSync(publicKey, "utf8") })
    } catch (error) {
      throw new ConfigError(`cannot read --auth-public-key ${publicKey}: ${(error as Error).message}`)
    }
  }
  const jwks = text("auth-jwks-url")
  if (jwks) keys.push({ kind: "jwks", url: jwks })
  if (keys.length > 1)
    throw new ConfigError("give only one of --auth-secret, --auth-public-key, --auth-jwks-url")
  const dev = bool("dev")
  if (keys.length === 0 && !dev)
    throw new ConfigError("give --auth-secret, --auth-public-key or --auth-jwks-url (or --dev for local use)")

  const hookOptions = () => {
    const hooksDir = text("hooks")
    const urls = (parsed.webhook as unknown as string[] | undefined) ?? text("webhook")?.split(",") ?? []
    const webhooks = urls.map((u) => u.trim()).filter(Boolean)
    for (const url of webhooks) {
      if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol))
        throw new ConfigError(`--webhook must be an http(s) URL, got ${url}`)
    }
    const webhookSecret = text("webhook-secret")
    if (webhooks.length > 0 && !webhookSecret)
      throw new ConfigError("--webhook needs --webhook-secret (or PARLEY_WEBHOOK_SECRET)")
    const attempts = int("hook-attempts")
    if (attempts < 1) throw new ConfigError("--hook-attempts must be at least 1")
    return {
      ...(hooksDir ? { hooksDir } : {}),
      ...(webhooks.length > 0 ? { webhooks, webhookSecret: webhookSecret! } : {}),
      hookTimeoutMs: Math.max(1, int("hook-timeout-ms")),
      hookAttempts: attempts,
    }
  }
  const staticDir = text("static")
  const issuer = text("auth-issuer")
  const audience = text("auth-audience")
  return {
    port,
    host: text("host")!,
    dataDir: text("data-dir")!,
    storage,
    databaseUrl: text("database-url")!,
    ...(keys[0] ? { auth: keys[0] } : {}),
    ...(issuer ? { authIssuer: issuer } : {}),
    ...(audience ? { authAudience: audience } : {}),
    allowTokensWithoutExp: bool("allow-tokens-without-exp"),
    maxTokenLifetimeMs: int("max-token-lifetime-ms"),
    dev,
    forceDev: bool("force-dev"),
    log: logLevel,
    ...(staticDir ? { staticDir } : {}),
    ...hookOptions(),
    defaultMetrics: true,
    storageTimeoutMs: Math.max(1, int("storage-timeout-ms")),
    limits: {
      idleUnloadMs: int("idle-unload-ms"),
      maxDocuments: Math.max(1, int("max-documents")),
      maxFrameBytes: int("max-frame-bytes"),
      maxUpdateBytes: int("max-frame-bytes"),
      maxBufferedBytes: int("max-buffered-bytes"),
      maxMessagesPerSecond: int("max-messages-per-second"),
      messageBurst: Math.max(1, int("message-burst")),
      maxAwarenessEntries: int("max-awareness-entries"),
      maxAwarenessStateBytes: int("max-awareness-state-bytes"),
      awarenessFramesPerSecond: Math.max(1, int("awareness-frames-per-second")),
      awarenessBurst: Math.max(1, int("awareness-burst")),
      awarenessClaimsPerMinute: int("awareness-claims-per-minute"),
      pingIntervalMs: int("ping-interval-ms"),
      pingTimeoutMs: Math.max(1, int("ping-timeout-ms")),
      socketAwarenessPerSecond: int("socket-awareness-per-second"),
      socketAwarenessBurst: Math.max(1, int("socket-awareness-burst")),
      maxSocketsPerUser: int("max-sockets-per-user"),
      maxDocumentsPerUser: int("max-documents-per-user"),
      userUpdatesPerSecond: int("user-updates-per-second"),
      userUpdateBurst: Math.max(1, int("user-update-burst")),
      maxPendingBytesPerUser: int("max-pending-bytes-per-user"),
      maxQueuedBytesPerUser: int("max-queued-bytes-per-user"),
      userConversationsPerMinute: int("user-conversations-per-minute"),
      userParticipantsPerMinute: int("user-participants-per-minute"),
      compactAfterUpdates: Math.max(1, int("compact-after-updates")),
      compactAfterBytes: int("compact-after-bytes"),
      maxUpdateStructs: int("max-update-structs"),
      maxUpdateValues: int("max-update-values"),
      maxUpdateClientIds: int("max-update-client-ids"),
      clientIdsPerUserPerDay: int("client-ids-per-user-per-day"),
      maxDeletedOnArrival: int("max-deleted-on-arrival"),
      maxSiblings: Math.max(1, int("max-siblings")),
      maxIntegrationSteps: int("max-integration-steps"),
      maxDeleteRanges: int("max-delete-ranges"),
      maxDeleteVisits: int("max-delete-visits"),
    },
  }
}
