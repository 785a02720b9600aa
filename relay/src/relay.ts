import { mkdirSync } from "node:fs"
import { resolve } from "node:path"
import { ErrorCode, HistoryDefaults, ParleyError } from "@parley/shared"
import { ApiExtension } from "./api/extension.js"
import { CachedApiKeyStore } from "./api/key-cache.js"
import type { ApiLimits } from "./api/limits.js"
import { type AttachmentOptions, AttachmentsExtension } from "./attachments/extension.js"
import { Authenticator, type AuthKey, type AuthOptions } from "./auth.js"
import { type Backend, guardBackend, openBackend } from "./backend/index.js"
import type { RedisState } from "./cluster/cluster.js"
import { ownedOutbox } from "./cluster/outbox.js"
import { type SettingsState, sharedSettingValues } from "./cluster/settings.js"
import { DEFAULT_TRANSPORT_LIMITS, DEFAULT_RELAY_OPTIONS as DEFAULTS } from "./defaults.js"
import {
  type AfterSavedListener,
  extensionRoutes,
  type RelayExtension,
  type RunningCore,
} from "./extension.js"
import { HistoryKeeper, type SealedReadLimits } from "./history/keeper.js"
import type { SealingOptions } from "./history/sealing.js"
import { DEFAULT_EVENT_RETENTION, type EventLogReader, type EventRetention } from "./hooks/event-log.js"
import { EventLogPruner } from "./hooks/event-log-pruner.js"
import { HooksExtension } from "./hooks/extension.js"
import type { HookRuntime } from "./hooks/runtime.js"
import { HookWorker } from "./hooks/worker-host.js"
import { inboxTarget } from "./inbox/inbox-target.js"
import { LiveInbox } from "./inbox/live-inbox.js"
import { createLogger, type Logger, type LogLevel } from "./log.js"
import { LogThrottle } from "./log-throttle.js"
import { metricsExtension, RelayMetrics } from "./metrics.js"
import { AuthorizationPolicy } from "./policy/authorization-policy.js"
import type { UpdatePolicy } from "./policy.js"
import { ErasureAdmin } from "./purge/erase-admin.js"
import { fleetingTarget } from "./purge/fleeting-target.js"
import { inboxPurgeTarget } from "./purge/inbox-purge-target.js"
import type { PushOptions } from "./push/extension.js"
import { PushOff } from "./push/off.js"
import { type CoreLimits, DEFAULT_CORE_LIMITS, RelayCore } from "./relay-core.js"
import type { Sequencer } from "./sequencer.js"
import {
  ExitCode,
  listenFailure,
  reasonOf,
  redactedUrl,
  redisFailure,
  StartupError,
  storageFailure,
} from "./startup-error.js"
import { DataDirInUse, lockDataDir, releasingOnClose } from "./storage/data-dir-lock.js"
import { DEFAULT_WATCH_INTERVAL_MS } from "./storage/guard.js"
import type { StorageGuard, StorageKind } from "./storage/index.js"
import { DatabaseInUse, holdRelaysLock } from "./storage/postgres-relays-lock.js"
import { warmUpUpdatePath } from "./warm-up.js"
import { type Readiness, type TransportLimits, WsTransport } from "./ws-transport.js"

export { DEFAULT_MAX_TOKEN_LIFETIME_MS, DEFAULT_RELAY_OPTIONS, DEFAULT_TRANSPORT_LIMITS } from "./defaults.js"

/** Everything a relay can be started with; every field has a default except how tokens are verified. */
export interface RelayOptions {
  /** Port to listen on (0 = any free port). Default 1234. */
  readonly port?: number
  /** Interface to bind. Default 127.0.0.1. */
  readonly host?: string
  /** Which backend to open (ignored when `backend` is given). Default sqlite in `dataDir`. */
  readonly storage?: StorageKind
  /**
   * A backend to run on instead of opening one: documents, outbox and
   * bindings all live in it. The relay closes it when it stops.
   */
  readonly backend?: Backend
  /** Data directory of the sqlite backend. Default `./data`. */
  readonly dataDir?: string
  /** PostgreSQL connection string; required by the postgres backend (there is no default database). */
  readonly databaseUrl?: string
  /** How tokens are verified. Required unless `dev` (which generates a secret). */
  readonly auth?: AuthKey
  readonly authIssuer?: string
  readonly authAudience?: string
  /** Accept tokens without `exp` (default false: refused, "tokens must expire"). */
  readonly allowTokensWithoutExp?: boolean
  /** Refuse tokens whose `exp` is further ahead than this, in ms; 0 = no cap. Default 24 h. */
  readonly maxTokenLifetimeMs?: number
  /**
   * Dev mode: mints tokens at `/dev/token?user=NAME`, signed with a secret
   * generated at start (never with `auth`, which keeps working beside it).
   * Loopback hosts only unless `forceDev`.
   */
  readonly dev?: boolean
  readonly forceDev?: boolean
  /** A logger, or the level of the default one (pino to stdout). */
  readonly log?: Logger | LogLevel
  /** Serve a built web app from this directory at `/`. */
  readonly staticDir?: string
  readonly limits?: Partial<CoreLimits & TransportLimits>
  /** The update policy (default: the document rules, `AuthorizationPolicy`, with its client-id bindings). */
  readonly policy?: UpdatePolicy
  readonly sequencer?: Sequencer
  /**
   * Sealed history: how many sequenced messages a segment holds and how many
   * the live document keeps (defaults: shared `HistoryDefaults`), how many
   * segments one change may make the relay read and how many it keeps
   * decoded per document (defaults: `SealedReadDefaults`); `false` keeps
   * every message in the live document.
   */
  readonly history?: Partial<SealingOptions & SealedReadLimits> | false
  /** Observers of saved changes: extensions with only `afterSaved`, run after the policy. */
  readonly listeners?: readonly AfterSavedListener[]
  /** More extensions, run after `listeners` and before the hooks (see the README's "Architecture"). */
  readonly extensions?: readonly RelayExtension[]
  /** Directory of hook modules, all loaded at start (see HOOKS.md). */
  readonly hooksDir?: string
  /** Keep users' inboxes (default true; off only for measurements). */
  readonly inbox?: boolean
  /** URLs that receive every event as a signed POST (Standard Webhooks). */
  readonly webhooks?: readonly string[]
  /** Signing secret of webhooks: `whsec_<base64>` or any string (raw bytes). Required with `webhooks`. */
  readonly webhookSecret?: string
  /** Time allowed to one hook call or webhook attempt. Default 10 s. */
  readonly hookTimeoutMs?: number
  /** Attempts per event and hook module before it is dead-lettered. Default 8. */
  readonly hookAttempts?: number
  /** Heap limit of the worker thread the hook modules run in, in MB (default 512): beyond, the worker is restarted. */
  readonly hookMemoryMb?: number
  /** How long the event log keeps events (default {@link DEFAULT_EVENT_RETENTION}: 7 days, 1,000,000 events). */
  readonly eventRetention?: Partial<EventRetention>
  /** Between two background prunes of the event log. Default 60 s. */
  readonly eventPruneIntervalMs?: number
  /** Serve the HTTP API under `/v1` (default true; see API.md). Keys: `parley-relay keys create`. */
  readonly api?: boolean
  /** Limits of the HTTP API (body size, requests and event streams per key, heartbeat). */
  readonly apiLimits?: Partial<ApiLimits>
  /** Register Node's default process metrics too (the CLI does). */
  readonly defaultMetrics?: boolean
  /**
   * Bearer token `GET /metrics` requires (`Authorization: Bearer TOKEN`,
   * else 401); without one, `/metrics` is served to anyone who reaches the
   * port (keep it private: see SECURITY.md).
   */
  readonly metricsToken?: string
  /**
   * Longest a storage call (documents, hook outbox, client-id bindings; and
   * each PostgreSQL connect, query and statement) may take before it counts
   * as failed. Default 5000 ms.
   */
  readonly storageTimeoutMs?: number
  /**
   * After listening, run the update path on synthetic frames against a
   * scratch in-memory document, in small pieces between serving, so that V8
   * has compiled it before the first large frames arrive (see
   * `warmUpUpdatePath`). Default true; `--skip-warm-up` turns it off.
   */
  readonly warmUp?: boolean
  /**
   * Behind a reverse proxy that appends the client's address to
   * `X-Forwarded-For`: per-address limits count that address, not the
   * proxy's. Default false (the header is then ignored: anyone could forge it).
   */
  readonly trustProxy?: boolean
  /**
   * Run as one of several relays serving the same documents: PostgreSQL
   * (`storage: "postgres"`) keeps everything, Redis carries changes between
   * relays and decides which relay orders each document (see the README's
   * "Several relays").
   */
  readonly cluster?: RelayClusterOptions
  /**
   * Web Push notifications (README "Push notifications"): on with VAPID keys,
   * or in dev mode (which makes throwaway ones); off otherwise.
   */
  readonly push?: PushOptions
  /**
   * File uploads and downloads under `/v1` (README "Attachments"), their
   * bytes in the backend's blob store; default on, `false` turns them off.
   */
  readonly attachments?: AttachmentOptions | false
}

/** A relay's cluster settings (see {@link RelayOptions.cluster}). */
export interface RelayClusterOptions {
  /** Redis connection string. */
  readonly redisUrl: string
  /** Prefix of every Redis key and channel. Default `parley:`. */
  readonly keyPrefix?: string
  /** Lifetime of a document's lease in ms (how long a dead relay keeps ordering it). Default 1500. */
  readonly leaseMs?: number
  /** A relay whose event loop hangs longer than this (ms) stops renewing its leases. Default 5000. */
  readonly leaseStallMs?: number
  /**
   * How often (ms) the relay publishes its shared settings again and compares them with the other
   * relays' while it runs (README "Settings every relay shares"). Default 5000.
   */
  readonly settingsRefreshMs?: number
  /**
   * Join even when the other relays' shared settings (token verification,
   * lease timings, delivery targets, ...: `CLUSTER_SETTINGS`) differ from
   * this relay's, logging which: for a rolling change of them (README
   * "Settings every relay shares"). Default false: such a relay is refused.
   */
  readonly configChange?: boolean
}

/** A started relay. */
export interface RunningRelay {
  /** `ws://host:port`, for WebSocket clients. */
  readonly url: string
  /** `http://host:port`. */
  readonly httpUrl: string
  readonly port: number
  readonly core: RelayCore
  readonly auth: Authenticator
  readonly metrics: RelayMetrics
  readonly log: Logger
  /** The durable event log behind `GET /v1/events` (every hook event, in order, with retention). */
  readonly events: EventLogReader
  /** The hook runtime (hook modules, webhooks, inbox upkeep; always there, its outbox writes the event log): dead letters, replay, `idle()`. */
  readonly hooks?: HookRuntime
  /**
   * Resolves once the start-up warm-up of the update path is done (at once
   * when `warmUp` is false; never rejects: a failed warm-up is logged).
   */
  readonly warmedUp: Promise<void>
  /** Graceful stop: stop accepting, finish queued changes, close connections with 1001, flush storage. */
  close(): Promise<void>
}

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"])
/** True for hosts only this machine can reach. */
export const isLoopback = (host: string): boolean => LOOPBACK.has(host) || host.startsWith("127.")

/**
 * Starts a relay: storage, core, HTTP + WebSocket transport. A start that cannot
 * succeed (the configuration, the address, storage) rejects with a
 * {@link StartupError} whose one-line message names the option and what to do.
 */
export async function startRelay(options: RelayOptions = {}): Promise<RunningRelay> {
  const log = typeof options.log === "object" ? options.log : createLogger(options.log ?? DEFAULTS.log)
  const host = options.host ?? DEFAULTS.host
  const dev = options.dev ?? false
  if (dev && !isLoopback(host) && !options.forceDev) {
    throw new StartupError(
      ExitCode.CONFIG,
      `--dev mints tokens for anyone: refusing to listen on ${host}; use --host 127.0.0.1, or --force-dev to insist`,
    )
  }
  const key = options.auth
  if (!key && !dev)
    throw new StartupError(
      ExitCode.CONFIG,
      "no way to verify tokens: give --auth-secret, --auth-public-key or --auth-jwks-url (or --dev)",
    )
  // Web push (web-push and its crypto dependencies, about 1 MB of heap that every full collection
  // marks) is loaded only by a relay that sends notifications: here, at start, so that a broken
  // install is reported now and not at the first notification.
  const pushing = options.push?.vapid !== undefined || dev
  const pushModules = pushing
    ? { ...(await import("./push/vapid.js")), ...(await import("./push/extension.js")) }
    : undefined
  // Checked before anything is opened: unusable keys would otherwise fail only at the first message.
  const vapid =
    options.push?.vapid ?? (dev ? pushModules?.generateVapidKeys("mailto:dev@localhost") : undefined)
  if (vapid && pushModules)
    try {
      pushModules.checkVapidKeys(vapid)
    } catch (error) {
      throw new StartupError(ExitCode.CONFIG, (error as Error).message, { cause: error })
    }
  // RFC 7518 §3.2: an HS256 key of at least the hash's 32 bytes; a shorter one can be searched for.
  if (key?.kind === "secret" && Buffer.byteLength(key.secret) < 32)
    log.warn(
      { bytes: Buffer.byteLength(key.secret) },
      "--auth-secret is shorter than 32 bytes: tokens signed with it can be forged by guessing it (make one with `openssl rand -base64 32`)",
    )
  if (dev) {
    log.warn(
      "DEV MODE — INSECURE: anyone who can reach this relay can mint a token for any user at /dev/token. Never use in production.",
    )
  }
  const keySetThrottle = new LogThrottle()
  const authOptions: AuthOptions = {
    ...(key ? { key } : {}),
    ...(options.authIssuer ? { issuer: options.authIssuer } : {}),
    ...(options.authAudience ? { audience: options.authAudience } : {}),
    allowTokensWithoutExp: options.allowTokensWithoutExp ?? false,
    maxTokenLifetimeMs: options.maxTokenLifetimeMs ?? DEFAULTS.maxTokenLifetimeMs,
    // Dev tokens get a secret of their own, made here and never stored: the app's key signs no dev token.
    ...(dev ? { devSecret: Authenticator.randomSecret() } : {}),
    keySet: {
      onUnreachable: (error, stale) => {
        // Every verification meanwhile fails the same way: one line per window, with how many were held.
        const held = keySetThrottle.admit(stale ? "stale" : "none")
        if (held === undefined) return
        log.warn(
          { err: error, url: key?.kind === "jwks" ? key.url : undefined, held },
          stale
            ? "the token key set (JWKS) cannot be fetched: verifying with the keys fetched before"
            : "the token key set (JWKS) cannot be fetched: connections are refused as unavailable (4503) until it can",
        )
      },
    },
  }
  let auth: Authenticator
  try {
    auth = new Authenticator(authOptions)
  } catch (error) {
    throw new StartupError(
      ExitCode.CONFIG,
      `cannot verify tokens with the ${key?.kind} key: ${(error as Error).message}`,
      {
        cause: error,
      },
    )
  }
  const metrics = new RelayMetrics({ defaultMetrics: options.defaultMetrics ?? false })
  // Hook scripts load before anything opens: a broken one stops the start naming its file. They run in a
  // worker thread: a handler that never returns, or eats memory, costs a restart of the worker, not the relay.
  const hookLog = log.child({ component: "hooks" })
  const hookWorker = options.hooksDir
    ? await HookWorker.start({
        dir: options.hooksDir,
        log: hookLog,
        timeoutMs: options.hookTimeoutMs ?? DEFAULTS.hookTimeoutMs,
        ...(options.hookMemoryMb !== undefined ? { memoryMb: options.hookMemoryMb } : {}),
      })
    : undefined
  const webhooks = options.webhooks ?? []
  if (webhooks.length > 0 && !options.webhookSecret)
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      "--webhook needs --webhook-secret (or PARLEY_WEBHOOK_SECRET)",
    )
  const storageKind: StorageKind = options.storage ?? DEFAULTS.storage
  const dataDir = options.dataDir ?? DEFAULTS.dataDir
  const storageTimeoutMs = options.storageTimeoutMs ?? DEFAULTS.storageTimeoutMs
  const databaseUrl = options.databaseUrl ?? ""
  if (!options.backend && storageKind === "postgres" && !databaseUrl)
    throw new StartupError(ExitCode.CONFIG, "--storage postgres needs --database-url (or DATABASE_URL)")
  if (options.cluster && (options.backend || storageKind !== "postgres"))
    throw new StartupError(
      ExitCode.CONFIG,
      "--redis-url runs the relay in a cluster, which keeps everything in PostgreSQL: add --storage postgres",
    )
  // Names the data directory or database in a failure to open it.
  const where =
    storageKind === "postgres"
      ? ({ kind: "postgres", databaseUrl } as const)
      : ({ kind: "sqlite", dataDir } as const)
  /** Stops the relay: another took its database while its lock's connection was down. Set once it runs. */
  let supplanted = () => {}
  // Offline commands on PostgreSQL (erase-user, rebuild-inboxes) are refused while any relay uses it.
  const relaysLock =
    storageKind === "postgres" && !options.backend
      ? await holdRelaysLock(databaseUrl, {
          timeoutMs: storageTimeoutMs,
          clustered: options.cluster !== undefined,
          onLost: (error) => {
            if (!(error instanceof DatabaseInUse)) {
              log.warn({ err: error }, "holding the relays' lock on PostgreSQL again")
              return
            }
            log.error(
              { err: error },
              "while this relay's lock connection was down, another took the database: this relay stops",
            )
            // Two relays without a cluster on one database lose each other's changes: this one yields.
            if (!options.cluster) supplanted()
          },
        }).catch((error: unknown) => {
          if (!(error instanceof DatabaseInUse)) throw storageFailure(error, where)
          throw new StartupError(
            ExitCode.STORAGE,
            `cannot use PostgreSQL at ${redactedUrl(databaseUrl)}: ${error.message}: ` +
              (error.holders.some(
                (h) => h.application.startsWith("parley-relay ") && !h.application.includes("("),
              )
                ? "start the relay once it finished"
                : "several relays on one database must all run as a cluster (--redis-url, the same for each); otherwise stop the other first"),
          )
        })
      : undefined
  // One backend holds everything the relay keeps (documents, hook outbox, client-id bindings), so a
  // restart or a backup keeps all three together.
  // In a cluster, the backend comes with the membership (leases, fencing, Redis): loaded only then.
  const clustered = options.cluster
    ? await import("./cluster/backend.js")
        .then(({ openClusterBackend, RedisStartFailure }) =>
          openClusterBackend({
            ...options.cluster!,
            databaseUrl,
            timeoutMs: storageTimeoutMs,
            log: log.child({ component: "cluster" }),
            registry: metrics.registry,
            onIdleError: (error: Error) =>
              log.warn({ err: error }, "PostgreSQL dropped a connection; the pool opens a new one"),
          }).catch((error: unknown) => {
            throw error instanceof RedisStartFailure
              ? redisFailure(error.cause, error.redisUrl)
              : storageFailure(error, where)
          }),
        )
        .catch((error: unknown) => {
          relaysLock?.close()
          // The module itself failing to load is no storage failure of a kind already named.
          throw error instanceof StartupError ? error : storageFailure(error, where)
        })
    : undefined
  // A SQLite directory is one relay's: a second one (or an offline command beside it) is refused before
  // either writes (see `lockDataDir`). Released when the backend closes.
  const releaseLock =
    storageKind === "sqlite" && !options.backend && !clustered ? lockForRelay(dataDir) : undefined
  const opened =
    clustered?.backend ??
    options.backend ??
    (await openBackend({
      kind: storageKind,
      dataDir,
      ...(databaseUrl ? { databaseUrl } : {}),
      timeoutMs: storageTimeoutMs,
      ...(relaysLock?.token !== undefined
        ? {
            fence: {
              token: relaysLock.token,
              onTaken: () => {
                log.error("another relay or an offline command took this database: this relay stops")
                supplanted()
              },
            },
          }
        : {}),
      onIdleError: (error: Error) =>
        log.warn({ err: error }, "PostgreSQL dropped a connection; the pool opens a new one"),
      onCheckpointError: (message: string) =>
        log.warn({ error: message }, "checkpointing the SQLite write-ahead log failed; it is tried again"),
    }).catch((error: unknown) => {
      releaseLock?.()
      relaysLock?.close()
      throw storageFailure(error, where)
    }))
  if (releaseLock) releasingOnClose(opened, releaseLock)
  if (relaysLock) releasingOnClose(opened, () => relaysLock.close())
  // Every backend call has a deadline; while the documents fail, writes are refused at once (retryably).
  const backend = guardBackend(opened, {
    timeoutMs: storageTimeoutMs,
    // Readiness follows whether writes would be stored, not only whether the backend answers.
    watchIntervalMs: DEFAULT_WATCH_INTERVAL_MS,
    onBlobFailure: (error) => {
      metrics.errors.inc({ code: error.code })
      log.warn({ err: error }, "the blob store failed")
    },
    onChange: (state) => {
      metrics.storageAvailable.set(state.state === "ok" ? 1 : 0)
      if (state.state === "failing") log.error({ err: state.error }, "storage is failing: writes are refused")
      else log.info("storage is back: writes are accepted")
    },
  })
  const storage = backend.documents
  // A relay whose own storage fails lets its leases go to those whose storage answers.
  clustered?.cluster.followStorage(() => storage.state)
  // The API's and the attachment routes' keys, read from storage once per few seconds rather than per
  // request, and not at all while storage fails (relay/API.md "Keys and scopes").
  const apiKeys = new CachedApiKeyStore(backend.keys, { storage })
  // Probed once before serving: a relay started on a full disk says so on /readyz and refuses writes
  // (retryably) from the first one, while it serves what is stored; the probe then watches for room.
  await storage.check()
  // Always on: besides hooks and webhooks, the pipeline keeps every user's inbox current.
  const inbox = options.inbox === false ? [] : [inboxTarget, inboxPurgeTarget]
  // Always on: fleeting messages disappear whether or not anything else is configured.
  const builtIn = [...inbox, (core: RunningCore) => fleetingTarget(core)]
  // In a cluster, a relay resumes at start only what it owes for documents it orders (none yet).
  const outbox = clustered
    ? ownedOutbox(backend.outbox, (document) => clustered.cluster.owns(document))
    : backend.outbox
  const limits = { ...DEFAULT_CORE_LIMITS, ...DEFAULT_TRANSPORT_LIMITS, ...options.limits }
  const push =
    vapid && pushModules
      ? new pushModules.PushExtension({
          ...options.push,
          vapid,
          ...(clustered ? { presence: clustered.cluster.presence } : {}),
          store: backend.pushSubscriptions,
          verify: (token) => auth.verifyToken(token),
          rewriters: (hookWorker?.modules ?? []).flatMap(({ name, handlers }, index) =>
            handlers.includes("onPushNotification")
              ? [
                  {
                    hook: name,
                    handler: (notification, context) => hookWorker!.push(index, notification, context),
                  },
                ]
              : [],
          ),
          ...(options.apiLimits?.bodyTimeoutMs !== undefined
            ? { bodyTimeoutMs: options.apiLimits.bodyTimeoutMs }
            : {}),
          log: log.child({ component: "push" }),
        })
      : undefined
  const attachments =
    options.attachments === false
      ? undefined
      : new AttachmentsExtension({
          ...options.attachments,
          store: backend.blobs,
          verify: (token) => auth.verify(token),
          ...(options.api === false ? {} : { keys: apiKeys }),
          onUserLimit: (limit, user) => {
            metrics.userLimits.inc({ limit })
            log.info({ user, limit }, "refused: per-user limit")
          },
          ...(options.apiLimits?.bodyTimeoutMs !== undefined
            ? { bodyTimeoutMs: options.apiLimits.bodyTimeoutMs }
            : {}),
          log: log.child({ component: "attachments" }),
        })
  // Always on, even without hook modules, webhooks or inboxes: the outbox also writes the event log.
  const hooks = new HooksExtension({
    ...(hookWorker ? { worker: hookWorker } : {}),
    targets: [...builtIn, ...(push ? [push.target] : []), ...(attachments ? [attachments.target] : [])],
    webhooks: webhooks.map((url) => ({ url, secret: options.webhookSecret! })),
    outbox,
    ...(clustered ? { fence: clustered.deliveries } : {}),
    log: hookLog,
    registry: metrics.registry,
    admin: auth,
    ...(options.hookTimeoutMs !== undefined ? { timeoutMs: options.hookTimeoutMs } : {}),
    ...(options.hookAttempts !== undefined ? { backoff: { attempts: options.hookAttempts } } : {}),
  })
  const events = new EventLogPruner(backend.events, {
    retention: { ...DEFAULT_EVENT_RETENTION, ...options.eventRetention },
    log: log.child({ component: "event-log" }),
    ...(options.eventPruneIntervalMs !== undefined ? { intervalMs: options.eventPruneIntervalMs } : {}),
  })
  // Erasure (GDPR), for operators: `DELETE /admin/users/{user}/content` and the API's `/v1/users/{user}/content`.
  const erasure = new ErasureAdmin({
    verify: (token) => auth.verify(token),
    list: () => storage.list(),
    ...(options.history === false ? {} : { history: backend.history }),
    ...(attachments ? { blobs: backend.blobs } : {}),
  })
  // The extensions, in the order their hooks run (README "Architecture"); the core stops them in reverse.
  const extensions: RelayExtension[] = [
    // Every update is checked against the document rules, unless a policy is given.
    options.policy ?? new AuthorizationPolicy(backend.bindings),
    ...(options.listeners ?? []),
    ...(options.extensions ?? []),
    // Connected users' inboxes follow every change, derived in memory (LiveInbox); membership is the hooks'.
    // In a cluster this relay sees only the changes it orders: a quick reconnect cannot rely on what it saw.
    ...(options.inbox === false ? [] : [new LiveInbox({ seesEveryChange: !options.cluster })]),
    hooks,
    events,
    erasure,
    metricsExtension(metrics, options.metricsToken ? { token: options.metricsToken } : {}),
    // Before the API, which answers every other `/v1/...` path.
    ...(push ? [push] : [new PushOff()]),
    ...(attachments ? [attachments] : []),
    ...(options.api === false
      ? []
      : [
          new ApiExtension({
            keys: apiKeys,
            storage,
            idempotency: backend.idempotency,
            log: log.child({ component: "api" }),
            ...(options.apiLimits ? { limits: options.apiLimits } : {}),
            erase: (user) => erasure.erase(user),
          }),
        ]),
  ]
  // Compared before the core starts, so before this relay takes a lease or serves anyone: a relay the
  // cluster refuses ordered nothing and answered nobody.
  if (clustered)
    await clustered.cluster
      .checkSettings(
        sharedSettingValues({
          ...(key ? { auth: key } : {}),
          dev,
          ...(options.authIssuer ? { issuer: options.authIssuer } : {}),
          ...(options.authAudience ? { audience: options.authAudience } : {}),
          allowTokensWithoutExp: authOptions.allowTokensWithoutExp ?? false,
          maxTokenLifetimeMs: authOptions.maxTokenLifetimeMs ?? DEFAULTS.maxTokenLifetimeMs,
          // The names the hook runtime gives its targets: a relay without one of them dead-letters what
          // the outbox owes it when it takes a conversation over.
          deliveryTargets: [
            ...(hookWorker?.modules ?? []).map((module) => `hook:${module.name}`),
            ...webhooks.map((url) => `webhook:${url}`),
            ...(options.inbox === false ? [] : ["inbox", "inbox-purge"]),
            "fleeting",
            ...(push ? ["push"] : []),
            ...(attachments ? ["attachments"] : []),
          ],
          ...(options.webhookSecret ? { webhookSecret: options.webhookSecret } : {}),
          // Dev mode's keys are its own, made at start: not the cluster's.
          ...(options.push?.vapid ? { vapidPublicKey: options.push.vapid.publicKey } : {}),
          epochs: {
            garbageBytes: limits.epochGarbageBytes,
            garbageIntervalMs: limits.epochGarbageIntervalMs,
            stockGraceMs: limits.epochStockGraceMs,
            clientIds:
              options.history === false
                ? 0
                : (options.history?.epochClientIds ?? HistoryDefaults.epochClientIds),
          },
          history: options.history === false ? false : sealingOf(options.history ?? {}),
          updateLimits: {
            structs: limits.maxUpdateStructs,
            values: limits.maxUpdateValues,
            elements: limits.maxUpdateElements,
            minBytesPerStruct: limits.minBytesPerStruct,
            clientIds: limits.maxUpdateClientIds,
            deletedOnArrival: limits.maxDeletedOnArrival,
            siblings: limits.maxSiblings,
            integrationSteps: limits.maxIntegrationSteps,
            deleteRanges: limits.maxDeleteRanges,
            deleteVisits: limits.maxDeleteVisits,
          },
          eventRetention: { ...DEFAULT_EVENT_RETENTION, ...options.eventRetention },
        }),
        options.cluster?.configChange ?? false,
      )
      .catch(async (error: unknown) => {
        await backend.close()
        await hookWorker?.stop()
        throw error instanceof StartupError
          ? error
          : new StartupError(
              ExitCode.STORAGE,
              `cannot compare this relay's settings with the cluster's (PostgreSQL, Redis): ${reasonOf(error)}`,
              { cause: error },
            )
      })
  const core = new RelayCore({
    storage,
    log,
    metrics,
    limits,
    extensions,
    events: backend.events,
    ...(options.sequencer ? { sequencer: options.sequencer } : {}),
    storageHealth: storage,
    ...(backend.purge ? { purge: backend.purge } : {}),
    ...(options.history === false
      ? {}
      : {
          history: new HistoryKeeper(
            backend.history,
            { ...HistoryDefaults, ...options.history },
            options.history ?? {},
          ),
        }),
    ...(clustered ? { router: clustered.cluster } : {}),
  })
  try {
    await core.start()
  } catch (error) {
    await core.close()
    await backend.close()
    throw error
  }
  if (hooks.runtime) log.info({ hooks: hooks.runtime.targetNames }, "hooks loaded")
  clustered?.cluster.startSweeping(backend.outbox)
  // Per-user limits count the user's connections and spending on every relay, whatever the load balancer does.
  await clustered?.cluster.shareUsage(core.users)
  let warm = options.warmUp === false
  const startedAt = Date.now()
  const transport = new WsTransport({
    core,
    auth,
    log,
    metrics,
    limits,
    dev,
    devAnyHost: options.forceDev ?? false,
    trustProxy: options.trustProxy ?? false,
    ...(options.staticDir ? { staticDir: options.staticDir } : {}),
    health: () => ({ storage: backend.kind }),
    // Not ready until warmed up: a load balancer then sends no traffic to a cold update path.
    readiness: () =>
      readinessOf(
        storage,
        clustered?.cluster.redisState,
        warm ? undefined : startedAt,
        clustered?.cluster.settingsState,
      ),
    routes: extensionRoutes(extensions),
    knownApiKey: (key) => apiKeys.holds(key),
  })
  let port: number
  try {
    port = await transport.listen(options.port ?? DEFAULTS.port, host)
  } catch (error) {
    await core.close()
    await backend.close()
    throw listenFailure(error, host, options.port ?? DEFAULTS.port)
  }
  const shownHost =
    host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host
  const url = `ws://${shownHost}:${port}`
  const httpUrl = `http://${shownHost}:${port}`
  log.info({ port, url, httpUrl, dev, storage: backend.kind }, "listening")
  let closing: Promise<void> | undefined
  // In pieces between serving: a client connecting meanwhile waits for one piece at most.
  const warmedUp =
    options.warmUp === false
      ? Promise.resolve(log.info("warm-up skipped (--skip-warm-up)"))
      : warmUpUpdatePath({
          limits,
          // Sealing as this relay seals (hook events go to a scratch in-memory log: see scratchOutbox).
          history: options.history ?? {},
          stopped: () => closing !== undefined,
        }).then(
          (report) => log.info(report, "warmed up the update path"),
          (error: unknown) => log.warn({ err: error }, "warming up the update path failed"),
        )
  void warmedUp.then(() => {
    warm = true
  })
  const running: RunningRelay = {
    url,
    httpUrl,
    port,
    core,
    auth,
    metrics,
    log,
    events: backend.events,
    ...(hooks.runtime ? { hooks: hooks.runtime } : {}),
    warmedUp,
    close: () => {
      closing ??= (async () => {
        transport.stopAccepting()
        // It stops at its next piece; its scratch core is closed before the process may exit.
        await warmedUp
        // Finishes the last changes, then stops the extensions (hooks, policy) and closes storage;
        // the backend after the core: its last changes' events are recorded before the outbox closes.
        await core.close()
        await backend.close()
        await transport.close()
        log.info("stopped")
      })()
      return closing
    },
  }
  supplanted = () => {
    // Ends with a failure's code, for a supervisor to start it again (refused while the other holds it).
    process.exitCode = ExitCode.STORAGE
    void running.close()
  }
  return running
}

/**
 * `/readyz`'s answer: ready, or which dependencies fail, why and since when.
 * `warmingSince` is set while the update path warms up after a start (about a
 * second): not ready then, so a load balancer sends no traffic to a cold path.
 * `settings` is a clustered relay's comparison with the relays that joined
 * before it.
 */
function readinessOf(
  storage: StorageGuard,
  redis?: RedisState,
  warmingSince?: number,
  settings?: SettingsState,
): Readiness {
  const failing: Extract<Readiness, { ready: false }>["failing"][number][] = []
  const state = storage.state
  const stalled = state.state === "ok" ? storage.stalledSince() : undefined
  if (state.state !== "ok")
    failing.push({
      dependency: "storage",
      code: state.error.code,
      error: state.error.message,
      since: new Date(state.since).toISOString(),
    })
  else if (stalled !== undefined)
    failing.push({
      dependency: "storage",
      code: ErrorCode.STORAGE_UNAVAILABLE,
      error: `a write has waited ${Math.round(Date.now() - stalled)} ms for storage (more than ${storage.stallMs} ms), which answered nothing asked since: storage may have stopped answering`,
      since: new Date(stalled).toISOString(),
    })
  if (redis && !redis.ready)
    failing.push({
      dependency: "redis",
      code: ErrorCode.UNAVAILABLE,
      error: redis.error ?? "not connected",
      since: new Date(redis.since).toISOString(),
    })
  // The newcomer of two relays whose shared settings differ: the load balancer leaves it, not the cluster.
  if (settings && !settings.agreed)
    failing.push({
      dependency: "cluster-settings",
      code: ErrorCode.INVALID_ARGUMENT,
      error: `settings every relay of the cluster must share differ from those of a relay that joined before this one: ${settings.settings.join(", ")}`,
      since: new Date(settings.since).toISOString(),
    })
  if (warmingSince !== undefined)
    failing.push({
      dependency: "warm-up",
      code: "WARMING_UP",
      error: "the update path is warming up after the start",
      since: new Date(warmingSince).toISOString(),
    })
  return failing.length === 0 ? { ready: true } : { ready: false, failing }
}

/**
 * How this relay cuts a conversation's history (`HistoryDefaults`' settings
 * less the epoch's client ids, compared with the epochs): per-relay read
 * limits are left out, the owner's cuts are what the cluster stores.
 */
function sealingOf(history: Partial<Record<keyof typeof HistoryDefaults, number>>): Record<string, number> {
  const sealing: Record<string, number> = {}
  for (const [name, value] of Object.entries(HistoryDefaults))
    if (name !== "epochClientIds") sealing[name] = history[name as keyof typeof HistoryDefaults] ?? value
  return sealing
}

/** Takes SQLite data directory `dataDir`'s lock for the relay (creating the directory), or throws a {@link StartupError}. */
function lockForRelay(dataDir: string): () => void {
  try {
    mkdirSync(dataDir, { recursive: true })
    return lockDataDir(dataDir, "relay")
  } catch (error) {
    if (!(error instanceof DataDirInUse)) throw storageFailure(error, { kind: "sqlite", dataDir })
    throw new StartupError(
      ExitCode.STORAGE,
      `cannot use the data directory ${resolve(dataDir)} (--data-dir): ${error.message}: stop it first, or give another --data-dir (several relays share PostgreSQL, not a SQLite directory)`,
    )
  }
}
