export {
  type ConversationState,
  type DefinedHooks,
  defineHooks,
  type HookContext,
  type HookConversations,
  type HookHandler,
  type HookInboxes,
  type Hooks,
  type InboxSummary,
} from "./define.js"
export {
  type DeliveryAttempt,
  type DeliveryFence,
  type DeliveryTarget,
  Dispatcher,
  exponentialBackoff,
  PermanentDeliveryError,
} from "./dispatcher.js"
export {
  DEFAULT_EVENT_RETENTION,
  type EventLog,
  type EventLogEntry,
  type EventLogListener,
  type EventLogQuery,
  type EventLogReader,
  type EventRetention,
  MAX_EVENT_LOG_READ,
} from "./event-log.js"
export { EventLogPruner, type EventLogPrunerOptions } from "./event-log-pruner.js"
export {
  HANDLER_NAMES,
  type HookActor,
  type HookConversation,
  type HookEvent,
  type HookEventHeader,
  type HookEventType,
  type HookMessage,
  type HookSubjects,
  type LoggedChange,
} from "./events.js"
export { HooksExtension, type HooksExtensionOptions } from "./extension.js"
export { type LoadedHooks, loadHooks } from "./loader.js"
export { MemoryEventLog } from "./memory-event-log.js"
export {
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  MemoryOutbox,
  type Outbox,
  type OutboxBatch,
} from "./outbox.js"
export { HOOK_CHAIN_LIMIT, HookRuntime, type HookRuntimeOptions } from "./runtime.js"
export { verifyWebhook, WEBHOOK_RETRY_SCHEDULE, webhookTarget } from "./webhook.js"
