import {
  type Attachment,
  addParticipants,
  allMarkers,
  type ChangeEvent,
  type ConversationId,
  type ConversationInfo,
  changeRole,
  deleteConversation,
  deleteMessage,
  ErrorCode,
  editMessage,
  getConversation,
  getMessage,
  leaveConversation,
  listMessages,
  listParticipants,
  type Markers,
  type MarkerTarget,
  type MessageId,
  type MessageView,
  type MessageWindow,
  type Metadata,
  markDelivered,
  markersOf,
  markRead,
  messageIndex,
  observeChanges,
  ParleyError,
  type Participant,
  type Priority,
  parseMessageId,
  parseUserId,
  type Role,
  react,
  removeParticipants,
  renameConversation,
  roleOf,
  sendMessage,
  setConversationMetadata,
  type UserId,
  unreact,
  unreadCount,
} from "@parley/shared"
import { Awareness } from "y-protocols/awareness"
import type * as Y from "yjs"
import type { DocumentConnection } from "./connection.js"
import { Emitter } from "./emitter.js"
import { type MessageStatus, MessageStatuses } from "./message-status.js"
import type { LocalReplica } from "./storage.js"
import { TypingIndicator } from "./typing.js"

/** Where an open conversation stands. */
export type ConversationState =
  | { readonly state: "loading" }
  | { readonly state: "ready"; readonly conversation: ConversationInfo }
  | { readonly state: "unavailable"; readonly reason: ErrorCode; readonly error: ParleyError }

/** A message as the app shows it: with its status when the user sent it. */
export interface ChatMessage extends MessageView {
  /** Status of the user's own messages; absent on others' messages. */
  readonly status?: MessageStatus
  /** Why the relay refused it, when `status` is `failed`. */
  readonly error?: ParleyError
}

/** Options of {@link Conversation.send}. */
export interface SendOptions {
  readonly attachments?: readonly Attachment[]
  readonly metadata?: Metadata
  readonly replyTo?: MessageId
  readonly priority?: Priority
  /** App-defined message type (default "text"). */
  readonly type?: string
}

/** Events of a {@link Conversation}, one payload object each. */
export interface ConversationEvents {
  /** The conversation's state (or, when ready, its fields) changed. */
  state: { state: ConversationState }
  /** Something changed in the conversation; `local` when this client did it. */
  change: { events: readonly ChangeEvent[]; local: boolean }
  /** The status of one of the user's messages changed. */
  status: { messageId: MessageId; status: MessageStatus; error?: ParleyError }
  /** The number of unread messages changed. */
  unread: { count: number }
  /** The set of other users typing changed. */
  typing: { users: readonly UserId[] }
  /** The relay refused something this client sent. */
  error: { error: ParleyError }
}

/** What the client hands a {@link Conversation}; internal. */
export interface ConversationParts {
  readonly id: ConversationId
  readonly user: UserId
  readonly doc: Y.Doc
  readonly replica: LocalReplica
  readonly connect: (doc: Y.Doc, awareness: Awareness) => DocumentConnection
  readonly deliveredDelay: number
  readonly clock: () => number
  readonly online: () => boolean
  readonly onStatus: () => void
  readonly onReady: (info: ConversationInfo) => void
  readonly onClose: () => void
}

/** Transaction origin of this client's own writes (internal to the SDK). */
export const LOCAL: unique symbol = Symbol("parley-local")

/**
 * One conversation open on this device: a local replica (read and written
 * offline) kept in sync with the relay. Reads return plain objects; writes go
 * to the replica at once and reach the relay when there is a connection. Get
 * one from `ChatClient.conversation(id)`.
 */
export class Conversation extends Emitter<ConversationEvents> {
  /** The conversation id (also the name of its document on the relay). */
  readonly id: ConversationId
  /** The conversation's Yjs document, for those who want it; nothing ordinary requires it. */
  readonly doc: Y.Doc
  /** The Yjs awareness of the conversation (presence, typing). */
  readonly awareness: Awareness
  /** The connection to the relay. */
  readonly connection: DocumentConnection
  private readonly user: UserId
  private current: ConversationState = { state: "loading" }
  private readonly statuses: MessageStatuses
  private readonly tracked = new Map<MessageId, MessageStatus>()
  private readonly typingIndicator: TypingIndicator
  private unread = -1
  private deliveredTimer: ReturnType<typeof setTimeout> | undefined
  private readonly unobserve: () => void
  private readonly readyPromise: Promise<this>
  private closed = false
  /** @internal Set while the client is about to create this conversation: "not found" is expected then. */
  creating = false
  /** @internal Resolves once the local replica is loaded and the state settled from it. */
  readonly whenLoaded: Promise<void>

  constructor(private readonly parts: ConversationParts) {
    super()
    this.id = parts.id
    this.user = parts.user
    this.doc = parts.doc
    this.awareness = new Awareness(this.doc)
    this.statuses = new MessageStatuses(this.doc, this.user)
    this.typingIndicator = new TypingIndicator(
      this.awareness,
      this.user,
      (users) => this.emit("typing", { users }),
      parts.clock,
    )
    this.connection = parts.connect(this.doc, this.awareness)
    this.connection.on("status", () => {
      this.settle()
      parts.onStatus()
    })
    this.connection.on("saved", ({ stateVector }) => {
      this.statuses.acknowledge(stateVector)
      this.refreshStatuses()
    })
    this.connection.on("refused", ({ error }) => this.refused(error))
    this.connection.on("unavailable", ({ error }) => {
      // The relay will not take this conversation's changes any more: what it has not saved never will be.
      for (const id of this.statuses.refuseUnsaved(error)) this.track(id)
      this.setState({ state: "unavailable", reason: error.code, error })
      this.refreshStatuses()
    })
    this.unobserve = observeChanges(this.doc, (events, transaction) => this.changed(events, transaction))
    this.readyPromise = new Promise<this>((resolve, reject) => {
      const off = this.on("state", ({ state }) => {
        if (state.state === "ready") resolve(this)
        else if (state.state === "unavailable") reject(state.error)
        else return
        off()
      })
    })
    // Callers who never await ready() must not see an unhandled rejection.
    this.readyPromise.catch(() => {})
    this.whenLoaded = parts.replica.loaded.then(() => {
      if (this.closed) return
      this.trackOwnMessages()
      this.settle()
      if (parts.online()) this.connection.start()
    })
  }

  /** Where the conversation stands: loading, ready, or unavailable with a reason. */
  get state(): ConversationState {
    return this.current
  }

  /** Resolves once ready (loaded locally or from the relay); rejects with the reason when unavailable. */
  ready(): Promise<this> {
    if (this.current.state === "ready") return Promise.resolve(this)
    if (this.current.state === "unavailable") return Promise.reject(this.current.error)
    return this.readyPromise
  }

  /** The conversation's fields, once it is loaded. */
  get info(): ConversationInfo | undefined {
    return getConversation(this.doc)
  }

  /** Participants with their roles. */
  get participants(): Participant[] {
    return listParticipants(this.doc)
  }

  /** The user's role here, or undefined when not a participant. */
  get role(): Role | undefined {
    return roleOf(this.doc, this.user)
  }

  // ---- conversation operations ----

  /** Sets the title (owners and admins). */
  rename(title: string): void {
    this.write(() => renameConversation(this.doc, this.user, title, { origin: LOCAL }))
  }

  /** Replaces the conversation's metadata (owners and admins). */
  setMetadata(metadata: Metadata): void {
    this.write(() => setConversationMetadata(this.doc, this.user, metadata, { origin: LOCAL }))
  }

  /** Adds users with `role` (default member); returns those actually added. */
  addParticipants(users: readonly string[], role: Role = "member"): UserId[] {
    return this.write(() =>
      addParticipants(this.doc, this.user, users.map(parseUserId), role, { origin: LOCAL }),
    )
  }

  /** Removes users (owners and admins); returns those actually removed. */
  removeParticipants(users: readonly string[]): UserId[] {
    return this.write(() =>
      removeParticipants(this.doc, this.user, users.map(parseUserId), { origin: LOCAL }),
    )
  }

  /** Changes a participant's role. */
  changeRole(user: string, role: Role): void {
    this.write(() => changeRole(this.doc, this.user, parseUserId(user), role, { origin: LOCAL }))
  }

  /** The user leaves the conversation. */
  leave(): void {
    this.write(() => leaveConversation(this.doc, this.user, { origin: LOCAL }))
  }

  /** Marks the conversation deleted (owners and admins). */
  delete(): void {
    this.write(() => deleteConversation(this.doc, this.user, { origin: LOCAL }))
  }

  // ---- messages ----

  /**
   * Sends a message. It is written to the local replica at once (status
   * `pending`) and returned with its id; it reaches the relay when online.
   */
  send(body: string, options: SendOptions = {}): ChatMessage {
    const view = this.write(() => sendMessage(this.doc, this.user, { body, ...options }, { origin: LOCAL }))
    this.typingIndicator.stop()
    this.track(view.id)
    return this.decorate(view)
  }

  /** Replaces the body of one of the user's messages. */
  edit(id: MessageId | string, body: string): void {
    this.write(() => editMessage(this.doc, this.user, parseMessageId(id), body, { origin: LOCAL }))
  }

  /** Deletes a message (its author, owners and admins); its content is really gone. */
  deleteMessage(id: MessageId | string): void {
    this.write(() => deleteMessage(this.doc, this.user, parseMessageId(id), { origin: LOCAL }))
  }

  /** Adds the user's reaction. */
  react(id: MessageId | string, emoji: string): void {
    this.write(() => react(this.doc, this.user, parseMessageId(id), emoji, { origin: LOCAL }))
  }

  /** Removes the user's reaction. */
  unreact(id: MessageId | string, emoji: string): void {
    this.write(() => unreact(this.doc, this.user, parseMessageId(id), emoji, { origin: LOCAL }))
  }

  /** One message, or undefined when this replica does not have it. */
  message(id: MessageId | string): ChatMessage | undefined {
    const view = getMessage(this.doc, parseMessageId(id))
    return view && this.decorate(view)
  }

  /** A window of messages in canonical order: `{ last: n }`, or `before` / `after` / `around` an id. */
  messages(window: MessageWindow = { last: 50 }): ChatMessage[] {
    return listMessages(this.doc, window).map((view) => this.decorate(view))
  }

  /**
   * Calls `listener` with the window now and after every change that affects
   * it (new, edited, deleted messages, reactions, order, statuses). Returns the
   * unsubscribe function.
   */
  watchMessages(window: MessageWindow, listener: (messages: ChatMessage[]) => void): () => void {
    let last = ""
    const push = () => {
      const messages = this.messages(window)
      const key = JSON.stringify(messages)
      if (key === last) return
      last = key
      listener(messages)
    }
    push()
    const offChange = this.on("change", push)
    const offStatus = this.on("status", push)
    return () => {
      offChange()
      offStatus()
    }
  }

  /** The status of one of the user's messages (undefined for others' messages). */
  status(id: MessageId | string): MessageStatus | undefined {
    return this.statuses.status(parseMessageId(id))
  }

  // ---- read state ----

  /** Messages others wrote that the user has not read. */
  get unreadCount(): number {
    return unreadCount(this.doc, this.user)
  }

  /** Moves the user's read marker to `target`: a message id, a sequence number, or "latest" (default). */
  markRead(target: MarkerTarget | string = "latest"): boolean {
    return this.write(() => markRead(this.doc, this.user, target as MarkerTarget, { origin: LOCAL }))
  }

  /** Every user's read and delivered markers (sequence numbers). */
  get markers(): Record<UserId, Markers> {
    return allMarkers(this.doc)
  }

  // ---- typing ----

  /** Signals that the user is typing; throttled, so call it on every keystroke. */
  typing(): void {
    this.typingIndicator.typing()
  }

  /** Clears the user's typing signal (sending a message does it too). */
  stopTyping(): void {
    this.typingIndicator.stop()
  }

  /** Other users typing now; entries expire on their own. */
  get typingUsers(): readonly UserId[] {
    return this.typingIndicator.typingUsers
  }

  /** Closes this handle: the socket, timers and local database. Local data stays. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.deliveredTimer)
    this.unobserve()
    this.typingIndicator.destroy()
    this.connection.destroy()
    this.awareness.destroy()
    await this.parts.replica.destroy()
    this.doc.destroy()
    this.removeAllListeners()
    this.parts.onClose()
  }

  // ---- internals ----

  private write<T>(operation: () => T): T {
    if (this.closed) throw new ParleyError(ErrorCode.UNAVAILABLE, "this conversation handle is closed")
    if (this.current.state === "unavailable") throw this.current.error
    if (this.current.state === "loading")
      throw new ParleyError(ErrorCode.UNAVAILABLE, "the conversation is still loading; await ready() first")
    return operation()
  }

  private decorate(view: MessageView): ChatMessage {
    const status = this.statuses.status(view.id)
    if (status === undefined) return view
    const error = status === "failed" ? this.statuses.failure(view.id) : undefined
    return { ...view, status, ...(error ? { error } : {}) }
  }

  private setState(state: ConversationState): void {
    if (this.closed || !this.canLeaveState()) return
    this.current = state
    if (state.state === "ready") this.parts.onReady(state.conversation)
    this.emit("state", { state })
  }

  /** Unavailable is final, except "not found": the conversation may still be created (or arrive) later. */
  private canLeaveState(): boolean {
    return this.current.state !== "unavailable" || this.current.reason === ErrorCode.NOT_FOUND
  }

  /** Decides loading / ready / unavailable from what the replica holds and what the relay said. */
  private settle(): void {
    if (!this.canLeaveState()) return
    const info = getConversation(this.doc)
    if (info) {
      const current = this.current
      const wasReady = current.state === "ready"
      if (wasReady && JSON.stringify(current.conversation) === JSON.stringify(info)) return
      this.setState({ state: "ready", conversation: info })
      if (!wasReady) this.scheduleDelivered()
    } else if (this.connection.synced && this.current.state === "loading" && !this.creating) {
      const error = new ParleyError(ErrorCode.NOT_FOUND, `no conversation ${this.id}`)
      this.setState({ state: "unavailable", reason: error.code, error })
    }
  }

  private changed(events: ChangeEvent[], transaction: Y.Transaction): void {
    if (this.closed) return
    const local = transaction.origin === LOCAL
    for (const event of events) {
      if (event.type === "message.sent" && event.message.author === this.user) this.track(event.message.id)
    }
    if (
      events.some(
        (e) =>
          e.type === "conversation.created" ||
          e.type === "conversation.updated" ||
          e.type === "conversation.deleted",
      )
    )
      this.settle()
    this.emit("change", { events, local })
    this.refreshStatuses()
    const unread = this.unreadCount
    if (unread !== this.unread) {
      this.unread = unread
      this.emit("unread", { count: unread })
    }
    if (!local) this.scheduleDelivered()
  }

  private refused(error: ParleyError): void {
    for (const id of this.statuses.refuseUnsaved(error)) this.track(id)
    this.emit("error", { error })
    this.refreshStatuses()
  }

  private trackOwnMessages(): void {
    const index = messageIndex(this.doc)
    for (const [id, record] of index.records) if (record.author === this.user) this.track(id)
  }

  private track(id: MessageId): void {
    const status = this.statuses.status(id)
    if (status === undefined || status === "read") {
      this.tracked.delete(id)
      return
    }
    if (!this.tracked.has(id)) this.tracked.set(id, status)
  }

  /** Emits a status event for each of the user's messages whose status moved; forgets read ones. */
  private refreshStatuses(): void {
    for (const [id, before] of this.tracked) {
      const status = this.statuses.status(id)
      if (status === before) continue
      if (status === undefined || status === "read") this.tracked.delete(id)
      else this.tracked.set(id, status)
      if (status === undefined) continue
      const error = status === "failed" ? this.statuses.failure(id) : undefined
      this.emit("status", { messageId: id, status, ...(error ? { error } : {}) })
    }
  }

  /** Advances the delivered marker a little after messages from others arrive, batching bursts. */
  private scheduleDelivered(): void {
    if (this.deliveredTimer !== undefined || this.closed) return
    this.deliveredTimer = setTimeout(() => {
      this.deliveredTimer = undefined
      this.advanceDelivered()
    }, this.parts.deliveredDelay)
  }

  private advanceDelivered(): void {
    if (this.closed || this.current.state !== "ready" || roleOf(this.doc, this.user) === undefined) return
    const index = messageIndex(this.doc)
    const delivered = markersOf(this.doc, this.user).delivered
    const fromOthers = index
      .sequencedAfter(delivered)
      .some((id) => (index.records.get(id) ?? index.deleted.get(id))?.author !== this.user)
    if (!fromOthers) return
    try {
      markDelivered(this.doc, this.user, "latest", { origin: LOCAL })
    } catch (error) {
      this.emit("error", { error: error as ParleyError })
    }
  }
}
