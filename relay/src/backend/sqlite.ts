import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs"
import { join } from "node:path"
import Database from "better-sqlite3"
import { SqliteIdempotencyStore } from "../api/idempotency.js"
import { SqliteApiKeyStore } from "../api/key-stores.js"
import { FsBlobStore } from "../attachments/fs-blob-store.js"
import { SqliteHistoryStore } from "../history/store.js"
import { SqliteEventLog } from "../hooks/sqlite-event-log.js"
import { SqliteOutbox } from "../hooks/sqlite-outbox.js"
import { SqliteClientBindingStore } from "../policy/client-bindings.js"
import { SqliteContentPurge } from "../purge/content-purge.js"
import { SqlitePushSubscriptionStore } from "../push/store.js"
import type { DiskSpace } from "../storage/disk-space.js"
import { SqliteStorage } from "../storage/sqlite.js"
import { BACKSTOP_AUTOCHECKPOINT_PAGES, WalCheckpointer } from "../storage/wal-checkpointer.js"
import { WalSync } from "../storage/wal-sync.js"
import type { Backend } from "./types.js"

/** The relay's database inside the data directory: documents, hook outbox, client-id bindings. */
export const SQLITE_FILE = "parley.sqlite"
/** The document catalog inside the data directory, a file of its own (see {@link SqliteBackend}). */
export const CATALOG_FILE = "catalog.sqlite"
/** Attachment blobs inside the data directory (see {@link FsBlobStore}). */
export const BLOBS_DIR = "blobs"

/**
 * Files of earlier versions, each with the tables it held: a backend opening
 * a data directory that has one copies its rows into {@link SQLITE_FILE} and
 * renames it to `<file>.migrated`.
 */
export const LEGACY_FILES: readonly { readonly file: string; readonly tables: readonly string[] }[] = [
  { file: "hooks.sqlite", tables: ["hook_events", "hook_deliveries", "hook_watermarks"] },
  { file: "client-bindings.sqlite", tables: ["parley_client_bindings"] },
]

/** `PRAGMA synchronous` reads 2 for FULL. */
const SYNCHRONOUS_FULL = 2

/**
 * The embedded default backend: one database, `<dataDir>/parley.sqlite`
 * (WAL, `synchronous=FULL`; the documents' appends synced by {@link WalSync}
 * off the event loop), holds the documents' logs and snapshots, the
 * hook outbox and the client-id bindings, on one connection.
 *
 * The catalog stays a second file, `<dataDir>/catalog.sqlite`, on purpose: it
 * records which documents exist and up to which log position, so that data
 * lost from the main file (WAL frames deleted, a file copied without its WAL,
 * a torn file system) shows as damage rather than as documents never created.
 * In the same file, the same loss would erase the record with the data.
 */
export class SqliteBackend implements Backend {
  readonly kind = "sqlite"
  readonly documents: SqliteStorage
  readonly outbox: SqliteOutbox
  readonly events: SqliteEventLog
  readonly bindings: SqliteClientBindingStore
  readonly history: SqliteHistoryStore
  readonly keys: SqliteApiKeyStore
  readonly idempotency: SqliteIdempotencyStore
  readonly purge: SqliteContentPurge
  readonly pushSubscriptions: SqlitePushSubscriptionStore
  readonly blobs: FsBlobStore
  private readonly db: Database.Database
  private readonly catalog: Database.Database
  /** Syncs the main database's WAL for the documents' commits, off the event loop (see {@link WalSync}). */
  private readonly walSync: WalSync | undefined
  /** Checkpoints the main database's WAL off the event loop (see {@link WalCheckpointer}). */
  private readonly checkpointer: WalCheckpointer

  /**
   * Opens (creating if needed) the data directory's databases; merges the files of earlier versions.
   * `onCheckpointError` hears of a failed WAL checkpoint (default: a process warning); `diskSpace`
   * replaces the file system's figures of the room left (see `SqliteStorage.ping`).
   */
  constructor(
    readonly dataDir: string,
    options: {
      readonly onCheckpointError?: (message: string) => void
      readonly diskSpace?: () => DiskSpace
    } = {},
  ) {
    mkdirSync(dataDir, { recursive: true })
    this.db = new Database(join(dataDir, SQLITE_FILE))
    try {
      this.db.pragma("journal_mode = WAL")
      this.db.pragma("synchronous = FULL")
      // Deleted content is overwritten with zeros, not left in free pages: purges rely on it.
      this.db.pragma("secure_delete = ON")
      // Statement journals (the hook outbox's savepoint inside every documents' commit) in memory: on
      // disk each commit created, wrote page by page and deleted a temporary file, about a twentieth of
      // a message's CPU in system calls; and no copy of a page's content lands in a temporary file.
      this.db.pragma("temp_store = MEMORY")
      // Checkpoints are the checkpointer thread's (started below); this connection's own only a backstop.
      this.db.pragma(`wal_autocheckpoint = ${BACKSTOP_AUTOCHECKPOINT_PAGES}`)
      // A read opens the write-ahead log (created if need be), whose file the documents' commits sync.
      this.db.prepare("SELECT 1 FROM sqlite_master").get()
      this.walSync = WalSync.open(join(dataDir, SQLITE_FILE))
      this.catalog = new Database(join(dataDir, CATALOG_FILE))
    } catch (error) {
      this.walSync?.close()
      this.db.close()
      throw error
    }
    try {
      this.catalog.pragma("journal_mode = WAL")
      this.catalog.pragma("synchronous = NORMAL")
      // The documents' commits are synced off the event loop (WalSync); without the log's file, by SQLite.
      const walSync = this.walSync
      this.documents = new SqliteStorage(this.db, this.catalog, {
        ...(options.diskSpace ? { diskSpace: options.diskSpace } : {}),
        ...(walSync ? { syncLog: () => walSync.sync() } : {}),
      })
      this.events = new SqliteEventLog(this.db)
      this.outbox = new SqliteOutbox(this.db, this.events)
      // The outbox's rows ride in the documents' next commit when one is due: one commit, not two.
      this.documents.carry(() => this.outbox.ride())
      this.outbox.rideWith(() => this.documents.commitScheduled)
      this.bindings = new SqliteClientBindingStore(this.db)
      this.history = new SqliteHistoryStore(this.db)
      this.keys = new SqliteApiKeyStore(this.db)
      this.idempotency = new SqliteIdempotencyStore(this.db)
      this.purge = new SqliteContentPurge(this.db)
      this.pushSubscriptions = new SqlitePushSubscriptionStore(this.db)
      this.blobs = new FsBlobStore(join(dataDir, BLOBS_DIR))
      this.adoptLegacyFiles()
      // Every acknowledgement rests on the documents' commits being synced. The level is the
      // connection's, and a store that left it lower (a pragma statement prepared once sets it when
      // prepared: the outbox once did, and no commit was synced) would make them unsynced silently.
      const level = this.db.pragma("synchronous", { simple: true })
      if (level !== SYNCHRONOUS_FULL)
        throw new Error(`${SQLITE_FILE}: synchronous is ${String(level)} after opening, not FULL (2)`)
    } catch (error) {
      this.walSync?.close()
      this.db.close()
      this.catalog.close()
      throw error
    }
    this.checkpointer = new WalCheckpointer(
      join(dataDir, SQLITE_FILE),
      options.onCheckpointError ??
        ((message) => process.emitWarning(`checkpointing ${SQLITE_FILE}'s WAL failed: ${message}`)),
    )
  }

  /**
   * Copies the rows of {@link LEGACY_FILES} into the main database, in one
   * transaction per file, then renames the file. Rows already there are kept
   * (`INSERT OR IGNORE`): a crash before the rename repeats the copy harmlessly,
   * at worst delivering an event again, which at-least-once allows.
   */
  private adoptLegacyFiles(): void {
    for (const { file, tables } of LEGACY_FILES) {
      const path = join(this.dataDir, file)
      if (!existsSync(path)) continue
      // The last connection to close checkpoints the file's WAL into it: no committed row stays behind in -wal.
      new Database(path).close()
      this.db.prepare("ATTACH DATABASE ? AS legacy").run(path)
      try {
        this.db.transaction(() => {
          for (const table of tables) {
            const found = this.db
              .prepare("SELECT 1 FROM legacy.sqlite_master WHERE type = 'table' AND name = ?")
              .get(table)
            if (!found) continue
            // By name: the main table may have columns the legacy file's lacks (`hook_events.members`).
            const columns = (
              this.db.prepare(`PRAGMA legacy.table_info(${table})`).all() as { name: string }[]
            )
              .map((c) => `"${c.name}"`)
              .join(", ")
            this.db.exec(
              `INSERT OR IGNORE INTO main.${table} (${columns}) SELECT ${columns} FROM legacy.${table}`,
            )
          }
        })()
      } finally {
        this.db.exec("DETACH DATABASE legacy")
      }
      renameSync(path, `${path}.migrated`)
      for (const suffix of ["-wal", "-shm"]) rmSync(`${path}${suffix}`, { force: true })
    }
  }

  async close(): Promise<void> {
    if (!this.db.open) return
    await this.documents.close()
    await this.outbox.close()
    await this.events.close()
    await this.checkpointer.stop()
    this.db.close()
    this.walSync?.close()
    this.catalog.close()
  }
}
