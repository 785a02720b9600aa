/**
 * `@parley/relay`: the Parley relay server. Start one with {@link startRelay};
 * embed the socket-free core with {@link RelayCore}; extend it with
 * {@link RelayExtension}s (an {@link UpdatePolicy} is one) or a {@link Sequencer}.
 */

/** Re-exported from `@parley/shared`: the ids and values hook handlers read and write. */
export type {
  ConversationId,
  MessageId,
  MessageView,
  Participant,
  Role,
  SendMessageInput,
  UserId,
} from "@parley/shared"
export type { Access } from "./access.js"
export { accessOf } from "./access.js"
export { openApiDocument } from "./api/app.js"
export type { ApiEventEntry, ApiEventQuery, ApiEventSource } from "./api/event-source.js"
export { ApiExtension, type ApiExtensionOptions } from "./api/extension.js"
export { type IdempotencyRecord, type IdempotencyStore, MemoryIdempotencyStore } from "./api/idempotency.js"
export {
  API_SCOPES,
  type ApiKeyRecord,
  type ApiKeyStore,
  type ApiScope,
  MemoryApiKeyStore,
  newApiKey,
} from "./api/keys.js"
export { type ApiLimits, DEFAULT_API_LIMITS } from "./api/limits.js"
export type { AuthKey, AuthOptions, VerifiedToken } from "./auth.js"
export { Authenticator, DEV_TOKEN_ISSUER, SERVICE_ROLE } from "./auth.js"
export {
  type Backend,
  type BackendOptions,
  MemoryBackend,
  openBackend,
  SqliteBackend,
} from "./backend/index.js"
export { PostgresBackend } from "./backend/postgres.js"
export type { RoutedCore, UpdateRouter } from "./cluster/router.js"
export type { Connection, Session } from "./connection.js"
export { DEFAULT_RELAY_OPTIONS } from "./defaults.js"
export type { DeferringChange, DeferTarget } from "./deferred-change.js"
export type { DeferredWrites } from "./document-host.js"
export { closeFor } from "./errors.js"
export type {
  AfterSaved,
  AfterSavedListener,
  AwarenessChange,
  ClientIdOwners,
  HttpRequest,
  LoadedDocument,
  RelayExtension,
  RunningCore,
  ServerWriteOptions,
  StoredChange,
  StoredLog,
} from "./extension.js"
export type {
  PushNotificationContext,
  PushNotificationHandler,
  PushNotificationResult,
} from "./hooks/define.js"
export {
  type ConversationState,
  DEFAULT_EVENT_RETENTION,
  type DeadLetter,
  type DeadLetterFilter,
  type DefinedHooks,
  defineHooks,
  type EventLog,
  type EventLogEntry,
  type EventLogListener,
  type EventLogQuery,
  type EventLogReader,
  type EventRetention,
  HOOK_CHAIN_LIMIT,
  type HookActor,
  type HookContext,
  type HookConversation,
  type HookConversations,
  type HookEvent,
  type HookEventHeader,
  type HookEventType,
  type HookHandler,
  type HookInboxes,
  type HookMessage,
  type HookRuntime,
  type HookSubjects,
  type Hooks,
  HooksExtension,
  type HooksExtensionOptions,
  type InboxSummary,
  type LoggedChange,
  MAX_EVENT_LOG_READ,
  MemoryEventLog,
  verifyWebhook,
} from "./hooks/index.js"
export { type RebuildReport, rebuildInboxes } from "./inbox/rebuild.js"
export type { Logger, LogLevel } from "./log.js"
export { type MetricsExtensionOptions, metricsExtension, RelayMetrics } from "./metrics.js"
export { AuthorizationPolicy } from "./policy/authorization-policy.js"
export { type CheckResult, type CheckUpdateInput, checkUpdate } from "./policy/check-update.js"
export { type ClientBindingStore, MemoryClientBindingStore } from "./policy/client-bindings.js"
export type { PolicyInput, UpdatePolicy } from "./policy.js"
export { membershipPolicy } from "./policy.js"
export type { Principal } from "./principal.js"
export { describePrincipal, RELAY } from "./principal.js"
export type { PurgedContent, RedactionScope } from "./purge/redact.js"
export {
  type ConversationPresence,
  PushExtension,
  type PushExtensionOptions,
  type PushOptions,
} from "./push/extension.js"
export type { PushNotification, PushUrgency } from "./push/notification.js"
export {
  DEFAULT_PUSH_RETRY,
  type PushRewriter,
  type PushTargetOptions,
  pushTarget,
  type VapidKeys,
} from "./push/push-target.js"
export {
  MemoryPushSubscriptionStore,
  type PushSubscriptionRecord,
  type PushSubscriptionStore,
} from "./push/store.js"
export { generateVapidKeys } from "./push/vapid.js"
export type { RelayClusterOptions, RelayOptions, RunningRelay } from "./relay.js"
export { DEFAULT_MAX_TOKEN_LIFETIME_MS, DEFAULT_TRANSPORT_LIMITS, startRelay } from "./relay.js"
export type { CoreLimits, RelayCoreOptions } from "./relay-core.js"
export { DEFAULT_CORE_LIMITS, RelayCore } from "./relay-core.js"
export type { ReplicaView } from "./replica-view.js"
export type { Sequencer } from "./sequencer.js"
export { LocalSequencer } from "./sequencer.js"
export { ExitCode, StartupError } from "./startup-error.js"
export type {
  DamagedDocument,
  DiskSpace,
  DocumentRecord,
  MemoryData,
  PingOptions,
  RelayStorage,
  StorageGuardOptions,
  StorageKind,
  StorageState,
  StoredDocument,
} from "./storage/index.js"
export {
  DEFAULT_STORAGE_TIMEOUT_MS,
  findDamage,
  MemoryStorage,
  StorageGuard,
} from "./storage/index.js"
export {
  CostRule,
  DEFAULT_UPDATE_COST_LIMITS,
  type UpdateCost,
  type UpdateCostLimits,
} from "./update-cost.js"
export type { Readiness, TransportLimits } from "./ws-transport.js"
