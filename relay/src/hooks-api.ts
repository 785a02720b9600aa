/**
 * What a hook module needs, as `@parley/relay/hooks`: `defineHooks`, the
 * event and context types, and the errors a handler throws or checks.
 *
 * Why an entry of its own: hook modules run in a worker thread, and every
 * worker restart (after a handler blocked or crashed it) loads them again
 * while every conversation's hook calls wait. A module importing
 * `@parley/relay` loads the whole relay there (its storage, cluster, HTTP
 * and metrics code: about 0.7 s of a quiet core, 1–2 s on a busy one); one
 * importing this entry loads the few modules below (about 0.1 s).
 */
export { type ConversationId, ErrorCode, type MessageId, ParleyError, type UserId } from "@parley/shared"
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
  type PushNotificationContext,
  type PushNotificationHandler,
  type PushNotificationResult,
} from "./hooks/define.js"
export { PermanentDeliveryError } from "./hooks/dispatcher.js"
export type {
  HookActor,
  HookConversation,
  HookEvent,
  HookEventHeader,
  HookEventType,
  HookMessage,
  HookSubjects,
  LoggedChange,
} from "./hooks/events.js"
export type { PushNotification } from "./push/notification.js"
