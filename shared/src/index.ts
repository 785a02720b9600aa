/**
 * `@parley/shared`: the conversation document model (schema v1), its rules,
 * change events and the wire protocol, shared by the relay and the SDK.
 */

export { type ConversationTypes, type Markers, typesOf } from "./document.js"
export * from "./erasure.js"
export {
  AddressLimit,
  CloseCode,
  type CloseCodeName,
  ErrorCode,
  isErrorCode,
  isRetryable,
  ParleyError,
  toParleyError,
  UserLimit,
} from "./errors.js"
export * from "./events.js"
export * from "./history.js"
export * from "./ids.js"
export * from "./inbox.js"
export { type MessageIndex, messageIndex } from "./message-index.js"
export * from "./operations.js"
export { isPlainJson } from "./plain-json.js"
export * from "./presence.js"
export * from "./priorities.js"
export * from "./profiles.js"
export * from "./protocol.js"
export * from "./reads.js"
export * from "./rebase.js"
export * from "./rules.js"
export * from "./schema.js"
export * from "./sealing.js"
export * from "./sequence.js"
export {
  DEFAULT_UPDATE_PART_LIMITS,
  splitUpdate,
  splitUpdateParts,
  type UpdatePartLimits,
} from "./split-update.js"
export * from "./validate.js"
export { assertWellFormed, illFormedPath } from "./well-formed.js"
