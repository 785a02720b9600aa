import {
  type ConversationId,
  canSendMessage,
  ErrorCode,
  getConversation,
  isAttachmentId,
  type MessageId,
  newAttachmentId,
  ParleyError,
  parseDocumentName,
  typesOf,
  type UserId,
  uploadedAttachmentIds,
} from "@parley/shared"
import { outsiderOfDirect } from "../access.js"
import type { RunningCore } from "../extension.js"
import type { Logger } from "../log.js"
import type { BlobStore } from "./blob-store.js"
import {
  INLINE_IMAGES,
  isAllowedType,
  sniffContentType,
  sniffText,
  TEXT_SNIFF_BYTES,
} from "./content-type.js"
import { describeImage } from "./images.js"
import {
  type AttachmentRecord,
  cleanKey,
  conversationPrefix,
  fileKey,
  RECORD_PREFIX,
  recordKey,
  referenceKey,
  thumbnailKey,
} from "./records.js"

/** How long an upload (finished or not) that no message references is kept. */
export const UNREFERENCED_TTL_MS = 24 * 60 * 60 * 1000

/** What {@link AttachmentService} enforces. */
export interface AttachmentServiceOptions {
  readonly store: BlobStore
  readonly log: Logger
  readonly maxBytes: number
  readonly chunkBytes: number
  readonly allowedTypes: readonly string[]
  readonly maxImagePixels: number
  readonly now?: () => number
}

const notFound = () => new ParleyError(ErrorCode.NOT_FOUND, "no such attachment")
/** Thrown when the sniffed type is refused: the routes answer 415. */
export class RefusedTypeError extends ParleyError {
  constructor(readonly type: string) {
    super(ErrorCode.INVALID_ARGUMENT, `content type ${type} is not accepted`)
  }
}

/**
 * Uploads and attachments, over a {@link BlobStore} and the running core:
 * who may upload to or read from a conversation is read from its document
 * (participants, deletion) before anything of the attachment is returned.
 */
export class AttachmentService {
  private core: RunningCore | undefined
  private readonly now: () => number

  constructor(readonly options: AttachmentServiceOptions) {
    this.now = options.now ?? Date.now
  }

  /** The running core, once the relay has started. */
  attach(core: RunningCore): void {
    this.core = core
  }

  private get store(): BlobStore {
    return this.options.store
  }

  /** The record of `id`, or undefined. */
  async record(id: string): Promise<AttachmentRecord | undefined> {
    if (!isAttachmentId(id)) return undefined
    // Whole, as one version: the record is rewritten (linked to its message) while participants read it.
    const bytes = await this.store.get(recordKey(id))
    return bytes && (JSON.parse(Buffer.from(bytes).toString("utf8")) as AttachmentRecord)
  }

  private async save(record: AttachmentRecord): Promise<void> {
    await this.store.put(recordKey(record.id), Buffer.from(JSON.stringify(record)))
  }

  /** Whether `user` may read the conversation now (a participant of a conversation not deleted). */
  async isParticipant(conversation: ConversationId, user: UserId): Promise<boolean> {
    return this.readConversation(conversation, user, (doc) => {
      const info = getConversation(doc)
      return info !== undefined && info.deletedAt === undefined && typesOf(doc).participants.has(user)
    })
  }

  /** Whether `user` may send messages to the conversation now. */
  async maySend(conversation: ConversationId, user: UserId): Promise<boolean> {
    return this.readConversation(conversation, user, (doc) => {
      const info = getConversation(doc)
      if (!info || info.deletedAt !== undefined) return false
      const role = typesOf(doc).participants.get(user)?.role
      return canSendMessage(user, role, user).allowed
    })
  }

  private async readConversation(
    conversation: ConversationId,
    user: UserId,
    check: (doc: import("yjs").Doc) => boolean,
  ): Promise<boolean> {
    let name: ReturnType<typeof parseDocumentName>
    try {
      name = parseDocumentName(conversation)
    } catch {
      return false
    }
    if (name.kind !== "conversation" || !this.core) return false
    // Refused on the id alone, as a connect is: loading a pair's direct conversation for a third
    // user would tell by its timing whether the pair ever talked.
    if (outsiderOfDirect({ kind: "user", user }, name)) return false
    return this.core.read(conversation, check, { failFast: true })
  }

  /** Opens an upload session; 404 (as for a missing conversation) when `user` may not send to it. */
  async createUpload(
    conversation: ConversationId,
    user: UserId,
    input: { name: string; size: number; mimeType?: string | undefined },
  ): Promise<AttachmentRecord> {
    if (!(await this.maySend(conversation, user)))
      throw new ParleyError(ErrorCode.NOT_FOUND, "no such conversation, or you may not send to it")
    if (input.size > this.options.maxBytes)
      throw new ParleyError(
        ErrorCode.TOO_LARGE,
        `attachments are at most ${this.options.maxBytes} bytes; this one is ${input.size}`,
      )
    const record: AttachmentRecord = {
      id: newAttachmentId(),
      conversation,
      uploader: user,
      name: input.name,
      size: input.size,
      ...(input.mimeType ? { declaredType: input.mimeType } : {}),
      createdAt: this.now(),
      complete: false,
    }
    await this.save(record)
    return record
  }

  /** The session `id` of `user` (NOT_FOUND for anyone else's, a missing one or a completed one). */
  async session(id: string, user: UserId): Promise<{ record: AttachmentRecord; offset: number }> {
    const record = await this.record(id)
    if (!record || record.uploader !== user) throw new ParleyError(ErrorCode.NOT_FOUND, "no such upload")
    const offset = record.complete ? record.size : ((await this.store.size(fileKey(record))) ?? 0)
    return { record, offset }
  }

  /**
   * Stores the next chunk of upload `record` at `offset`. Resolves with the
   * new offset, and the completed record when it was the last chunk. A first
   * chunk that is recognisably refused (markup, a program) ends the upload at
   * once; the type is decided on the whole file at completion.
   */
  async appendChunk(
    record: AttachmentRecord,
    offset: number,
    chunk: Uint8Array,
  ): Promise<{ offset: number; completed?: AttachmentRecord }> {
    if (record.complete) throw new ParleyError(ErrorCode.CONFLICT, "this upload is complete")
    if (offset + chunk.length > record.size)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `the chunk ends at byte ${offset + chunk.length}, past the declared size ${record.size}`,
      )
    if (offset === 0) {
      const early = sniffText(chunk)
      if (
        (early === "text/html" || early === "image/svg+xml") &&
        !isAllowedType(early, this.options.allowedTypes)
      ) {
        await this.discard(record)
        throw new RefusedTypeError(early)
      }
    }
    await this.store.append(fileKey(record), offset, chunk)
    const next = offset + chunk.length
    if (next < record.size) return { offset: next }
    return { offset: next, completed: await this.complete(record) }
  }

  private async complete(record: AttachmentRecord): Promise<AttachmentRecord> {
    const key = fileKey(record)
    const head: Uint8Array[] = []
    let headBytes = 0
    for await (const part of this.store.read(key, 0, TEXT_SNIFF_BYTES)) {
      head.push(part)
      headBytes += part.length
    }
    const type = await sniffContentType(() => this.store.read(key), Buffer.concat(head, headBytes))
    if (!isAllowedType(type, this.options.allowedTypes)) {
      await this.discard(record)
      throw new RefusedTypeError(type)
    }
    let completed: AttachmentRecord = { ...record, complete: true, mimeType: type }
    if (INLINE_IMAGES.has(type)) {
      let facts: Awaited<ReturnType<typeof describeImage>>
      try {
        facts = await describeImage(
          () => this.store.read(key),
          type,
          this.options.maxImagePixels,
          record.uploader,
        )
      } catch (error) {
        this.options.log.info({ err: error, attachment: record.id }, "an upload's image does not decode")
        await this.discard(record)
        throw new RefusedTypeError(`${type} (does not decode, or larger than the relay decodes)`)
      }
      await this.store.put(thumbnailKey(record), facts.thumbnail.bytes)
      completed = {
        ...completed,
        width: facts.width,
        height: facts.height,
        thumbnail: { width: facts.thumbnail.width, height: facts.thumbnail.height },
      }
      if (facts.clean) {
        // Stored under its own key before the record says so: a crash in between leaves the upload's
        // bytes and an unused copy, never a record pointing at nothing.
        await this.store.put(cleanKey(record), facts.clean)
        completed = { ...completed, clean: true, size: facts.clean.length }
      }
    }
    await this.save(completed)
    // The upload's bytes held the metadata: once the record serves the clean copy, they go.
    if (completed.clean) await this.store.delete(key)
    return completed
  }

  /** Deletes an attachment: its bytes, thumbnail and record. */
  discard(record: Pick<AttachmentRecord, "conversation" | "id">): Promise<void> {
    return discardAttachment(this.store, record)
  }

  /**
   * A completed attachment `user` may download, or NOT_FOUND — the same for a
   * missing attachment, an unfinished upload, and a conversation the user is
   * not (or no longer) in. Nothing of the attachment is returned before
   * access is known.
   */
  async readable(id: string, user: UserId | undefined): Promise<AttachmentRecord> {
    const record = await this.record(id)
    if (!record?.complete) throw notFound()
    if (user !== undefined && !(await this.isParticipant(record.conversation, user))) throw notFound()
    return record
  }

  /**
   * Links the uploaded attachments a sent message carries to it: the first
   * message of their uploader to reference one wins. Another member's message
   * that carries it (a forward) shows it, but neither keeps it from the
   * expiry sweep nor deletes it with its own deletion.
   */
  async messageSent(
    conversation: ConversationId,
    message: MessageId,
    author: UserId,
    attachments: readonly unknown[] | undefined,
  ): Promise<void> {
    const linked: string[] = []
    for (const id of uploadedAttachmentIds(attachments)) {
      const record = await this.record(id)
      // Another conversation's attachment stays unreadable here, and is never deleted by this message.
      if (!record || record.conversation !== conversation) continue
      // Before, a member who learned an upload's id before its uploader sent it could take it with a
      // message of theirs, and delete it with that message.
      if (record.uploader !== author) continue
      if (record.message === undefined) await this.save({ ...record, message })
      if (record.message === undefined || record.message === message) linked.push(id)
    }
    if (linked.length > 0)
      await this.store.put(referenceKey(conversation, message), Buffer.from(JSON.stringify(linked)))
  }

  /** Deletes the attachments message `message` brought (its blobs and records). */
  async messageDeleted(conversation: ConversationId, message: MessageId): Promise<number> {
    const key = referenceKey(conversation, message)
    const reference = await this.store.get(key)
    if (!reference) return 0
    const ids = JSON.parse(Buffer.from(reference).toString("utf8")) as string[]
    let deleted = 0
    for (const id of ids) {
      const record = await this.record(id)
      if (record && record.conversation === conversation && record.message === message) {
        await this.discard(record)
        deleted++
      }
    }
    await this.store.delete(key)
    return deleted
  }

  /** Deletes every attachment of conversation `conversation` (and its message references). */
  async conversationDeleted(conversation: ConversationId): Promise<number> {
    const keys = await this.store.list(conversationPrefix(conversation))
    const ids = new Set<string>()
    for (const key of keys) {
      const id = key.slice(conversationPrefix(conversation).length).split("/")[0]!
      if (isAttachmentId(id)) ids.add(id)
      else await this.store.delete(key)
    }
    for (const id of ids) await this.discard({ conversation, id })
    return ids.size
  }

  /**
   * Deletes uploads no message referenced within {@link UNREFERENCED_TTL_MS}
   * (finished or not), and attachments whose conversation is gone. Reads
   * every record: O(attachments) per sweep, which runs every few minutes.
   */
  async sweep(): Promise<number> {
    const cutoff = this.now() - UNREFERENCED_TTL_MS
    let deleted = 0
    for (const key of await this.store.list(RECORD_PREFIX)) {
      const record = await this.record(key.slice(RECORD_PREFIX.length))
      if (!record || record.message !== undefined || record.createdAt > cutoff) continue
      await this.discard(record)
      deleted++
    }
    return deleted
  }
}

/** Deletes an attachment from `store`: its bytes, thumbnail and record. */
async function discardAttachment(
  store: BlobStore,
  record: Pick<AttachmentRecord, "conversation" | "id">,
): Promise<void> {
  await store.delete(fileKey(record))
  await store.delete(cleanKey(record))
  await store.delete(thumbnailKey(record))
  await store.delete(recordKey(record.id))
}

/**
 * Deletes every upload `user` made, finished or not, carried by a message or
 * not: the files an erasure of the user (GDPR) owes. Their messages' own
 * deletion takes the attachments they carried only through the hook pipeline,
 * and an upload no message carried stayed downloadable by its conversation's
 * members until the 24-hour sweep (found by an outside probe). Reads every
 * record: O(attachments), as the sweep.
 */
export async function eraseUploads(store: BlobStore, user: UserId): Promise<number> {
  let deleted = 0
  for (const key of await store.list(RECORD_PREFIX)) {
    const bytes = await store.get(key)
    if (!bytes) continue
    const record = JSON.parse(Buffer.from(bytes).toString("utf8")) as AttachmentRecord
    if (record.uploader !== user) continue
    await discardAttachment(store, record)
    deleted++
  }
  return deleted
}
