import { ErrorCode, ParleyError } from "@parley/shared"
import { MemoryStorage } from "./memory.js"
import { SqliteStorage } from "./sqlite.js"
import type { RelayStorage } from "./types.js"

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
export { CATALOG_FILE, SQLITE_FILE, SqliteStorage } from "./sqlite.js"
export type { DamagedDocument, DocumentRecord, RelayStorage, StoredDocument } from "./types.js"

/** The storage backends the relay can run on. */
export type StorageKind = "memory" | "sqlite" | "postgres"

/** Where a backend keeps its data. */
export interface StorageOptions {
  readonly kind: StorageKind
  /** Data directory (sqlite). */
  readonly dataDir: string
  /** Connection string (postgres, required: there is no default database). */
  readonly databaseUrl?: string
  /** Bound of every PostgreSQL connect, query and statement, in ms (postgres). */
  readonly timeoutMs?: number
  /** Hears of idle PostgreSQL connections the server dropped (postgres). */
  readonly onIdleError?: (error: Error) => void
}

/** Opens the configured backend. */
export async function openStorage(options: StorageOptions): Promise<RelayStorage> {
  switch (options.kind) {
    case "memory":
      return new MemoryStorage()
    case "sqlite":
      return new SqliteStorage(options.dataDir)
    case "postgres": {
      if (!options.databaseUrl)
        throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "postgres storage needs a database URL")
      const { PostgresStorage } = await import("./postgres.js")
      return PostgresStorage.open(options.databaseUrl, options.onIdleError, options.timeoutMs)
    }
  }
}
