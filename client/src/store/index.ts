export { type AttachmentUrlSnapshot, attachmentUrlStore } from "./attachment-stores.js"
export {
  connectionStatusStore,
  contactsPresenceStore,
  type InboxSnapshot,
  inboxStore,
  profileStore,
} from "./client-stores.js"
export {
  type ConversationSnapshot,
  conversationStore,
  type MessageWindowSnapshot,
  type MessageWindowStore,
  messageStatusStore,
  messageWindowStore,
  pinnedStore,
  presenceStore,
  typingStore,
} from "./conversation-stores.js"
export type { SnapshotStore } from "./snapshot-store.js"
