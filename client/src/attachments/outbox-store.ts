import type { Attachment, ConversationId, MessageId, MessageView, Metadata, Priority } from "@parley/shared"
import * as idb from "lib0/indexeddb"
import { LocalDatabase, replicaName, type StorageKind } from "../storage.js"

/** A reason kept with a failed message (a `ParleyError`'s code and message, storable). */
export interface StoredFailure {
  readonly code: string
  readonly message: string
  /** The rule that refused it, if one did (`conversation-id-taken` forbids a retry, say). */
  readonly rule?: string
}

/** One file of a message waiting for its upload. The bytes are kept apart (see {@link OutboxStore.blob}). */
export interface OutboxFile {
  readonly name: string
  /** As the browser reported it; the relay sniffs the real type. */
  readonly mimeType: string
  readonly size: number
  /** The relay's upload session, once created: resumed after a reload with `HEAD`. */
  readonly uploadId?: string
  /** The chunk size the relay gave that session. */
  readonly chunkBytes?: number
  /** What the relay returned once the last chunk arrived. */
  readonly attachment?: Attachment
  /** The relay refused this file (413, 415): its bytes are gone, a retry sends the message without it. */
  readonly refused?: StoredFailure
}

/**
 * A message whose files are not uploaded yet, kept on this device. Its id is
 * fixed when the user sends it, so the message is written once however many
 * reloads and retries the uploads take.
 */
export interface OutboxEntry {
  readonly messageId: MessageId
  readonly conversationId: ConversationId
  readonly body: string
  readonly createdAt: number
  readonly type?: string
  readonly replyTo?: MessageId
  readonly metadata?: Metadata
  readonly priority?: Priority
  /** Attachments that need no upload (links, object references), sent as they are. */
  readonly attachments?: readonly Attachment[]
  readonly files: readonly OutboxFile[]
  /** Set when an upload failed for good: the message waits for the user's retry or discard. */
  readonly failed?: StoredFailure
  /**
   * The message is in the conversation's replica: the entry stays (without
   * bytes) until the relay saved the message, so that a write lost to a
   * reload is made again.
   */
  readonly written?: boolean
  /**
   * The relay refused the message itself (dated by a wrong clock, say), not
   * a file: kept as the user wrote it, with {@link failed} saying why, so
   * that a reload still lists it failed until the user retries or discards
   * it. Never uploaded nor written; it has no files.
   */
  readonly refusedMessage?: MessageView
  /**
   * Not a message: the conversation's work the relay refused on a removal
   * (edits, reactions, deletions, ...), still in its replica, as the state
   * vector of the replica then (client id, clock pairs), {@link failed}
   * saying why. Kept so that a reload does not send it if the user was
   * added back (see `ConversationUploads.keepRefusedWork`).
   */
  readonly refusedWork?: readonly (readonly [number, number])[]
}

/**
 * Where a user's unsent files live on this device: entries and their bytes,
 * by message id. IndexedDB (database `parley:<user>:uploads`, which survives
 * reloads) or memory. Small on purpose: the upload queue owns the meaning.
 */
export interface OutboxStore {
  /** Every entry of the conversation, oldest first. */
  list(conversation: ConversationId): Promise<OutboxEntry[]>
  /** Stores a new entry with the bytes of its files (in the order of `entry.files`), in one transaction. */
  add(entry: OutboxEntry, blobs: readonly Blob[]): Promise<void>
  /** Replaces an entry's fields (its bytes stay). */
  update(entry: OutboxEntry): Promise<void>
  /** The bytes of file `index` of a message, or undefined once freed. */
  blob(messageId: MessageId, index: number): Promise<Blob | undefined>
  /** Frees the bytes of the given files (all of the message's when `indexes` is absent). */
  freeBlobs(messageId: MessageId, indexes?: readonly number[]): Promise<void>
  /** Removes the entry and its bytes. */
  remove(messageId: MessageId): Promise<void>
  close(): void
}

const ENTRIES = "entries"
const BLOBS = "blobs"

const byCreation = (a: OutboxEntry, b: OutboxEntry) =>
  a.createdAt - b.createdAt || a.messageId.localeCompare(b.messageId)

/** The outbox of `user` on this device. */
export function openOutboxStore(kind: StorageKind, user: string): OutboxStore {
  return kind === "memory"
    ? new MemoryOutboxStore()
    : new IndexedDbOutboxStore(replicaName(user, LocalDatabase.uploads))
}

/** Keeps everything in memory: gone with the page. */
export class MemoryOutboxStore implements OutboxStore {
  private readonly entries = new Map<MessageId, OutboxEntry>()
  private readonly blobs = new Map<string, Blob>()

  async list(conversation: ConversationId): Promise<OutboxEntry[]> {
    return [...this.entries.values()].filter((e) => e.conversationId === conversation).sort(byCreation)
  }
  async add(entry: OutboxEntry, blobs: readonly Blob[]): Promise<void> {
    this.entries.set(entry.messageId, entry)
    blobs.forEach((blob, i) => {
      this.blobs.set(blobKey(entry.messageId, i), blob)
    })
  }
  async update(entry: OutboxEntry): Promise<void> {
    if (this.entries.has(entry.messageId)) this.entries.set(entry.messageId, entry)
  }
  async blob(messageId: MessageId, index: number): Promise<Blob | undefined> {
    return this.blobs.get(blobKey(messageId, index))
  }
  async freeBlobs(messageId: MessageId, indexes?: readonly number[]): Promise<void> {
    const count = this.entries.get(messageId)?.files.length ?? 0
    for (const i of indexes ?? range(count)) this.blobs.delete(blobKey(messageId, i))
  }
  async remove(messageId: MessageId): Promise<void> {
    await this.freeBlobs(messageId)
    this.entries.delete(messageId)
  }
  close(): void {}
}

const blobKey = (messageId: MessageId, index: number) => `${messageId}/${index}`
const range = (n: number) => Array.from({ length: n }, (_, i) => i)

/**
 * Entries in one object store (key: message id), bytes in another (key:
 * `[message id, file index]`) as Blobs: browsers keep a stored Blob on disk,
 * so a large file is never read into memory whole; the uploader reads it a
 * chunk at a time with `slice`.
 */
class IndexedDbOutboxStore implements OutboxStore {
  private readonly opening: Promise<IDBDatabase>

  constructor(name: string) {
    this.opening = idb.openDB(name, (db) =>
      idb.createStores(db, [[ENTRIES, { keyPath: "messageId" }], [BLOBS]]),
    )
    // Surfaced by each operation instead.
    this.opening.catch(() => {})
  }

  async list(conversation: ConversationId): Promise<OutboxEntry[]> {
    const [entries] = idb.transact(await this.opening, [ENTRIES], "readonly")
    const all = (await idb.getAll(entries!)) as OutboxEntry[]
    return all.filter((e) => e.conversationId === conversation).sort(byCreation)
  }

  async add(entry: OutboxEntry, blobs: readonly Blob[]): Promise<void> {
    const [entries, bytes] = idb.transact(await this.opening, [ENTRIES, BLOBS])
    // All requests are queued before any completes: one transaction, all or nothing.
    await Promise.all([
      idb.put(entries!, entry as never),
      ...blobs.map((blob, i) => idb.put(bytes!, blob as never, [entry.messageId, i] as never)),
    ])
  }

  async update(entry: OutboxEntry): Promise<void> {
    const [entries] = idb.transact(await this.opening, [ENTRIES])
    // Only an entry still there: a discard that raced an upload's bookkeeping wins.
    if ((await idb.get(entries!, entry.messageId)) === undefined) return
    await idb.put(entries!, entry as never)
  }

  async blob(messageId: MessageId, index: number): Promise<Blob | undefined> {
    const [bytes] = idb.transact(await this.opening, [BLOBS], "readonly")
    const value = (await idb.get(bytes!, [messageId, index] as never)) as unknown
    return value instanceof Blob ? value : undefined
  }

  async freeBlobs(messageId: MessageId, indexes?: readonly number[]): Promise<void> {
    const [bytes] = idb.transact(await this.opening, [BLOBS])
    if (indexes === undefined) {
      await idb.del(bytes!, IDBKeyRange.bound([messageId, 0], [messageId, Number.MAX_SAFE_INTEGER]) as never)
      return
    }
    await Promise.all(indexes.map((i) => idb.del(bytes!, [messageId, i] as never)))
  }

  async remove(messageId: MessageId): Promise<void> {
    const [entries, bytes] = idb.transact(await this.opening, [ENTRIES, BLOBS])
    await Promise.all([
      idb.del(entries!, messageId),
      idb.del(bytes!, IDBKeyRange.bound([messageId, 0], [messageId, Number.MAX_SAFE_INTEGER]) as never),
    ])
  }

  close(): void {
    void this.opening.then((db) => db.close()).catch(() => {})
  }
}
