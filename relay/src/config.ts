import { readFileSync } from "node:fs"
import { parseArgs } from "node:util"
import type { AuthKey } from "./auth.js"
import { LOG_LEVELS, type LogLevel } from "./log.js"
import type { RelayOptions } from "./relay.js"
import { DEFAULT_DATABASE_URL, type StorageKind } from "./storage/index.js"
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
  "max-awareness-per-second": {
    kind: "integer",
    env: "PARLEY_MAX_AWARENESS_PER_SECOND",
    help: "awareness frames per second per connection on average, apart from other frames (then close 4429)",
    default: "500",
  },
  "awareness-burst": {
    kind: "integer",
    env: "PARLEY_AWARENESS_BURST",
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
    dev,
    forceDev: bool("force-dev"),
    log: logLevel,
    ...(staticDir ? { staticDir } : {}),
    ...hookOptions(),
    defaultMetrics: true,
    limits: {
      idleUnloadMs: int("idle-unload-ms"),
      maxDocuments: Math.max(1, int("max-documents")),
      maxFrameBytes: int("max-frame-bytes"),
      maxUpdateBytes: int("max-frame-bytes"),
      maxBufferedBytes: int("max-buffered-bytes"),
      maxMessagesPerSecond: int("max-messages-per-second"),
      messageBurst: Math.max(1, int("message-burst")),
      maxAwarenessPerSecond: int("max-awareness-per-second"),
      awarenessBurst: Math.max(1, int("awareness-burst")),
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
    },
  }
}
