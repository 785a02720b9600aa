/**
 * `@parley/shared`: the conversation document model (schema v1), its rules,
 * change events and the wire protocol, shared by the relay and the SDK.
 */
export { CloseCode, type CloseCodeName, ErrorCode, isErrorCode, ParleyError, toParleyError } from "./errors.js"
export * from "./ids.js"
export * from "./schema.js"
export { typesOf, type ConversationTypes, type Markers } from "./document.js"
export { messageIndex, type MessageIndex } from "./message-index.js"
export * from "./operations.js"
export * from "./reads.js"
export * from "./rules.js"
export * from "./sequence.js"
export * from "./events.js"
export * from "./validate.js"
export * from "./protocol.js"
