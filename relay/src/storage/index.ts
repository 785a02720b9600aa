export type { DiskSpace } from "./disk-space.js"
export {
  DEFAULT_STORAGE_TIMEOUT_MS,
  isStorageFailure,
  StorageGuard,
  type StorageGuardOptions,
  type StorageState,
  storageUnavailable,
  withDeadline,
  withDeadlines,
} from "./guard.js"
export { findDamage } from "./integrity.js"
export { type MemoryData, MemoryStorage } from "./memory.js"
export { SqliteStorage } from "./sqlite.js"
export type { DamagedDocument, DocumentRecord, PingOptions, RelayStorage, StoredDocument } from "./types.js"

/** The backends the relay can run on (see `../backend/`). */
export type StorageKind = "memory" | "sqlite" | "postgres"
