import { readFileSync, statSync } from "node:fs"
import { HistoryDefaults } from "@parley/shared"
import { Command, CommanderError, Option } from "commander"
import { DEFAULT_API_LIMITS } from "./api/limits.js"
import { DEFAULT_ATTACHMENT_OPTIONS as ATTACHMENTS } from "./attachments/extension.js"
import { Authenticator, type AuthKey } from "./auth.js"
import { DEFAULT_RELAY_OPTIONS as RELAY, DEFAULT_TRANSPORT_LIMITS as TRANSPORT } from "./defaults.js"
import { SealedReadDefaults } from "./history/sealed-reads.js"
import { exponentialBackoff } from "./hooks/dispatcher.js"
import { DEFAULT_EVENT_RETENTION } from "./hooks/event-log.js"
import { LOG_LEVELS, type LogLevel } from "./log.js"
import { DAY_MS, DEFAULT_PUSH_WAKE_DAYS } from "./push/lifetime.js"
import type { RelayOptions } from "./relay.js"
import { DEFAULT_CORE_LIMITS as CORE } from "./relay-core.js"
import { ExitCode, StartupError } from "./startup-error.js"
import type { StorageKind } from "./storage/index.js"
import { DEFAULT_USER_LIMITS as USER } from "./user-limits.js"

/** Shortest `--metrics-token` taken: a guessable one would protect nothing. */
const MIN_METRICS_TOKEN_LENGTH = 16

/** How a flag's value is read: a number, a word, a switch, or a list (repeatable; comma-separated in its variable). */
type Kind = "integer" | "string" | "boolean" | "list"

/** One flag of a command line: its variable, help, default and how its value is read. */
export interface FlagSpec {
  readonly kind: Kind
  /** Its `PARLEY_*` environment variable (or `DATABASE_URL`); none for `--help` and sub-command arguments. */
  readonly env?: string
  readonly help: string
  /** Taken from the defaults of the code that uses it, never restated here. */
  readonly default?: number | string
  /** The only values allowed (a word). */
  readonly choices?: readonly string[]
  /** Largest value allowed (an integer). */
  readonly max?: number
  /** What the value is, for the help (`<n>` for integers, `<value>` unless given). */
  readonly value?: string
}

/** A flag, its type kept for {@link FlagValues}. */
export const flag = <const F extends FlagSpec>(spec: F): F => spec

/** Every flag of the relay with its environment variable (`--help` lists them; relay/README.md documents them). */
export const RELAY_FLAGS = {
  port: flag({
    kind: "integer",
    env: "PARLEY_PORT",
    help: "port to listen on; 0 = any free port",
    default: RELAY.port,
    max: 65535,
  }),
  host: flag({
    value: "host",
    kind: "string",
    env: "PARLEY_HOST",
    help: "interface to bind",
    default: RELAY.host,
  }),
  "data-dir": flag({
    value: "dir",
    kind: "string",
    env: "PARLEY_DATA_DIR",
    help: "data directory (sqlite)",
    default: RELAY.dataDir,
  }),
  storage: flag({
    value: "kind",
    kind: "string",
    env: "PARLEY_STORAGE",
    help: "memory | sqlite | postgres",
    default: RELAY.storage,
    choices: ["memory", "sqlite", "postgres"],
  }),
  "database-url": flag({
    value: "url",
    kind: "string",
    env: "DATABASE_URL",
    help: "PostgreSQL connection string (required by --storage postgres)",
  }),
  "auth-secret": flag({
    value: "secret",
    kind: "string",
    env: "PARLEY_AUTH_SECRET",
    help: "HS256 secret of tokens",
  }),
  "auth-public-key": flag({
    value: "file",
    kind: "string",
    env: "PARLEY_AUTH_PUBLIC_KEY",
    help: "path of a PEM public key (RS*, PS*, ES*, EdDSA tokens)",
  }),
  "auth-jwks-url": flag({
    value: "url",
    kind: "string",
    env: "PARLEY_AUTH_JWKS_URL",
    help: "JWKS URL of token keys",
  }),
  "auth-issuer": flag({
    value: "iss",
    kind: "string",
    env: "PARLEY_AUTH_ISSUER",
    help: "required iss claim",
  }),
  "auth-audience": flag({
    value: "aud",
    kind: "string",
    env: "PARLEY_AUTH_AUDIENCE",
    help: "required aud claim",
  }),
  "allow-tokens-without-exp": flag({
    kind: "boolean",
    env: "PARLEY_ALLOW_TOKENS_WITHOUT_EXP",
    help: "accept tokens without an exp claim (refused by default)",
  }),
  "max-token-lifetime-ms": flag({
    kind: "integer",
    env: "PARLEY_MAX_TOKEN_LIFETIME_MS",
    help: "refuse tokens whose exp is further ahead than this; 0 = no cap",
    default: RELAY.maxTokenLifetimeMs,
  }),
  "log-level": flag({
    value: "level",
    kind: "string",
    env: "PARLEY_LOG_LEVEL",
    help: LOG_LEVELS.join(" | "),
    default: RELAY.log,
    choices: LOG_LEVELS,
  }),
  dev: flag({ kind: "boolean", env: "PARLEY_DEV", help: "mint tokens at /dev/token (insecure)" }),
  "force-dev": flag({ kind: "boolean", env: "PARLEY_FORCE_DEV", help: "allow --dev on a non-loopback host" }),
  static: flag({
    value: "dir",
    kind: "string",
    env: "PARLEY_STATIC",
    help: "serve a built web app from DIR at /",
  }),
  "metrics-token": flag({
    value: "token",
    kind: "string",
    env: "PARLEY_METRICS_TOKEN",
    help: `GET /metrics requires "Authorization: Bearer TOKEN" (at least ${MIN_METRICS_TOKEN_LENGTH} characters); unset = served to anyone who reaches the port`,
  }),
  "idle-unload-ms": flag({
    kind: "integer",
    env: "PARLEY_IDLE_UNLOAD_MS",
    help: "unload a document this long after its last connection",
    default: CORE.idleUnloadMs,
  }),
  "max-documents": flag({
    kind: "integer",
    env: "PARLEY_MAX_DOCUMENTS",
    help: "most documents loaded at once (then 4503)",
    default: CORE.maxDocuments,
  }),
  "max-frame-bytes": flag({
    kind: "integer",
    env: "PARLEY_MAX_FRAME_BYTES",
    help: "largest frame accepted (then close 4413)",
    default: TRANSPORT.maxFrameBytes,
  }),
  "max-buffered-bytes": flag({
    kind: "integer",
    env: "PARLEY_MAX_BUFFERED_BYTES",
    help: "send queue per connection, beyond its initial sync (then close 4429)",
    default: TRANSPORT.maxBufferedBytes,
  }),
  "max-messages-per-second": flag({
    kind: "integer",
    env: "PARLEY_MAX_MESSAGES_PER_SECOND",
    help: "frames per second per connection on average (then close 4429)",
    default: TRANSPORT.maxMessagesPerSecond,
  }),
  "message-burst": flag({
    kind: "integer",
    env: "PARLEY_MESSAGE_BURST",
    help: "frames per connection in a burst",
    default: TRANSPORT.messageBurst,
  }),
  "max-awareness-entries": flag({
    kind: "integer",
    env: "PARLEY_MAX_AWARENESS_ENTRIES",
    help: "awareness entries one user may have in one document at once (more are dropped)",
    default: CORE.maxAwarenessEntries,
  }),
  "max-awareness-state-bytes": flag({
    kind: "integer",
    env: "PARLEY_MAX_AWARENESS_STATE_BYTES",
    help: "largest awareness state, in bytes of JSON (larger ones are dropped)",
    default: CORE.maxAwarenessStateBytes,
  }),
  "awareness-frames-per-second": flag({
    kind: "integer",
    env: "PARLEY_AWARENESS_FRAMES_PER_SECOND",
    help: "awareness frames per second one user may have applied in one document (more are held back)",
    default: CORE.awarenessFramesPerSecond,
  }),
  "awareness-burst": flag({
    kind: "integer",
    env: "PARLEY_AWARENESS_BURST",
    help: "awareness frames one user may have applied in one document in a burst",
    default: CORE.awarenessBurst,
  }),
  "awareness-claims-per-minute": flag({
    kind: "integer",
    env: "PARLEY_AWARENESS_CLAIMS_PER_MINUTE",
    help: "new client ids one user may claim through awareness in one document per minute",
    default: CORE.awarenessClaimsPerMinute,
  }),
  "ping-interval-ms": flag({
    kind: "integer",
    env: "PARLEY_PING_INTERVAL_MS",
    help: "ping (and send a keepalive frame to) every connection this often; 0 = never",
    default: TRANSPORT.pingIntervalMs,
  }),
  "ping-timeout-ms": flag({
    kind: "integer",
    env: "PARLEY_PING_TIMEOUT_MS",
    help: "drop a connection that leaves a ping unanswered this long",
    default: TRANSPORT.pingTimeoutMs,
  }),
  "socket-awareness-per-second": flag({
    kind: "integer",
    env: "PARLEY_SOCKET_AWARENESS_PER_SECOND",
    help: "awareness frames per second per connection on average, apart from other frames (then close 4429)",
    default: TRANSPORT.socketAwarenessPerSecond,
  }),
  "socket-awareness-burst": flag({
    kind: "integer",
    env: "PARLEY_SOCKET_AWARENESS_BURST",
    help: "awareness frames per connection in a burst",
    default: TRANSPORT.socketAwarenessBurst,
  }),
  "max-sockets-per-user": flag({
    kind: "integer",
    env: "PARLEY_MAX_SOCKETS_PER_USER",
    help: "connections one user may have open (then close 4429 sockets-per-user); 0 = no limit",
    default: USER.maxSocketsPerUser,
  }),
  "max-documents-per-user": flag({
    kind: "integer",
    env: "PARLEY_MAX_DOCUMENTS_PER_USER",
    help: "documents one user may have open, their own inbox not counted (then close 4429 documents-per-user); 0 = no limit",
    default: USER.maxDocumentsPerUser,
  }),
  "max-connections-per-user": flag({
    kind: "integer",
    env: "PARLEY_MAX_CONNECTIONS_PER_USER",
    help: "connections to documents one user may have open, each multiplexed channel counted (then 4429 connections-per-user); 0 = no limit",
    default: USER.maxConnectionsPerUser,
  }),
  "user-updates-per-second": flag({
    kind: "integer",
    env: "PARLEY_USER_UPDATES_PER_SECOND",
    help: "updates per second per user across connections, one more per 16 KiB, per 100 recipients and per 16 values (then close 4429 updates-per-user); 0 = no limit",
    default: USER.userUpdatesPerSecond,
  }),
  "user-update-burst": flag({
    kind: "integer",
    env: "PARLEY_USER_UPDATE_BURST",
    help: "updates per user in a burst",
    default: USER.userUpdateBurst,
  }),
  "max-pending-bytes-per-user": flag({
    kind: "integer",
    env: "PARLEY_MAX_PENDING_BYTES_PER_USER",
    help: "update bytes of one user waiting to be stored (then close 4429 pending-bytes-per-user); 0 = no limit",
    default: USER.maxPendingBytesPerUser,
  }),
  "max-queued-bytes-per-user": flag({
    kind: "integer",
    env: "PARLEY_MAX_QUEUED_BYTES_PER_USER",
    help: "unread bytes queued to one user's connections, initial syncs but the largest included (then close 4429 queued-bytes-per-user); 0 = no limit",
    default: USER.maxQueuedBytesPerUser,
  }),
  "user-conversations-per-minute": flag({
    kind: "integer",
    env: "PARLEY_USER_CONVERSATIONS_PER_MINUTE",
    help: "conversations one user may create per minute (then RATE_LIMITED conversations-per-minute); 0 = no limit",
    default: USER.userConversationsPerMinute,
  }),
  "user-participants-per-minute": flag({
    kind: "integer",
    env: "PARLEY_USER_PARTICIPANTS_PER_MINUTE",
    help: "participants one user may add per minute (then RATE_LIMITED participants-per-minute); 0 = no limit",
    default: USER.userParticipantsPerMinute,
  }),
  "user-connection-attempts-per-minute": flag({
    kind: "integer",
    env: "PARLEY_USER_CONNECTION_ATTEMPTS_PER_MINUTE",
    help: "connections (and channels opened, token refreshes) one user may make per minute across devices, each a token verification (then 4429 connection-attempts-per-user); 0 = no limit",
    default: USER.userConnectionAttemptsPerMinute,
  }),
  "user-answer-bytes-per-second": flag({
    kind: "integer",
    env: "PARLEY_USER_ANSWER_BYTES_PER_SECOND",
    help: "bytes of answers to one user's sync requests, presence queries and history requests per second across connections (then answers wait); 0 = no limit",
    default: USER.userAnswerBytesPerSecond,
  }),
  "user-answer-burst-bytes": flag({
    kind: "integer",
    env: "PARLEY_USER_ANSWER_BURST_BYTES",
    help: "answer bytes one user may be sent in a burst",
    default: USER.userAnswerBurstBytes,
  }),
  "user-http-requests-per-second": flag({
    kind: "integer",
    env: "PARLEY_USER_HTTP_REQUESTS_PER_SECOND",
    help: "HTTP requests per second per user with their own token or signed URLs, across devices: attachments, uploads, push registrations, link previews (then 429 http-requests-per-user); 0 = no limit",
    default: USER.userHttpRequestsPerSecond,
  }),
  "user-http-request-burst": flag({
    kind: "integer",
    env: "PARLEY_USER_HTTP_REQUEST_BURST",
    help: "HTTP requests per user in a burst",
    default: USER.userHttpRequestBurst,
  }),
  "user-sealed-reads-per-minute": flag({
    kind: "integer",
    env: "PARLEY_USER_SEALED_READS_PER_MINUTE",
    help: "sealed history segments the relay may read for one user's changes per minute (edits, reactions, deletions of sealed messages; then RATE_LIMITED sealed-reads-per-user); 0 = no limit",
    default: USER.userSealedReadsPerMinute,
  }),
  "user-update-bytes-per-day": flag({
    kind: "integer",
    env: "PARLEY_USER_UPDATE_BYTES_PER_DAY",
    help: "bytes of one user's changes the relay stores per day, across connections, documents and relays (a bucket refilled over 24 h; then RATE_LIMITED update-bytes-per-day); 0 = no limit",
    default: USER.userUpdateBytesPerDay,
  }),
  "user-receive-bytes-per-second": flag({
    kind: "integer",
    env: "PARLEY_USER_RECEIVE_BYTES_PER_SECOND",
    help: "bytes of frames the relay reads from one user's connections per second, across connections (beyond, the connection that went over is not read until the budget is back); 0 = no limit",
    default: USER.userReceiveBytesPerSecond,
  }),
  "user-receive-burst-bytes": flag({
    kind: "integer",
    env: "PARLEY_USER_RECEIVE_BURST_BYTES",
    help: "bytes of frames one user's connections may send in a burst",
    default: USER.userReceiveBurstBytes,
  }),
  "address-auth-failures-per-minute": flag({
    kind: "integer",
    env: "PARLEY_ADDRESS_AUTH_FAILURES_PER_MINUTE",
    help: "connection attempts with a bad token per client address per minute (then HTTP 429 before verifying); 0 = no limit",
    default: TRANSPORT.addressAuthFailuresPerMinute,
  }),
  "address-requests-per-second": flag({
    kind: "integer",
    env: "PARLEY_ADDRESS_REQUESTS_PER_SECOND",
    help: "HTTP requests without credentials (health checks, /metrics, /v1/openapi.json, static files, signed attachment URLs) per client address per second, in a bucket of ten seconds' worth (then HTTP 429); 0 = no limit",
    default: TRANSPORT.addressRequestsPerSecond,
  }),
  "connections-per-address": flag({
    kind: "integer",
    env: "PARLEY_CONNECTIONS_PER_ADDRESS",
    help: "connections one client address may hold open that are not yet a user's WebSocket (requests, keep-alives, upgrades being checked; then HTTP 429 at accept); not counted with --trust-proxy; 0 = no limit",
    default: TRANSPORT.connectionsPerAddress,
  }),
  "max-connections": flag({
    kind: "integer",
    env: "PARLEY_MAX_CONNECTIONS",
    help: "connections of every kind the relay holds at once (then dropped at accept); 0 = the file-descriptor limit less a reserve of a quarter, at most 1,024",
    default: TRANSPORT.maxConnections,
  }),
  "request-headers-timeout-ms": flag({
    kind: "integer",
    env: "PARLEY_REQUEST_HEADERS_TIMEOUT_MS",
    help: "time a connection has to send a complete request's headers (then 408 and closed)",
    default: TRANSPORT.requestHeadersTimeoutMs,
  }),
  "mux-idle-ms": flag({
    kind: "integer",
    env: "PARLEY_MUX_IDLE_MS",
    help: "time a multiplexed socket may stay open without a channel (then closed 1000 `no channel`)",
    default: TRANSPORT.muxIdleMs,
  }),
  "compact-after-updates": flag({
    kind: "integer",
    env: "PARLEY_COMPACT_AFTER_UPDATES",
    help: "snapshot a document after this many log entries",
    default: CORE.compactAfterUpdates,
  }),
  "compact-after-bytes": flag({
    kind: "integer",
    env: "PARLEY_COMPACT_AFTER_BYTES",
    help: "...or this many log bytes",
    default: CORE.compactAfterBytes,
  }),
  "epoch-garbage-bytes": flag({
    kind: "integer",
    env: "PARLEY_EPOCH_GARBAGE_BYTES",
    help: "a conversation whose snapshot holds more than this many bytes of removed values (the snapshot less its values rewritten) starts a fresh epoch, which drops them; 0 = never",
    default: CORE.epochGarbageBytes,
  }),
  "epoch-garbage-interval-ms": flag({
    kind: "integer",
    env: "PARLEY_EPOCH_GARBAGE_INTERVAL_MS",
    help: "least time between two fresh epochs of one conversation, for its garbage or client ids (each closes its sockets once), unless past 32 budgets",
    default: CORE.epochGarbageIntervalMs,
  }),
  "epoch-stock-grace-ms": flag({
    kind: "integer",
    env: "PARLEY_EPOCH_STOCK_GRACE_MS",
    help: "a fresh epoch of a conversation waits this long after a stock y-websocket provider left it (one that reconnects cannot follow an epoch), unless past 32 budgets; 0 = only while one is connected",
    default: CORE.epochStockGraceMs,
  }),
  "purge-delay-ms": flag({
    kind: "integer",
    env: "PARLEY_PURGE_DELAY_MS",
    help: "a deleted message's content is purged from storage this long after its deletion, with the document's other deletions by then",
    default: CORE.purgeDelayMs,
  }),
  "history-segment-size": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_SEGMENT_SIZE",
    help: "messages per sealed history segment; 0 = never seal (the live document keeps every message)",
    default: HistoryDefaults.segmentSize,
  }),
  "history-keep-live": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_KEEP_LIVE",
    help: "latest messages a conversation's live document keeps when it seals older ones",
    default: HistoryDefaults.keepLive,
  }),
  "history-segment-chars": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_SEGMENT_CHARS",
    help: "characters of message records per sealed segment: a segment ends at this or at --history-segment-size, whichever comes first",
    default: HistoryDefaults.segmentChars,
  }),
  "history-keep-live-chars": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_KEEP_LIVE_CHARS",
    help: "characters of the latest message records a live document keeps when it seals older ones",
    default: HistoryDefaults.keepLiveChars,
  }),
  "history-refold-messages": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_REFOLD_MESSAGES",
    help: "sealed messages with reactions or edits written after their seal that a live document holds before a compaction folds them into their segments",
    default: HistoryDefaults.refoldMessages,
  }),
  "history-epoch-client-ids": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_EPOCH_CLIENT_IDS",
    help: "client ids in a live document beyond which sealing also starts a fresh epoch of it",
    default: HistoryDefaults.epochClientIds,
  }),
  "history-keep-summaries": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_KEEP_SUMMARIES",
    help: "sealed segment summaries a live document keeps when it folds older ones into a directory page",
    default: HistoryDefaults.keepSummaries,
  }),
  "history-fold-size": flag({
    kind: "integer",
    env: "PARLEY_HISTORY_FOLD_SIZE",
    help: "segment summaries folded into one history directory page at once; 0 = never fold",
    default: HistoryDefaults.foldSize,
  }),
  "max-sealed-reads-per-update": flag({
    kind: "integer",
    env: "PARLEY_MAX_SEALED_READS_PER_UPDATE",
    help: "sealed history segments one change may make the relay read (then RATE_LIMITED sealed-reads-per-update, retryable)",
    default: SealedReadDefaults.maxSealedReadsPerUpdate,
  }),
  "max-update-structs": flag({
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_STRUCTS",
    help: "structs in one update (then INVALID_UPDATE, rule update-structs)",
    default: CORE.maxUpdateStructs,
  }),
  "max-update-values": flag({
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_VALUES",
    help: "values (messages, map values) one update writes (rule update-values)",
    default: CORE.maxUpdateValues,
  }),
  "max-update-elements": flag({
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_ELEMENTS",
    help: "elements one update's values hold: each value and every entry nested in it (rule update-elements)",
    default: CORE.maxUpdateElements,
  }),
  "max-update-client-ids": flag({
    kind: "integer",
    env: "PARLEY_MAX_UPDATE_CLIENT_IDS",
    help: "client ids one update writes under (rule update-client-ids)",
    default: CORE.maxUpdateClientIds,
  }),
  "client-ids-per-user-per-day": flag({
    kind: "integer",
    env: "PARLEY_CLIENT_IDS_PER_USER_PER_DAY",
    help: "new client ids a user adds to a document per day (then RATE_LIMITED, rule client-id-growth)",
    default: CORE.clientIdsPerUserPerDay,
  }),
  "max-deleted-on-arrival": flag({
    kind: "integer",
    env: "PARLEY_MAX_DELETED_ON_ARRIVAL",
    help: "structs an update deletes with its own delete set (rule deleted-on-arrival)",
    default: CORE.maxDeletedOnArrival,
  }),
  "max-siblings": flag({
    kind: "integer",
    env: "PARLEY_MAX_SIBLINGS",
    help: "items one update inserts at one position (rule siblings)",
    default: CORE.maxSiblings,
  }),
  "max-integration-steps": flag({
    kind: "integer",
    env: "PARLEY_MAX_INTEGRATION_STEPS",
    help: "estimated Yjs conflict-resolution and split steps per update (rule integration-cost)",
    default: CORE.maxIntegrationSteps,
  }),
  "max-delete-ranges": flag({
    kind: "integer",
    env: "PARLEY_MAX_DELETE_RANGES",
    help: "ranges in one update's delete set (rule delete-ranges)",
    default: CORE.maxDeleteRanges,
  }),
  "max-delete-visits": flag({
    kind: "integer",
    env: "PARLEY_MAX_DELETE_VISITS",
    help: "document structs one update's delete set reaches (rule delete-visits)",
    default: CORE.maxDeleteVisits,
  }),
  hooks: flag({
    value: "dir",
    kind: "string",
    env: "PARLEY_HOOKS",
    help: "load every hook module in DIR (see HOOKS.md)",
  }),
  webhook: flag({
    value: "url",
    kind: "list",
    env: "PARLEY_WEBHOOKS",
    help: "POST signed events to URL; repeatable (comma-separated in the variable)",
  }),
  "webhook-secret": flag({
    value: "secret",
    kind: "string",
    env: "PARLEY_WEBHOOK_SECRET",
    help: "signing secret of webhooks",
  }),
  "vapid-public-key": flag({
    value: "key",
    kind: "string",
    env: "PARLEY_VAPID_PUBLIC_KEY",
    help: "VAPID public key (base64url) of Web Push notifications; `parley-relay vapid-keys` makes a pair",
  }),
  "vapid-private-key": flag({
    value: "key",
    kind: "string",
    env: "PARLEY_VAPID_PRIVATE_KEY",
    help: "VAPID private key (base64url) of Web Push notifications",
  }),
  "vapid-subject": flag({
    value: "url",
    kind: "string",
    env: "PARLEY_VAPID_SUBJECT",
    help: "mailto: or https: contact push services may reach about this relay",
  }),
  "push-allow-insecure-endpoints": flag({
    kind: "boolean",
    env: "PARLEY_PUSH_ALLOW_INSECURE_ENDPOINTS",
    help: "accept http: push endpoints and private or loopback addresses (tests and local development only)",
  }),
  "push-attempts": flag({
    kind: "integer",
    env: "PARLEY_PUSH_ATTEMPTS",
    help: "tries of a failing push device (each on its own schedule) before its notifications are dropped; also attempts of a message whose push fails on the relay's side before it is dead-lettered",
    default: 8,
  }),
  "push-wake-days": flag({
    kind: "integer",
    env: "PARLEY_PUSH_WAKE_DAYS",
    help: "days a push subscription whose registering token expired (and was not renewed) gets content-free wake-ups before it is deleted; 0 = deleted when the token expires",
    default: DEFAULT_PUSH_WAKE_DAYS,
    max: 3650,
  }),
  "push-retry-base-ms": flag({
    kind: "integer",
    env: "PARLEY_PUSH_RETRY_BASE_MS",
    help: "delay before the first retry of failed push notifications (doubling, up to 5 min)",
    default: 5_000,
  }),
  "attachment-max-bytes": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_MAX_BYTES",
    help: "largest attachment upload (413 beyond)",
    default: ATTACHMENTS.maxBytes,
  }),
  "attachment-types": flag({
    value: "types",
    kind: "list",
    env: "PARLEY_ATTACHMENT_TYPES",
    help: "content types accepted, as sniffed from the bytes (`image/png`, `audio/*`); repeatable; default: raster images, PDF, text, audio, video, zip, office documents",
  }),
  "attachment-uploads-per-user": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_UPLOADS_PER_USER",
    help: "upload chunks one user may send at once (429 beyond)",
    default: ATTACHMENTS.concurrentChunksPerUser,
  }),
  "attachment-bytes-per-minute": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_BYTES_PER_MINUTE",
    help: "bytes one user may upload a minute (429 beyond)",
    default: ATTACHMENTS.bytesPerMinutePerUser,
  }),
  "attachment-bytes-per-day": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_BYTES_PER_DAY",
    help: "bytes one user may upload a day, refilled over 24 hours: what one account can add to the disk (429 beyond)",
    default: ATTACHMENTS.bytesPerDayPerUser,
  }),
  "attachment-chunks-in-flight": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_CHUNKS_IN_FLIGHT",
    help: "upload chunks the relay reads at once, all users together, each up to 1 MiB in memory (beyond: the slowest chunk under about 100 KiB/s gives up its slot with 408, else 503)",
    default: ATTACHMENTS.maxChunksInFlight,
  }),
  "attachment-downloads-per-user": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_DOWNLOADS_PER_USER",
    help: "attachment downloads sent to one user at once, all their connections and signed URLs (429 downloads-at-once-per-user beyond)",
    default: ATTACHMENTS.downloadsPerUser,
  }),
  "attachment-download-idle-ms": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_DOWNLOAD_IDLE_MS",
    help: "a download whose reader takes no bytes for this long loses its connection",
    default: ATTACHMENTS.downloadIdleMs,
  }),
  "attachment-chunk-idle-ms": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_CHUNK_IDLE_MS",
    help: "an upload chunk that sends no byte for this long, or too slowly after it, is cut off (408; what arrived is kept)",
    default: ATTACHMENTS.chunkIdleMs,
  }),
  "attachment-chunk-min-bytes-per-second": flag({
    kind: "integer",
    env: "PARLEY_ATTACHMENT_CHUNK_MIN_BYTES_PER_SECOND",
    help: "least average rate of an upload chunk once --attachment-chunk-idle-ms has passed (408 below)",
    default: ATTACHMENTS.chunkMinBytesPerSecond,
  }),
  "link-previews": flag({
    kind: "boolean",
    env: "PARLEY_LINK_PREVIEWS",
    help: "serve GET /v1/link-preview: the relay fetches public web pages' titles (off by default)",
  }),
  "link-previews-per-user-per-minute": flag({
    kind: "integer",
    env: "PARLEY_LINK_PREVIEWS_PER_USER_PER_MINUTE",
    help: "pages the relay fetches for one user's link previews per minute, cached answers free (then 429 link-previews-per-user); 0 = no limit",
    default: ATTACHMENTS.linkPreviewsPerUserPerMinute,
  }),
  "link-previews-per-user-at-once": flag({
    kind: "integer",
    env: "PARLEY_LINK_PREVIEWS_PER_USER_AT_ONCE",
    help: "pages the relay fetches for one user's link previews at once (then 429 link-previews-at-once-per-user)",
    default: ATTACHMENTS.linkPreviewsPerUserAtOnce,
  }),
  "link-previews-allow-private": flag({
    kind: "boolean",
    env: "PARLEY_LINK_PREVIEWS_ALLOW_PRIVATE",
    help: "let link previews fetch loopback and private addresses (tests and local development only)",
  }),
  "hook-timeout-ms": flag({
    kind: "integer",
    env: "PARLEY_HOOK_TIMEOUT_MS",
    help: "time per hook call or webhook attempt",
    default: RELAY.hookTimeoutMs,
  }),
  "hook-attempts": flag({
    kind: "integer",
    env: "PARLEY_HOOK_ATTEMPTS",
    help: "attempts per event and hook module before it is dead-lettered",
    default: RELAY.hookAttempts,
  }),
  "hook-memory-mb": flag({
    kind: "integer",
    env: "PARLEY_HOOK_MEMORY_MB",
    help: "heap limit of the worker thread hook modules run in, in MB (beyond it the worker is restarted)",
    default: RELAY.hookMemoryMb,
  }),
  "event-retention-hours": flag({
    kind: "integer",
    env: "PARLEY_EVENT_RETENTION_HOURS",
    help: "how long the event log (GET /v1/events) keeps events",
    default: DEFAULT_EVENT_RETENTION.maxAgeMs / 3_600_000,
  }),
  "event-retention-events": flag({
    kind: "integer",
    env: "PARLEY_EVENT_RETENTION_EVENTS",
    help: "most events the event log keeps (the oldest go first)",
    default: DEFAULT_EVENT_RETENTION.maxEvents,
  }),
  "storage-timeout-ms": flag({
    kind: "integer",
    env: "PARLEY_STORAGE_TIMEOUT_MS",
    help: "longest a storage call (or PostgreSQL connect, query, statement) may take before it fails",
    default: RELAY.storageTimeoutMs,
  }),
  "trust-proxy": flag({
    kind: "boolean",
    env: "PARLEY_TRUST_PROXY",
    help: "count per-address limits by the right-most X-Forwarded-For entry (behind a reverse proxy that sets it)",
  }),
  "skip-warm-up": flag({
    kind: "boolean",
    env: "PARLEY_SKIP_WARM_UP",
    help: "do not warm up the update path after listening (on by default: the first large frames cost less)",
  }),
  "api-disabled": flag({
    kind: "boolean",
    env: "PARLEY_API_DISABLED",
    help: "do not serve the HTTP API (/v1)",
  }),
  "api-max-body-bytes": flag({
    kind: "integer",
    env: "PARLEY_API_MAX_BODY_BYTES",
    help: "largest HTTP API request body (413 beyond)",
    default: DEFAULT_API_LIMITS.maxBodyBytes,
  }),
  "api-body-timeout-ms": flag({
    kind: "integer",
    env: "PARLEY_API_BODY_TIMEOUT_MS",
    help: "longest an HTTP API request's body may take to arrive, upload creation and push registration included (not upload chunks; the connection is closed beyond)",
    default: DEFAULT_API_LIMITS.bodyTimeoutMs,
  }),
  "api-requests-per-second": flag({
    kind: "integer",
    env: "PARLEY_API_REQUESTS_PER_SECOND",
    help: "average HTTP API requests a second per API key (429 beyond)",
    default: DEFAULT_API_LIMITS.requestsPerSecond,
  }),
  "api-request-burst": flag({
    kind: "integer",
    env: "PARLEY_API_REQUEST_BURST",
    help: "HTTP API requests per API key in a burst",
    default: DEFAULT_API_LIMITS.requestBurst,
  }),
  "api-participants-per-minute": flag({
    kind: "integer",
    env: "PARLEY_API_PARTICIPANTS_PER_MINUTE",
    help: "participants one API key may add a minute, in groups it creates, to existing ones and as the other user of each direct conversation it asks for, whoever it acts as (429 beyond); 0 = no limit",
    default: DEFAULT_API_LIMITS.participantsPerMinute,
  }),
  "api-streams-per-key": flag({
    kind: "integer",
    env: "PARLEY_API_STREAMS_PER_KEY",
    help: "event streams (/v1/events) one API key may hold open",
    default: DEFAULT_API_LIMITS.streamsPerKey,
  }),
  "api-stream-events-per-second": flag({
    kind: "integer",
    env: "PARLEY_API_STREAM_EVENTS_PER_SECOND",
    help: "events a second one API key's event streams are sent from the log (bursts of 20 times it; beyond, a stream catching up waits); 0 = no limit",
    default: DEFAULT_API_LIMITS.streamEventsPerSecond,
  }),
  "redis-url": flag({
    value: "url",
    kind: "string",
    env: "PARLEY_REDIS_URL",
    help: "Redis connection string: run as one of several relays over PostgreSQL and Redis (needs --storage postgres)",
  }),
  "redis-prefix": flag({
    value: "prefix",
    kind: "string",
    env: "PARLEY_REDIS_PREFIX",
    help: "prefix of the cluster's Redis keys and channels",
    default: "parley:",
  }),
  "lease-ms": flag({
    kind: "integer",
    env: "PARLEY_LEASE_MS",
    help: "lifetime of a document's lease in a cluster: how long ordering stays with a relay that died",
    default: 1500,
  }),
  "lease-stall-ms": flag({
    kind: "integer",
    env: "PARLEY_LEASE_STALL_MS",
    help: "a relay whose event loop hangs this long stops renewing its leases (a busy one keeps them)",
    default: 5000,
  }),
  "cluster-config-change": flag({
    kind: "boolean",
    env: "PARLEY_CLUSTER_CONFIG_CHANGE",
    help: "join a cluster whose relays have other shared settings (token key, lease timings, hooks, ...), logging which: only while changing them on every relay, one at a time",
  }),
  help: flag({ kind: "boolean", help: "print this help" }),
} as const

/** The flags that say where a relay keeps its data: the relay's own, shared by its sub-commands. */
export const STORAGE_FLAGS = {
  storage: RELAY_FLAGS.storage,
  "data-dir": RELAY_FLAGS["data-dir"],
  "database-url": RELAY_FLAGS["database-url"],
} as const

type ValueOf<F extends FlagSpec> = F["kind"] extends "integer"
  ? number
  : F["kind"] extends "boolean"
    ? boolean
    : F["kind"] extends "list"
      ? string[]
      : string

/** The values of `flags` after parsing: a flag with a default always has one. */
export type FlagValues<Flags extends Record<string, FlagSpec>> = {
  readonly [K in keyof Flags]: Flags[K] extends { default: number | string }
    ? ValueOf<Flags[K]>
    : ValueOf<Flags[K]> | undefined
}

/** A configuration the relay (or a sub-command) refuses: one line naming the flag, exit code 2. */
export class ConfigError extends StartupError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(ExitCode.CONFIG, message, options)
  }
}

const integer =
  (name: string, max: number | undefined) =>
  (raw: string): number => {
    const n = Number(raw)
    if (raw.trim() === "" || !Number.isInteger(n) || n < 0)
      throw new ConfigError(`--${name} must be a non-negative integer, got ${raw}`)
    if (max !== undefined && n > max) throw new ConfigError(`--${name} must be at most ${max}, got ${raw}`)
    return n
  }

const word =
  (name: string, choices: readonly string[] | undefined) =>
  (raw: string): string => {
    if (choices && !choices.includes(raw))
      throw new ConfigError(`--${name} must be one of ${choices.join(", ")}, got ${raw}`)
    return raw
  }

/** The commander option of one flag; its parser throws {@link ConfigError}. */
function optionOf(name: string, spec: FlagSpec): Option {
  const placeholder =
    spec.kind === "integer" ? " <n>" : spec.kind === "boolean" ? "" : ` <${spec.value ?? "value"}>`
  const option = new Option(`--${name}${placeholder}`, spec.help)
  if (spec.env) option.env(spec.env)
  if (spec.default !== undefined) option.default(spec.default)
  if (spec.kind === "integer") option.argParser(integer(name, spec.max))
  else if (spec.kind === "list")
    option.argParser((raw: string, previous: string[] | undefined) => [
      ...(previous ?? []),
      ...raw
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    ])
  else if (spec.kind === "string") option.argParser(word(name, spec.choices))
  return option
}

/**
 * A command line of `parley-relay` (the relay, or one of its sub-commands) with
 * `flags`. `--help` is a flag like the others, so that parsing never prints or exits.
 */
export function commandOf(name: string, flags: Record<string, FlagSpec>): Command {
  const command = new Command(name)
    .helpOption(false)
    .exitOverride()
    .configureOutput({ writeOut: () => {}, writeErr: () => {}, outputError: () => {} })
  for (const [flagName, spec] of Object.entries(flags)) command.addOption(optionOf(flagName, spec))
  return command
}

/**
 * Parses `argv` with `command` (built by {@link commandOf} from `flags`): a flag
 * wins over its variable in `env`, which wins over the default. An empty
 * variable counts as unset; a switch's variable is on unless `0`, `false` or `no`.
 * Throws {@link ConfigError} naming the flag or variable.
 */
export function parseFlags<Flags extends Record<string, FlagSpec>>(
  command: Command,
  flags: Flags,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): { values: FlagValues<Flags>; args: string[] } {
  // The variables are read from `env` (the caller's: a test's, or process.env), before the flags so
  // that a bad value is reported naming its variable, and by the rules above, not commander's.
  const onCommandLine = (long: string | undefined) =>
    argv.some((arg) => arg === long || arg.startsWith(`${long}=`))
  const fromEnv = new Map<string, unknown>()
  for (const option of command.options) {
    const raw = option.envVar ? env[option.envVar] : undefined
    if (raw === undefined || raw === "" || onCommandLine(option.long)) continue
    let value: unknown = raw
    if (option.isBoolean()) value = !["0", "false", "no"].includes(raw.toLowerCase())
    else if (option.parseArg) {
      try {
        value = option.parseArg(raw, undefined)
      } catch (error) {
        throw new ConfigError(`${option.envVar}=${raw}: ${(error as Error).message}`)
      }
    }
    fromEnv.set(option.attributeName(), value)
  }
  // Commander would read process.env itself (a switch's "0" as on, an empty variable as a value):
  // it parses the flags alone, the variables named for its help are put back afterwards.
  const envVars = command.options.map((option) => option.envVar)
  for (const option of command.options) option.envVar = undefined
  try {
    command.parse([...argv], { from: "user" })
  } catch (error) {
    if (error instanceof ConfigError) throw error
    if (error instanceof CommanderError) throw new ConfigError(commanderMessage(error))
    throw error
  } finally {
    command.options.forEach((option, i) => {
      option.envVar = envVars[i]
    })
  }
  for (const [key, value] of fromEnv) command.setOptionValueWithSource(key, value, "env")
  const values = Object.fromEntries(
    Object.keys(flags).map((name) => {
      const option = command.options.find((o) => o.long === `--${name}`)!
      return [name, command.getOptionValue(option.attributeName())]
    }),
  )
  return { values: values as FlagValues<Flags>, args: [...command.args] }
}

/** Commander's message without its "error: " prefix, and without its own preamble where the parser said why. */
function commanderMessage(error: CommanderError): string {
  const cause = (error as { cause?: unknown }).cause
  if (cause instanceof ConfigError) return cause.message
  return error.message
    .replace(/^error: /, "")
    .replace(/^option '[^']+' (argument|value) '[^']*'.* is invalid\. /, "")
}

/** Where a command keeps its data, as the storage flags give it. */
export type StorageLocation =
  | { readonly kind: "memory" }
  | { readonly kind: "sqlite"; readonly dataDir: string }
  | { readonly kind: "postgres"; readonly databaseUrl: string }

/**
 * The storage the flags name, refusing a kind the command cannot use and
 * PostgreSQL without a connection string (there is no default database).
 */
export function storageLocation(
  values: FlagValues<typeof STORAGE_FLAGS>,
  kinds: readonly StorageKind[],
  env: NodeJS.ProcessEnv,
): StorageLocation {
  const kind = values.storage as StorageKind
  if (!kinds.includes(kind)) throw new ConfigError(`--storage must be ${kinds.join(" or ")}, got ${kind}`)
  if (kind === "memory") return { kind }
  if (kind === "sqlite") return { kind, dataDir: values["data-dir"] }
  const databaseUrl = values["database-url"]
  if (!databaseUrl) {
    // The variable rebuild-inboxes once read: say so rather than leave it ignored without a word.
    const stray = env.PARLEY_DATABASE_URL ? " (PARLEY_DATABASE_URL is not read: rename it DATABASE_URL)" : ""
    throw new ConfigError(`--storage postgres needs --database-url or DATABASE_URL${stray}`)
  }
  checkDatabaseUrl(databaseUrl, env)
  return { kind, databaseUrl }
}

/**
 * Refuses a connection string that names no database, or is no PostgreSQL URL
 * at all, as a configuration error (exit 2: retrying cannot help). Before, `pg`
 * took a URL without a path for the user's own database (`postgres`), where
 * the relay made its tables unseen, and `not-a-url` for a host named "base"
 * (a storage failure, exit 4). A socket path (`/run/postgresql dbname`,
 * `socket:`) is left to `pg`. The string itself is not repeated: it may hold a password.
 */
function checkDatabaseUrl(databaseUrl: string, env: NodeJS.ProcessEnv): void {
  if (databaseUrl.startsWith("/") || databaseUrl.startsWith("socket:")) return
  const form = "postgres://USER:PASSWORD@HOST:5432/DATABASE"
  let url: URL
  try {
    url = new URL(databaseUrl)
  } catch {
    throw new ConfigError(`--database-url (DATABASE_URL) is not a PostgreSQL URL: expected ${form}`)
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:")
    throw new ConfigError(
      `--database-url (DATABASE_URL) is not a PostgreSQL URL (it starts with ${url.protocol}): expected ${form}`,
    )
  if (url.pathname.replace(/^\//, "") === "" && !env.PGDATABASE)
    throw new ConfigError(
      `--database-url (DATABASE_URL) names no database: expected ${form} (there is no default database)`,
    )
}

/** The relay's command line. */
function relayCommand(): Command {
  return commandOf("parley-relay", RELAY_FLAGS)
    .usage(
      "[options]\n       parley-relay dead-letters|damaged|rebuild-inboxes|keys|erase-user|vapid-keys ... (--help for each)",
    )
    .description("Parley relay: syncs, checks, persists and hooks conversation documents.")
}

/** The relay's help: every flag with its variable and default. */
export function usage(): string {
  return relayCommand().helpInformation().trimEnd()
}

/** The relay options given by `argv` and `env` (a flag wins over its variable), or a request for help. */
export function parseConfig(
  argv: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): (RelayOptions & { help?: boolean }) | { help: true } {
  const { values: v } = parseFlags(relayCommand(), RELAY_FLAGS, argv, env)
  if (v.help) return { help: true }
  const location = storageLocation(v, ["memory", "sqlite", "postgres"], env)

  const keys: AuthKey[] = []
  if (v["auth-secret"]) keys.push({ kind: "secret", secret: v["auth-secret"] })
  const publicKey = v["auth-public-key"]
  if (publicKey) {
    let pem: string
    try {
      pem = readFileSync(publicKey, "utf8")
    } catch (error) {
      throw new ConfigError(`cannot read --auth-public-key ${publicKey}: ${(error as Error).message}`)
    }
    keys.push({ kind: "public-key", pem })
  }
  const jwks = v["auth-jwks-url"]
  if (jwks) {
    if (!URL.canParse(jwks) || !/^https?:$/.test(new URL(jwks).protocol))
      throw new ConfigError(
        `--auth-jwks-url must be an http(s) URL, got ${jwks}: give the URL of your identity provider's JWKS`,
      )
    keys.push({ kind: "jwks", url: jwks })
  }
  if (keys.length > 1)
    throw new ConfigError("give only one of --auth-secret, --auth-public-key, --auth-jwks-url")
  const dev = v.dev === true
  if (keys.length === 0 && !dev)
    throw new ConfigError("give --auth-secret, --auth-public-key or --auth-jwks-url (or --dev for local use)")
  if (keys[0]?.kind === "public-key") {
    // Checked here, where the file is known: the relay's own error would name neither flag nor file.
    try {
      new Authenticator({ key: keys[0] })
    } catch (error) {
      throw new ConfigError(
        `--auth-public-key ${publicKey} is not a usable PEM public key (${(error as Error).message.split("\n")[0]}): ` +
          "give the public key (-----BEGIN PUBLIC KEY-----) that verifies your tokens",
      )
    }
  }

  const metricsToken = v["metrics-token"]
  if (metricsToken !== undefined && metricsToken.length < MIN_METRICS_TOKEN_LENGTH)
    throw new ConfigError(
      `--metrics-token must be at least ${MIN_METRICS_TOKEN_LENGTH} characters (a random one: openssl rand -hex 32)`,
    )

  const webhooks = v.webhook ?? []
  for (const url of webhooks) {
    if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol))
      throw new ConfigError(`--webhook must be an http(s) URL, got ${url}`)
    // fetch refuses such a URL at every attempt: each event would be retried until dead-lettered.
    if (new URL(url).username || new URL(url).password)
      throw new ConfigError(
        `--webhook ${new URL(url).origin} carries a user and password, which requests cannot send: put the receiver's credential in its path or query, or let it check the signature`,
      )
  }
  const webhookSecret = v["webhook-secret"]
  if (webhooks.length > 0 && !webhookSecret)
    throw new ConfigError("--webhook needs --webhook-secret (or PARLEY_WEBHOOK_SECRET)")
  if (v["hook-attempts"] < 1) throw new ConfigError("--hook-attempts must be at least 1")
  if (v["hook-memory-mb"] < 16) throw new ConfigError("--hook-memory-mb must be at least 16")
  const vapidPublic = v["vapid-public-key"]
  const vapidPrivate = v["vapid-private-key"]
  const vapidSubject = v["vapid-subject"]
  if ((vapidPublic || vapidPrivate || vapidSubject) && !(vapidPublic && vapidPrivate && vapidSubject))
    throw new ConfigError(
      "Web Push needs all of --vapid-public-key, --vapid-private-key and --vapid-subject (`parley-relay vapid-keys` makes them)",
    )
  if (vapidSubject && !/^(mailto:|https:)/.test(vapidSubject))
    throw new ConfigError(`--vapid-subject must be a mailto: or https: URL, got ${vapidSubject}`)
  if (v["push-attempts"] < 1) throw new ConfigError("--push-attempts must be at least 1")
  if (v["event-retention-hours"] < 1) throw new ConfigError("--event-retention-hours must be at least 1")
  if (v["event-retention-events"] < 1) throw new ConfigError("--event-retention-events must be at least 1")

  const staticDir = v.static
  // A typo in the build path would otherwise look like a broken app: 404 at every path.
  if (staticDir && !statSync(staticDir, { throwIfNoEntry: false })?.isDirectory())
    throw new ConfigError(`--static ${staticDir}: no such directory`)
  const hooksDir = v.hooks
  const issuer = v["auth-issuer"]
  const audience = v["auth-audience"]
  return {
    port: v.port,
    host: v.host,
    dataDir: v["data-dir"],
    storage: location.kind,
    ...(location.kind === "postgres" ? { databaseUrl: location.databaseUrl } : {}),
    ...(keys[0] ? { auth: keys[0] } : {}),
    ...(issuer ? { authIssuer: issuer } : {}),
    ...(audience ? { authAudience: audience } : {}),
    allowTokensWithoutExp: v["allow-tokens-without-exp"] === true,
    maxTokenLifetimeMs: v["max-token-lifetime-ms"],
    dev,
    forceDev: v["force-dev"] === true,
    log: v["log-level"] as LogLevel,
    ...(staticDir ? { staticDir } : {}),
    ...(metricsToken ? { metricsToken } : {}),
    ...(hooksDir ? { hooksDir } : {}),
    ...(webhooks.length > 0 ? { webhooks, webhookSecret: webhookSecret! } : {}),
    hookTimeoutMs: Math.max(1, v["hook-timeout-ms"]),
    push: {
      ...(vapidPublic && vapidPrivate && vapidSubject
        ? { vapid: { publicKey: vapidPublic, privateKey: vapidPrivate, subject: vapidSubject } }
        : {}),
      allowHttpEndpoints: v["push-allow-insecure-endpoints"] === true,
      allowPrivateEndpoints: v["push-allow-insecure-endpoints"] === true,
      wakeMs: v["push-wake-days"] * DAY_MS,
      retryDelay: exponentialBackoff({
        baseMs: Math.max(1, v["push-retry-base-ms"]),
        maxMs: 300_000,
        attempts: v["push-attempts"],
      }),
    },
    hookAttempts: v["hook-attempts"],
    hookMemoryMb: v["hook-memory-mb"],
    attachments: {
      maxBytes: Math.max(1, v["attachment-max-bytes"]),
      ...(v["attachment-types"]?.length ? { allowedTypes: v["attachment-types"] } : {}),
      concurrentChunksPerUser: Math.max(1, v["attachment-uploads-per-user"]),
      bytesPerMinutePerUser: Math.max(1, v["attachment-bytes-per-minute"]),
      bytesPerDayPerUser: Math.max(1, v["attachment-bytes-per-day"]),
      maxChunksInFlight: Math.max(1, v["attachment-chunks-in-flight"]),
      downloadsPerUser: Math.max(1, v["attachment-downloads-per-user"]),
      downloadIdleMs: Math.max(100, v["attachment-download-idle-ms"]),
      chunkIdleMs: Math.max(100, v["attachment-chunk-idle-ms"]),
      chunkMinBytesPerSecond: Math.max(0, v["attachment-chunk-min-bytes-per-second"]),
      linkPreviews: v["link-previews"] === true,
      linkPreviewsAllowPrivate: v["link-previews-allow-private"] === true,
      linkPreviewsPerUserPerMinute: v["link-previews-per-user-per-minute"],
      linkPreviewsPerUserAtOnce: Math.max(1, v["link-previews-per-user-at-once"]),
    },
    eventRetention: {
      maxAgeMs: v["event-retention-hours"] * 3_600_000,
      maxEvents: v["event-retention-events"],
    },
    defaultMetrics: true,
    storageTimeoutMs: Math.max(1, v["storage-timeout-ms"]),
    history:
      v["history-segment-size"] > 0
        ? {
            segmentSize: v["history-segment-size"],
            keepLive: Math.max(1, v["history-keep-live"]),
            segmentChars: Math.max(1, v["history-segment-chars"]),
            keepLiveChars: Math.max(0, v["history-keep-live-chars"]),
            refoldMessages: Math.max(1, v["history-refold-messages"]),
            epochClientIds: Math.max(2, v["history-epoch-client-ids"]),
            keepSummaries: Math.max(1, v["history-keep-summaries"]),
            foldSize: Math.max(0, v["history-fold-size"]),
            maxSealedReadsPerUpdate: Math.max(1, v["max-sealed-reads-per-update"]),
          }
        : false,
    warmUp: v["skip-warm-up"] !== true,
    trustProxy: v["trust-proxy"] === true,
    api: v["api-disabled"] !== true,
    apiLimits: {
      maxBodyBytes: Math.max(1, v["api-max-body-bytes"]),
      bodyTimeoutMs: Math.max(100, v["api-body-timeout-ms"]),
      requestsPerSecond: Math.max(1, v["api-requests-per-second"]),
      requestBurst: Math.max(1, v["api-request-burst"]),
      participantsPerMinute: Math.max(0, v["api-participants-per-minute"]),
      streamsPerKey: Math.max(1, v["api-streams-per-key"]),
      streamEventsPerSecond: v["api-stream-events-per-second"],
    },
    ...(v["redis-url"]
      ? {
          cluster: {
            redisUrl: v["redis-url"],
            keyPrefix: v["redis-prefix"],
            leaseMs: Math.max(100, v["lease-ms"]),
            leaseStallMs: Math.max(100, v["lease-stall-ms"]),
            configChange: v["cluster-config-change"] === true,
          },
        }
      : {}),
    limits: {
      idleUnloadMs: v["idle-unload-ms"],
      maxDocuments: Math.max(1, v["max-documents"]),
      maxFrameBytes: v["max-frame-bytes"],
      maxUpdateBytes: v["max-frame-bytes"],
      maxBufferedBytes: v["max-buffered-bytes"],
      maxMessagesPerSecond: v["max-messages-per-second"],
      messageBurst: Math.max(1, v["message-burst"]),
      maxAwarenessEntries: v["max-awareness-entries"],
      maxAwarenessStateBytes: v["max-awareness-state-bytes"],
      awarenessFramesPerSecond: Math.max(1, v["awareness-frames-per-second"]),
      awarenessBurst: Math.max(1, v["awareness-burst"]),
      awarenessClaimsPerMinute: v["awareness-claims-per-minute"],
      pingIntervalMs: v["ping-interval-ms"],
      pingTimeoutMs: Math.max(1, v["ping-timeout-ms"]),
      socketAwarenessPerSecond: v["socket-awareness-per-second"],
      socketAwarenessBurst: Math.max(1, v["socket-awareness-burst"]),
      maxSocketsPerUser: v["max-sockets-per-user"],
      maxDocumentsPerUser: v["max-documents-per-user"],
      maxConnectionsPerUser: v["max-connections-per-user"],
      userUpdatesPerSecond: v["user-updates-per-second"],
      userUpdateBurst: Math.max(1, v["user-update-burst"]),
      maxPendingBytesPerUser: v["max-pending-bytes-per-user"],
      maxQueuedBytesPerUser: v["max-queued-bytes-per-user"],
      userConversationsPerMinute: v["user-conversations-per-minute"],
      userParticipantsPerMinute: v["user-participants-per-minute"],
      userConnectionAttemptsPerMinute: v["user-connection-attempts-per-minute"],
      userAnswerBytesPerSecond: v["user-answer-bytes-per-second"],
      userAnswerBurstBytes: Math.max(1, v["user-answer-burst-bytes"]),
      userHttpRequestsPerSecond: v["user-http-requests-per-second"],
      userHttpRequestBurst: Math.max(1, v["user-http-request-burst"]),
      userSealedReadsPerMinute: v["user-sealed-reads-per-minute"],
      userUpdateBytesPerDay: v["user-update-bytes-per-day"],
      userReceiveBytesPerSecond: v["user-receive-bytes-per-second"],
      userReceiveBurstBytes: Math.max(1, v["user-receive-burst-bytes"]),
      addressAuthFailuresPerMinute: v["address-auth-failures-per-minute"],
      addressRequestsPerSecond: v["address-requests-per-second"],
      connectionsPerAddress: v["connections-per-address"],
      maxConnections: v["max-connections"],
      requestHeadersTimeoutMs: Math.max(1, v["request-headers-timeout-ms"]),
      muxIdleMs: Math.max(1, v["mux-idle-ms"]),
      compactAfterUpdates: Math.max(1, v["compact-after-updates"]),
      compactAfterBytes: v["compact-after-bytes"],
      epochGarbageBytes: Math.max(0, v["epoch-garbage-bytes"]),
      epochGarbageIntervalMs: Math.max(0, v["epoch-garbage-interval-ms"]),
      epochStockGraceMs: Math.max(0, v["epoch-stock-grace-ms"]),
      purgeDelayMs: v["purge-delay-ms"],
      maxUpdateStructs: v["max-update-structs"],
      maxUpdateValues: v["max-update-values"],
      maxUpdateElements: v["max-update-elements"],
      maxUpdateClientIds: v["max-update-client-ids"],
      clientIdsPerUserPerDay: v["client-ids-per-user-per-day"],
      maxDeletedOnArrival: v["max-deleted-on-arrival"],
      maxSiblings: Math.max(1, v["max-siblings"]),
      maxIntegrationSteps: v["max-integration-steps"],
      maxDeleteRanges: v["max-delete-ranges"],
      maxDeleteVisits: v["max-delete-visits"],
    },
  }
}

/** A sub-command's command line: its help, and a parser. */
export interface Subcommand<Flags extends Record<string, FlagSpec>> {
  /** Usage line, flags with their variables and defaults, then what the command does. */
  readonly usage: string
  /**
   * `flags` and up to the declared positional arguments from `argv`, as
   * {@link parseFlags} reads them. Throws {@link ConfigError}.
   */
  parse(argv: readonly string[], env: NodeJS.ProcessEnv): { values: FlagValues<Flags>; args: string[] }
}

/**
 * Reads the arguments of a sub-command working on stored data and where that
 * data lives (sqlite or postgres). On a configuration error it prints the
 * error and the usage through `out` and returns exit code 2 instead.
 */
export function parseStorageCommand<Flags extends typeof STORAGE_FLAGS & Record<string, FlagSpec>>(
  cli: Subcommand<Flags>,
  name: string,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  out: (line: string) => void,
): { values: FlagValues<Flags>; args: string[]; location: StorageLocation } | typeof ExitCode.CONFIG {
  try {
    const parsed = cli.parse(argv, env)
    return { ...parsed, location: storageLocation(parsed.values, ["sqlite", "postgres"], env) }
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    out(`parley-relay ${name}: ${error.message}\n\n${cli.usage}`)
    return ExitCode.CONFIG
  }
}

/** The command line of `parley-relay <name>`, with `flags` and optional `positionals`. */
export function subcommand<Flags extends Record<string, FlagSpec>>(
  name: string,
  spec: { synopsis: string; positionals: readonly string[]; about: string; flags: Flags },
): Subcommand<Flags> {
  const build = () => {
    const command = commandOf(`parley-relay ${name}`, spec.flags).usage(spec.synopsis)
    for (const positional of spec.positionals) command.argument(`[${positional}]`)
    return command
  }
  return {
    usage: `${build().helpInformation().trimEnd()}\n\n${spec.about}`,
    parse: (argv, env) => parseFlags(build(), spec.flags, argv, env),
  }
}
