/**
 * `@parley/client`: the offline-first Parley chat SDK. Start with
 * {@link createChatClient}; see README.md for a quick start.
 */

/** Re-exported from `@parley/shared`: types that appear in the SDK's API. */
export type {
  Attachment,
  ChangeEvent,
  ConversationId,
  ConversationInfo,
  ConversationKind,
  InboxItem,
  Markers,
  MarkerTarget,
  MessageId,
  MessagePreview,
  MessageView,
  MessageWindow,
  Metadata,
  Participant,
  PendingChange,
  Priority,
  Profile,
  ProfileInput,
  Role,
  UserId,
} from "@parley/shared"
/**
 * Re-exported from `@parley/shared`: the rules the SDK and the relay enforce,
 * for UIs that show only what the user may do.
 */
/** Re-exported from `@parley/shared`: the one error class and its codes. */
export {
  canAddParticipant,
  canChangeRole,
  canDeleteMessage,
  canEditMessage,
  canRemoveParticipant,
  canUnpinMessage,
  canUpdateConversation,
  DEFAULT_FLEETING_SECONDS,
  type Decision,
  ErrorCode,
  isRetryable,
  keepsAnOwner,
  ParleyError,
  PRIORITIES,
  Rule,
} from "@parley/shared"
export type { AttachmentVariant } from "./attachments/attachment-urls.js"
export type {
  LocalFile,
  UploadEvent,
  UploadPhase,
  UploadRetryOptions,
  UploadState,
} from "./attachments/conversation-uploads.js"
export {
  type ChatClient,
  type ChatClientEvents,
  type ChatClientOptions,
  type ClientStatus,
  type CreateGroupInput,
  createChatClient,
  type DestroyOptions,
  type FlushOptions,
  type KnownConversation,
} from "./client.js"
export type {
  ConnectionEvents,
  ConnectionStatus,
  DocumentConnection,
  ReconnectOptions,
  WebSocketConstructor,
} from "./connection.js"
export type {
  ChatMessage,
  Conversation,
  ConversationEvents,
  ConversationState,
  SendInput,
  SendOptions,
} from "./conversation.js"
export type { Listener } from "./emitter.js"
export type { Inbox, InboxEvents } from "./inbox.js"
export { deleteLocalData } from "./local-data.js"
export type { MessageStatus } from "./message-status.js"
export type { PresenceStatus, UserPresence } from "./presence.js"
export { type ProfileClaims, typingText } from "./profiles.js"
export type { BrowserPushSubscription, PushDevice, PushRegistrations, PushSubscriptionInput } from "./push.js"
export { isPushWake, PUSH_RENEWAL_STEP_MS, WAKE_NOTIFICATION } from "./push.js"
export type { StorageKind } from "./storage.js"
export {
  type AttachmentUrlSnapshot,
  attachmentUrlStore,
  type ConversationSnapshot,
  connectionStatusStore,
  contactsPresenceStore,
  conversationStore,
  type InboxSnapshot,
  inboxStore,
  type MessageWindowSnapshot,
  type MessageWindowStore,
  messageStatusStore,
  messageWindowStore,
  pinnedStore,
  presenceStore,
  profileStore,
  type SnapshotStore,
  typingStore,
} from "./store/index.js"
export type { TokenSource } from "./token.js"
export type { UnsavedWork } from "./unsaved.js"
