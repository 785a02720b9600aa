import type {
  Attachment,
  ChangeEvent,
  ConversationId,
  ConversationInfo,
  MessageId,
  MessageView,
  Metadata,
  ParleyError,
  PendingChange,
  Priority,
  UserId,
} from "@parley/shared"
import type { Awareness } from "y-protocols/awareness"
import type * as Y from "yjs"
import type { ConversationUploads, UploadEvent, UploadState } from "../attachments/conversation-uploads.js"
import type { DocumentConnection } from "../connection.js"
import type { SegmentCache } from "../history-cache.js"
import type { MessageStatus } from "../message-status.js"
import type { PresenceSettings, UserPresence } from "../presence.js"
import type { LocalReplica } from "../storage.js"
import type { ConversationState } from "./loading.js"

/** A message as the app shows it: with its status when the user sent it. */
export interface ChatMessage extends MessageView {
  /** Status of the user's own messages; absent on others' messages. */
  readonly status?: MessageStatus
  /** Why the relay refused it, when `status` is `failed`. */
  readonly error?: ParleyError
  /** Present while the message waits for its files to upload (or failed to): the local files and progress. */
  readonly upload?: UploadState
}

/** Options of `Conversation.send`. */
export interface SendOptions {
  readonly attachments?: readonly Attachment[]
  readonly metadata?: Metadata
  readonly replyTo?: MessageId
  readonly priority?: Priority
  /** App-defined message type (default "text"). */
  readonly type?: string
}

/** What `Conversation.send` takes: the body, and files to upload (File or Blob objects). */
export interface SendInput extends SendOptions {
  readonly body: string
  /**
   * Files to upload through the relay before the message is written (kept on
   * this device meanwhile, so this works offline and across reloads). Links
   * and object references go in `attachments`: they need no upload.
   */
  readonly files?: readonly Blob[]
}

/** Events of a `Conversation`, one payload object each. */
export interface ConversationEvents {
  /** The conversation's state (or, when ready, its fields) changed. */
  state: { state: ConversationState }
  /** Something changed in the conversation; `local` when this client did it. */
  change: { events: readonly ChangeEvent[]; local: boolean }
  /** The status of one of the user's messages changed. */
  status: { messageId: MessageId; status: MessageStatus; error?: ParleyError }
  /** The number of unread messages changed. */
  unread: { count: number }
  /** The files of one of the user's messages moved: queued, uploading (bytes `loaded` of `total`), failed, written or discarded. */
  upload: UploadEvent
  /** The pinned messages changed (a sticky message sent, unpinned, edited or deleted). */
  pinned: { messages: readonly ChatMessage[] }
  /** Fleeting messages whose time is up: hidden from {@link Conversation.messages} from now on. */
  expired: { messageIds: readonly MessageId[] }
  /**
   * Sealed history this device holds changed without a change to the conversation: a segment or
   * directory page fetched (by `loadOlder`, for the unread count, or in the background: one sealed
   * inside the window `loadOlder` has shown since). `olderMessages()` and `hasOlder` may differ.
   */
  history: { hasOlder: boolean }
  /** The set of other users typing changed. */
  typing: { users: readonly UserId[] }
  /** Someone's presence in this conversation changed (online, away, offline). */
  presence: { presence: readonly UserPresence[] }
  /** The relay refused something this client sent; `change` names the pending work a resync could not re-apply. */
  error: { error: ParleyError; change?: PendingChange }
  /** After a refusal, the replica was rebuilt from the relay's state plus the pending work the rules allow. */
  resynced: {
    reapplied: readonly PendingChange[]
    failed: readonly { readonly what: PendingChange; readonly error: ParleyError }[]
  }
}

/** Emits one of a conversation's events (the facade's `emit`, handed to its parts). */
export type EmitConversationEvent = <K extends keyof ConversationEvents>(
  event: K,
  payload: ConversationEvents[K],
) => void

/** What the client hands a `Conversation`; internal. */
export interface ConversationParts {
  readonly id: ConversationId
  readonly user: UserId
  /**
   * Opens the local persistence of a document of this conversation;
   * `onReplaced`: another tab replaced what is stored (see `persistDocument`).
   */
  readonly openReplica: (doc: Y.Doc, onReplaced: () => void) => LocalReplica
  /** A connection to the relay for `doc`, sharing with the user's other tabs or not. */
  readonly connect: (doc: Y.Doc, awareness: Awareness, shareWithTabs: boolean) => DocumentConnection
  readonly deliveredDelay: number
  readonly clock: () => number
  readonly online: () => boolean
  readonly onStatus: () => void
  readonly onReady: (info: ConversationInfo) => void
  readonly onClose: () => void
  /** Told when the replica lost content to a deletion (see `removesContent`): copies elsewhere go too. */
  readonly onPurged?: () => void
  /** Told as `close()` starts: the handle is no longer one to hand out. */
  readonly onClosing?: () => void
  /** Fills `doc` with the relay's current state (a connection that shares nothing with other tabs). */
  readonly fetchRelayState: (
    doc: Y.Doc,
    signal: AbortSignal,
    prepare?: (connection: DocumentConnection) => Promise<void>,
  ) => Promise<void>
  /** This device's copy of the sealed history segments it fetched. */
  readonly segments: SegmentCache
  /** The user's own presence settings (shared by all their conversations). */
  readonly presence: PresenceSettings
  /** The user's messages of this conversation waiting for file uploads (absent: sending files is refused). */
  readonly uploads?: ConversationUploads
  /**
   * Whether the replica outlives the handle (IndexedDB: what is unsaved is
   * sent by the next handle) or not (memory: `close()` waits for it, then
   * reports what was lost). Default true.
   */
  readonly keepsLocalData?: boolean
  /** How long `close()` waits for unsaved work by default when the replica does not outlive it (ms). */
  readonly closeWaitMs?: number
}
