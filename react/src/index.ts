/**
 * `@parley/react`: React bindings for the Parley SDK. Wrap the app in
 * {@link ParleyProvider}, then read with the hooks; each is a
 * `useSyncExternalStore` over one of the SDK's stores, so a component
 * re-renders only when what it reads changed.
 */
export {
  type UseConversation,
  type UseMessages,
  useAttachmentUrl,
  useConnectionStatus,
  useConversation,
  useInbox,
  useMessageStatus,
  useMessages,
  usePinned,
  usePresence,
  usePresenceOf,
  useProfile,
  useStore,
  useTyping,
  useTypingNames,
} from "./hooks.js"
export { ParleyProvider, type ParleyProviderProps, useChatClient } from "./provider.js"
