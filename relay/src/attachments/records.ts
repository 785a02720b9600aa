import type { ConversationId, FileAttachment, MessageId, UserId } from "@parley/shared"

/**
 * What the relay keeps about one upload and, once it completes, the
 * attachment: JSON in the blob store at {@link recordKey}, beside the bytes,
 * so that it lives (and is shared by a cluster) wherever they do. An upload
 * session is this record while `complete` is false: it survives a restart.
 */
export interface AttachmentRecord {
  readonly id: string
  readonly conversation: ConversationId
  readonly uploader: UserId
  readonly name: string
  /** Declared at creation; the upload completes when this many bytes are stored. */
  readonly size: number
  /** What the client claimed; kept for the log, never served. */
  readonly declaredType?: string
  readonly createdAt: number
  readonly complete: boolean
  /** Sniffed from the bytes at completion. */
  readonly mimeType?: string
  readonly width?: number
  readonly height?: number
  readonly thumbnail?: { readonly width: number; readonly height: number }
  /** The first message that referenced it: deleting that message deletes the attachment. */
  readonly message?: MessageId
  /**
   * The image was stored again without its metadata ({@link cleanKey}; `size`
   * is then that file's): what is served. The upload's own bytes are deleted.
   */
  readonly clean?: boolean
}

/** Keys of the store: one record per attachment, its bytes under its conversation, and message references. */
const conversationSegment = (conversation: string) => Buffer.from(conversation).toString("base64url")

/** Where the record of attachment `id` is. */
export const recordKey = (id: string) => `att/${id}`
/** Prefix of every record: the expiry sweep lists it. */
export const RECORD_PREFIX = "att/"
/** Prefix of everything stored under conversation `conversation` (its attachments' bytes, its references). */
export const conversationPrefix = (conversation: string) => `conv/${conversationSegment(conversation)}/`
/** The bytes of an attachment. */
export const fileKey = (record: Pick<AttachmentRecord, "conversation" | "id">) =>
  `${conversationPrefix(record.conversation)}${record.id}/file`
/** An image's bytes without their metadata (EXIF, XMP, IPTC, comments), when it had any. */
export const cleanKey = (record: Pick<AttachmentRecord, "conversation" | "id">) =>
  `${conversationPrefix(record.conversation)}${record.id}/clean`
/** The bytes a download serves: the clean copy when there is one. */
export const servedKey = (record: Pick<AttachmentRecord, "conversation" | "id" | "clean">) =>
  record.clean ? cleanKey(record) : fileKey(record)
/** The thumbnail of an image attachment. */
export const thumbnailKey = (record: Pick<AttachmentRecord, "conversation" | "id">) =>
  `${conversationPrefix(record.conversation)}${record.id}/thumb`
/** The attachment ids message `message` referenced (JSON array), for its deletion. */
export const referenceKey = (conversation: string, message: string) =>
  `${conversationPrefix(conversation)}msg/${message}`

/** The attachment a message carries, as the contract gives it back on completion. */
export function attachmentOf(record: AttachmentRecord): FileAttachment {
  const url = `/v1/attachments/${record.id}`
  return {
    kind: "file",
    id: record.id,
    url,
    name: record.name,
    ...(record.mimeType ? { mimeType: record.mimeType } : {}),
    size: record.size,
    ...(record.width !== undefined && record.height !== undefined
      ? { width: record.width, height: record.height }
      : {}),
    ...(record.thumbnail
      ? {
          thumbnail: {
            url: `${url}/thumbnail`,
            width: record.thumbnail.width,
            height: record.thumbnail.height,
          },
        }
      : {}),
  }
}
