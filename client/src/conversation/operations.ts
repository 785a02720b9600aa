import {
  addParticipants,
  changeRole,
  deleteConversation,
  deleteMessage,
  editMessage,
  leaveConversation,
  type MarkerTarget,
  type MessageId,
  type MessageView,
  type Metadata,
  markRead,
  parseMessageId,
  parseUserId,
  type Role,
  react,
  removeParticipants,
  renameConversation,
  sendMessage,
  setConversationMetadata,
  type UserId,
  unreact,
} from "@parley/shared"
import type * as Y from "yjs"
import type { SendOptions } from "./types.js"

/** Transaction origin of this client's own writes (internal to the SDK). */
export const LOCAL: unique symbol = Symbol("parley-local")

/**
 * The user's writes to a conversation: each checks that the conversation can
 * be written (open, loaded, available), then applies the shared operation
 * (which enforces the rules) to the current replica, as a local change.
 */
export class ConversationOperations {
  constructor(
    /** The current replica (a resync replaces it). */
    private readonly doc: () => Y.Doc,
    private readonly user: UserId,
    /** Throws when the conversation cannot be written now. */
    private readonly assertWritable: () => void,
  ) {}

  /** Runs `operation` on the current replica if it can be written. */
  write<T>(operation: (doc: Y.Doc, user: UserId, origin: typeof LOCAL) => T): T {
    this.assertWritable()
    return operation(this.doc(), this.user, LOCAL)
  }

  rename(title: string): void {
    this.write((doc, user, origin) => renameConversation(doc, user, title, { origin }))
  }

  setMetadata(metadata: Metadata): void {
    this.write((doc, user, origin) => setConversationMetadata(doc, user, metadata, { origin }))
  }

  addParticipants(users: readonly string[], role: Role): UserId[] {
    return this.write((doc, user, origin) =>
      addParticipants(doc, user, users.map(parseUserId), role, { origin }),
    )
  }

  removeParticipants(users: readonly string[]): UserId[] {
    return this.write((doc, user, origin) =>
      removeParticipants(doc, user, users.map(parseUserId), { origin }),
    )
  }

  changeRole(target: string, role: Role): void {
    this.write((doc, user, origin) => changeRole(doc, user, parseUserId(target), role, { origin }))
  }

  leave(): void {
    this.write((doc, user, origin) => leaveConversation(doc, user, { origin }))
  }

  delete(): void {
    this.write((doc, user, origin) => deleteConversation(doc, user, { origin }))
  }

  send(body: string, options: SendOptions): MessageView {
    return this.write((doc, user, origin) => sendMessage(doc, user, { body, ...options }, { origin }))
  }

  edit(id: MessageId | string, body: string): void {
    this.write((doc, user, origin) => editMessage(doc, user, parseMessageId(id), body, { origin }))
  }

  deleteMessage(id: MessageId | string): void {
    this.write((doc, user, origin) => deleteMessage(doc, user, parseMessageId(id), { origin }))
  }

  react(id: MessageId | string, emoji: string): void {
    this.write((doc, user, origin) => react(doc, user, parseMessageId(id), emoji, { origin }))
  }

  unreact(id: MessageId | string, emoji: string): void {
    this.write((doc, user, origin) => unreact(doc, user, parseMessageId(id), emoji, { origin }))
  }

  markRead(target: MarkerTarget | string): boolean {
    return this.write((doc, user, origin) => markRead(doc, user, target as MarkerTarget, { origin }))
  }
}
