import {
  type Attachment,
  assertAllowed,
  assertValid,
  canSendMessage,
  checkMessageRecord,
  ErrorCode,
  type MessageId,
  messageIndex,
  newMessageId,
  ParleyError,
  type Role,
  Rule,
  sendMessage,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"
import type { ConversationUploads, PendingUploadView } from "../attachments/conversation-uploads.js"
import type { OutboxEntry } from "../attachments/outbox-store.js"
import type { ConnectionStatus } from "../connection.js"
import type { Listener } from "../emitter.js"
import type { ConversationState } from "./loading.js"
import { LOCAL } from "./operations.js"
import type { StatusTracker } from "./statuses.js"
import type { ConversationEvents, EmitConversationEvent, SendOptions } from "./types.js"

/** What the conversation lends its messages with files. */
export interface MessageUploadsDeps {
  /** The client's queue for this conversation (absent: sending files is refused). */
  readonly uploads: ConversationUploads | undefined
  readonly user: UserId
  readonly clock: () => number
  readonly doc: () => Y.Doc
  readonly role: () => Role | undefined
  readonly state: () => ConversationState
  readonly connectionStatus: () => ConnectionStatus
  readonly closed: () => boolean
  readonly assertWritable: () => void
  readonly statuses: StatusTracker
  readonly emit: EmitConversationEvent
  readonly on: <K extends keyof ConversationEvents>(
    name: K,
    listener: Listener<ConversationEvents[K]>,
  ) => () => void
}

/**
 * The conversation's side of messages with files: checks a send as a write
 * would be checked, hands the files to the client's upload queue, writes the
 * message (under the id it got when sent) once its files are up, and turns
 * the queue's news into `upload` and `status` events.
 */
export class MessageUploads {
  constructor(private readonly deps: MessageUploadsDeps) {
    const uploads = deps.uploads
    if (!uploads) return
    uploads.attach({
      ready: () => !deps.closed() && deps.state().state === "ready",
      online: () => !deps.closed() && deps.connectionStatus() === "online",
      participant: () => deps.role() !== undefined,
      write: (entry, attachments) => this.write(entry, attachments),
      status: (id) => deps.statuses.status(id),
      changed: (event) => {
        deps.emit("upload", event)
        if (event.phase === "failed")
          deps.emit("status", {
            messageId: event.messageId,
            status: "failed",
            ...(event.error ? { error: event.error } : {}),
          })
      },
    })
    deps.on("status", () => uploads.settleWritten())
    // Deleted (while this device was offline, or now): the relay takes none of its messages, so what waits
    // to upload fails as the unsaved messages do (before: the upload was tried again for ever, the
    // message stayed pending and `flush()` timed out on every call, reloads included: an outside probe).
    const failIfDeleted = () => {
      const state = deps.state()
      if (state.state !== "ready" || state.conversation.deletedAt === undefined) return false
      uploads.failAll(
        new ParleyError(ErrorCode.FORBIDDEN, "the conversation is deleted", {
          rule: Rule.conversationDeleted,
        }),
      )
      return true
    }
    deps.on("change", () => void failIfDeleted())
    deps.on("state", ({ state }) => {
      if (state.state === "ready") {
        if (!failIfDeleted()) uploads.wake()
      }
      // As for unsaved messages: a refused token or a damaged conversation may come back; the rest will not.
      else if (
        state.state === "unavailable" &&
        state.reason !== ErrorCode.UNAUTHORIZED &&
        state.reason !== ErrorCode.DAMAGED &&
        state.reason !== ErrorCode.NOT_FOUND
      )
        uploads.failAll(state.error)
    })
  }

  /** Queues a message with files, after the checks its write will meet (so that none fails after uploading). */
  send(body: string, files: readonly Blob[], options: SendOptions): PendingUploadView {
    const uploads = this.queue()
    const { user } = this.deps
    this.deps.assertWritable()
    assertAllowed(canSendMessage(user, this.deps.role(), user))
    assertValid(checkMessageRecord, {
      id: newMessageId(),
      author: user,
      body,
      createdAt: this.deps.clock(),
      ...(options.type !== undefined && options.type !== "text" ? { type: options.type } : {}),
      ...(options.replyTo !== undefined ? { replyTo: options.replyTo } : {}),
      ...(options.attachments?.length ? { attachments: options.attachments } : {}),
      ...(options.metadata && Object.keys(options.metadata).length > 0 ? { metadata: options.metadata } : {}),
      ...(options.priority !== undefined && options.priority !== "normal"
        ? { priority: options.priority }
        : {}),
    })
    return uploads.add({ body, files, ...options })
  }

  /** See `Conversation.retry`. */
  retry(id: MessageId): void {
    this.queue().retry(id)
  }

  /** See `Conversation.discard`. */
  discard(id: MessageId): void {
    this.queue().discard(id)
  }

  /** A message waiting for its files, by id. */
  view(id: MessageId): PendingUploadView | undefined {
    return this.deps.uploads?.view(id)
  }

  /** The messages waiting for their files, oldest first; one another tab has written meanwhile is left to the replica. */
  waiting(): PendingUploadView[] {
    const pending = this.deps.uploads?.pending()
    if (!pending?.length) return []
    const index = messageIndex(this.deps.doc())
    return pending.filter((m) => !index.records.has(m.id))
  }

  /** The conversation is synced with the relay again: upload now. */
  online(): void {
    this.deps.uploads?.wake()
  }

  close(): void {
    this.deps.uploads?.close()
  }

  private queue(): ConversationUploads {
    const uploads = this.deps.uploads
    if (!uploads) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "this client cannot upload files")
    return uploads
  }

  /** Writes a message whose files are uploaded, under the id it got when sent (idempotent by that id). */
  private write(entry: OutboxEntry, attachments: readonly Attachment[]): void {
    this.deps.assertWritable()
    sendMessage(
      this.deps.doc(),
      this.deps.user,
      {
        id: entry.messageId,
        body: entry.body,
        attachments,
        ...(entry.type !== undefined ? { type: entry.type } : {}),
        ...(entry.replyTo !== undefined ? { replyTo: entry.replyTo } : {}),
        ...(entry.metadata !== undefined ? { metadata: entry.metadata } : {}),
        ...(entry.priority !== undefined ? { priority: entry.priority } : {}),
      },
      // The time the user sent it (as for any message written offline), not when its files were up.
      { origin: LOCAL, now: entry.createdAt },
    )
    this.deps.statuses.track(entry.messageId)
  }
}
