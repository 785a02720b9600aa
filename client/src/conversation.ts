import {
  allMarkers,
  type ChangeEvent,
  type ConversationId,
  type ConversationInfo,
  ErrorCode,
  getConversation,
  getMessage,
  isRetryable,
  listMessages,
  listParticipants,
  type Markers,
  type MarkerTarget,
  type MessageId,
  type MessageView,
  type MessageWindow,
  type Metadata,
  ParleyError,
  type Participant,
  parseMessageId,
  type RefusedWork,
  type Role,
  Rule,
  roleOf,
  setFleetingSeconds,
  toParleyError,
  type UserId,
  UserLimit,
  unpinMessage,
  unreadCount,
  unreadEmergency,
} from "@parley/shared"
import type { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import type { ConversationUploads } from "./attachments/conversation-uploads.js"
import type { DocumentConnection } from "./connection.js"
import { DeliveredMarker } from "./conversation/delivered.js"
import { bindGeneration, type Generation } from "./conversation/generation.js"
import { SealedHistory } from "./conversation/history.js"
import { type ConversationState, LoadingState } from "./conversation/loading.js"
import { ConversationOperations, LOCAL } from "./conversation/operations.js"
import { Resync } from "./conversation/resync.js"
import { StatusTracker } from "./conversation/statuses.js"
import type {
  ChatMessage,
  ConversationEvents,
  ConversationParts,
  SendInput,
  SendOptions,
} from "./conversation/types.js"
import { unsavedChanges } from "./conversation/unsaved.js"
import { MessageUploads } from "./conversation/uploads.js"
import { Emitter } from "./emitter.js"
import { removesContent } from "./local-purge.js"
import type { MessageStatus } from "./message-status.js"
import type { UserPresence } from "./presence.js"
import { PriorityView } from "./priorities.js"
import type { LocalReplica } from "./storage.js"
import { type UnsavedWork, unsavedError, waitUntilSaved } from "./unsaved.js"

export type { ConversationState } from "./conversation/loading.js"
export { LOCAL } from "./conversation/operations.js"
export type {
  ChatMessage,
  ConversationEvents,
  ConversationParts,
  SendInput,
  SendOptions,
} from "./conversation/types.js"

const isMarker = (e: ChangeEvent): e is Extract<ChangeEvent, { user: UserId; upTo: number }> =>
  e.type === "messages.read" || e.type === "messages.delivered"

/** Whether `event` can change `user`'s unread count. */
const countsForUnread = (event: ChangeEvent, user: UserId): boolean =>
  event.type === "message.deleted" ||
  event.type === "messages.sequenced" ||
  (event.type === "message.sent" && event.message.author !== user) ||
  (event.type === "messages.read" && event.user === user)

/** Per-user limits of the relay that refill over a day (see `Conversation.limited`). */
// `client-id-growth` is the relay's cost rule (relay `CostRule.clientIdGrowth`), not a `UserLimit`.
const DAILY_LIMITS: ReadonlySet<string> = new Set(["client-id-growth", UserLimit.updateBytesPerDay])
/** How long another per-user limit, or the relay's storage, may hold a conversation's work before it is told (see `Conversation.limited`). */
const LIMIT_TOLD_AFTER_MS = 30_000

/**
 * One conversation open on this device: a local replica (read and written
 * offline) kept in sync with the relay. Reads return plain objects; writes go
 * to the replica at once and reach the relay when there is a connection. Get
 * one from `ChatClient.conversation(id)`.
 *
 * A facade over parts with one job each (in `conversation/`): the replica's
 * current generation (document, connection, awareness), the loading state
 * machine, the user's writes, message statuses, the delivered marker, the
 * sealed history, and resync after a refusal.
 */
export class Conversation extends Emitter<ConversationEvents> {
  /** The conversation id (also the name of its document on the relay). */
  readonly id: ConversationId
  private readonly user: UserId
  private gen: Generation
  private readonly loading: LoadingState
  private readonly operations: ConversationOperations
  private readonly statuses: StatusTracker
  private readonly delivered: DeliveredMarker
  private readonly history: SealedHistory
  private readonly resyncs: Resync
  private readonly uploads: MessageUploads
  /** Pinned messages and fleeting expiry (client/src/priorities.ts). */
  private readonly priorities: PriorityView
  private readonly readyPromise: Promise<this>
  private unread = -1
  private closed = false
  /**
   * The per-user limits refusing this conversation's work since the relay last saved any, with when
   * each first did and whether it was told as an `error` event (see {@link limited}).
   */
  private readonly limits = new Map<string, { readonly since: number; told: boolean }>()
  private closing: Promise<UnsavedWork | undefined> | undefined
  /** Waits of {@link flush} in progress, ended by {@link close}. */
  private readonly flushes = new Set<() => void>()
  /** @internal Set while the client is about to create this conversation: "not found" is expected then. */
  creating = false
  /** @internal Resolves once the local replica is loaded and the state settled from it. */
  readonly whenLoaded: Promise<void>

  constructor(private readonly parts: ConversationParts) {
    super()
    this.id = parts.id
    this.user = parts.user
    this.priorities = new PriorityView(
      parts.clock,
      () => this.emit("pinned", { messages: this.pinned() }),
      (messageIds) => this.emit("expired", { messageIds }),
    )
    const emit = this.emit.bind(this) as Conversation["emit"]
    this.loading = new LoadingState(
      parts.id,
      () => this.connection.status === "online",
      (state, previous) => {
        if (state.state === "ready") {
          this.parts.onReady(state.conversation)
          if (previous.state !== "ready") this.delivered.schedule()
        }
        this.emit("state", { state })
      },
    )
    // Ready once the local replica is loaded too, when the connection has been started: a replica
    // can show the conversation before (its stored updates apply), and a history page asked for at
    // once would be refused as if the device were offline.
    this.readyPromise = this.loading.whenReady
      .then(() => this.whenLoaded.catch(() => undefined))
      .then(() => this)
    // Callers who never await ready() must not see an unhandled rejection.
    this.readyPromise.catch(() => {})
    this.operations = new ConversationOperations(
      () => this.doc,
      this.user,
      () => this.loading.assertWritable(),
    )
    this.statuses = new StatusTracker(
      () => this.gen.statuses,
      emit,
      (id) => getMessage(this.doc, id),
      parts.uploads,
    )
    this.delivered = new DeliveredMarker(
      parts.deliveredDelay,
      () => this.doc,
      this.user,
      () => this.loading.state.state === "ready",
      (error) => this.emit("error", { error }),
    )
    this.history = new SealedHistory({
      user: this.user,
      segments: parts.segments,
      doc: () => this.doc,
      connection: () => this.connection,
      held: () => {
        this.refreshUnread()
        this.emit("history", { hasOlder: this.history.hasOlder })
      },
    })
    this.resyncs = new Resync({
      user: this.user,
      parts,
      statuses: this.statuses,
      history: this.history,
      emit,
      closed: () => this.closed,
      current: () => this.gen,
      replace: (doc, replica) => {
        this.gen = this.bind(doc, replica)
        return this.gen
      },
      openReplica: (doc) => this.openReplica(doc),
      settle: () => this.settle(),
      taken: (error) => this.loading.apply({ type: "taken", error }),
      readmitted: () => this.loading.apply({ type: "readmitted", info: getConversation(this.doc) }),
      refreshUnread: () => this.refreshUnread(),
    })
    // Before the first generation binds: its connection's status reaches the uploads.
    this.uploads = new MessageUploads({
      uploads: parts.uploads,
      user: this.user,
      clock: parts.clock,
      doc: () => this.doc,
      role: () => this.role,
      state: () => this.state,
      connectionStatus: () => this.connection.status,
      closed: () => this.closed,
      assertWritable: () => this.loading.assertWritable(),
      statuses: this.statuses,
      emit,
      on: (name, listener) => this.on(name, listener),
    })
    const doc = new Y.Doc()
    this.gen = this.bind(doc, this.openReplica(doc))
    const first = this.gen
    // Before connecting: some may still be in the replica, and must not go out (see `holdRefused`).
    const kept = parts.uploads?.storedRefusals().catch(() => []) ?? Promise.resolve([])
    const work = parts.uploads?.storedRefusedWork().catch(() => undefined) ?? Promise.resolve(undefined)
    this.whenLoaded = Promise.all([this.gen.replica.loaded, kept, work]).then(([, refusals, refusedWork]) => {
      if (this.closed) return
      // Only now is the stored generation known: the tabs holding it are the ones to share with.
      if (this.gen === first) first.connection.joinTabs(first.replica.generation)
      this.statuses.trackAll(this.doc, this.user)
      const held = refusals.filter(({ view }) => this.holdsUnsent(view.id))
      for (const { view, error } of held) this.statuses.refuseHeld(view.id, error)
      if (held.length > 0 || refusedWork) this.holdRefused(first, held, refusedWork)
      this.settle()
      if (parts.online()) this.connection.start()
    })
    void this.restoreRefusals(parts.uploads, kept)
  }

  /** Lists again, failed, the messages the relay refused that this device kept before a reload. */
  private async restoreRefusals(
    uploads: ConversationUploads | undefined,
    stored: Promise<{ view: MessageView; error: ParleyError }[]>,
  ): Promise<void> {
    const kept = await stored
    await this.whenLoaded.catch(() => undefined)
    if (!kept.length || this.closed) return
    for (const { view, error } of kept)
      if (this.holdsUnsent(view.id)) continue
      // In the replica after all (another device's copy, say): nothing failed to show.
      else if (getMessage(this.doc, view.id)) uploads?.dropRefused(view.id)
      else this.statuses.restoreRefused(view, error)
    this.emit("change", { events: [], local: true })
  }

  /** Whether the replica holds message `id` of the user's without a sequence number: never stored by the relay. */
  private holdsUnsent(id: MessageId): boolean {
    const view = getMessage(this.doc, id)
    return view !== undefined && view.author === this.user && view.seq === undefined
  }

  /**
   * The relay refused `refused` as the user was not a participant (removed),
   * and the replica of `generation` still holds them (unsaved: the relay
   * never took them). Its sync would send them once the user is added back,
   * although the UI showed them failed (an outside tester's report): its
   * connection never opens again (`DocumentConnection.hold`). When it would,
   * the replica is rebuilt on the relay's state without them (kept failed
   * outside it, until the app retries or discards them): as a readmission
   * while the conversation is unavailable (nothing it refused goes out),
   * else leaving these messages out, and the rest of the user's `work` the
   * relay refused with them (edits, reactions, deletions, ...; see
   * `Resync.refuseWork`). They are kept on the device too, so that a reload
   * does the same.
   */
  private holdRefused(
    generation: Generation,
    refused: readonly { view: MessageView; error: ParleyError }[],
    work?: RefusedWork,
  ) {
    for (const { view, error } of refused) {
      this.resyncs.leaveOut(view.id, error)
      this.parts.uploads?.keepRefused(view, error)
    }
    if (work) {
      this.resyncs.refuseWork(work)
      this.parts.uploads?.keepRefusedWork(work)
    }
    const connection = generation.connection
    connection.hold(async () => {
      const state = this.loading.state
      try {
        if (state.state === "unavailable" && state.reason === ErrorCode.FORBIDDEN)
          await this.resyncs.readmit(state.error)
        else await this.resyncs.withoutRefused()
      } catch (error) {
        const failure = toParleyError(error)
        // Not let in (still removed, say): as the relay's refusal of this connection would be told.
        if (failure.code === ErrorCode.FORBIDDEN || failure.code === ErrorCode.NOT_FOUND) {
          connection.refuse(failure)
          return
        }
        throw failure
      }
      // Not rebuilt (another rebuild was running): tried again with backoff, unless closed meanwhile.
      if (this.gen.connection === connection && !this.closed)
        throw new ParleyError(ErrorCode.UNAVAILABLE, "the replica is not rebuilt yet")
    })
  }

  /** The conversation's Yjs document, for those who want it; nothing ordinary requires it. A resync replaces it. */
  get doc(): Y.Doc {
    return this.gen.doc
  }

  /** The Yjs awareness of the conversation (presence, typing). */
  get awareness(): Awareness {
    return this.gen.awareness
  }

  /** The connection to the relay. */
  get connection(): DocumentConnection {
    return this.gen.connection
  }

  /** Where the conversation stands: loading, ready, or unavailable with a reason. */
  get state(): ConversationState {
    return this.loading.state
  }

  /** Resolves once ready (loaded locally or from the relay); rejects with the reason when unavailable. */
  ready(): Promise<this> {
    const state = this.loading.state
    if (state.state === "ready") return Promise.resolve(this)
    if (state.state === "unavailable") return Promise.reject(state.error)
    return this.readyOrOutOfReach()
  }

  /**
   * {@link readyPromise}, or the retryable UNAVAILABLE once the local replica
   * is loaded without making the conversation ready (this device never had
   * it) and the relay is out of reach or the client is offline: before, the
   * promise never settled. The conversation still becomes ready when the
   * relay answers; `ready()` may be asked again.
   */
  private readyOrOutOfReach(): Promise<this> {
    const waiting = new Promise<this>((resolve, reject) => {
      let off: (() => void) | undefined
      let settled = false
      const settle = (done: () => void) => {
        if (settled) return
        settled = true
        off?.()
        done()
      }
      this.readyPromise.then(
        (value) => settle(() => resolve(value)),
        (error: unknown) => settle(() => reject(error)),
      )
      void this.whenLoaded
        .catch(() => undefined)
        .then(() => {
          if (settled || this.closed || this.loading.state.state !== "loading") return
          off = this.connection.onUnreachable(() =>
            // After what stopped the connection is told: a refusal (removed, damaged) makes the
            // conversation unavailable with its own reason, which readyPromise then gives.
            queueMicrotask(() => {
              if (this.loading.state.state !== "loading") return
              settle(() =>
                reject(
                  new ParleyError(
                    ErrorCode.UNAVAILABLE,
                    "this conversation is not on this device yet and the relay cannot be reached: ready() again once online",
                  ),
                ),
              )
            }),
          )
        })
    })
    // As readyPromise: a caller who awaits it later (or never) must not see an unhandled rejection.
    waiting.catch(() => {})
    return waiting
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
    this.operations.rename(title)
  }

  /** Replaces the conversation's metadata (owners and admins). */
  setMetadata(metadata: Metadata): void {
    this.operations.setMetadata(metadata)
  }

  /** Adds users with `role` (default member); returns those actually added. */
  addParticipants(users: readonly string[], role: Role = "member"): UserId[] {
    return this.operations.addParticipants(users, role)
  }

  /** Removes users (owners and admins); returns those actually removed. */
  removeParticipants(users: readonly string[]): UserId[] {
    return this.operations.removeParticipants(users)
  }

  /** Changes a participant's role. */
  changeRole(user: string, role: Role): void {
    this.operations.changeRole(user, role)
  }

  /** The user leaves the conversation. */
  leave(): void {
    this.operations.leave()
  }

  /**
   * Deletes the whole conversation (owners and admins): closed to writes, its
   * content purged. To delete a message, use {@link deleteMessage}.
   */
  delete(...nothing: never[]): void {
    // `delete(messageId)` in JavaScript read as "delete this message" and deleted the whole conversation.
    if (nothing.length > 0)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        "delete() deletes the whole conversation and takes no argument: to delete a message, use deleteMessage(id)",
      )
    this.operations.delete()
  }

  // ---- messages ----

  /**
   * Sends a message. It is written to the local replica at once (status
   * `pending`) and returned with its id; it reaches the relay when online.
   *
   * With `files` (`send({ body, files })`), the files are kept on this device
   * and uploaded when the relay is reachable (`upload` events report
   * progress); the message, its id fixed now, is written once they all are,
   * with the relay's attachment records. Meanwhile it is listed as `pending`
   * with `upload` (its local files). A refused upload marks it `failed`;
   * see {@link retry} and {@link discard}.
   */
  send(input: string | SendInput, options: SendOptions = {}): ChatMessage {
    const { body, files, ...rest } = typeof input === "string" ? { ...options, body: input } : input
    const withFiles = files !== undefined && files.length > 0
    const view = withFiles ? this.uploads.send(body, files, rest) : this.operations.send(body, rest)
    this.gen.typing.stop()
    this.parts.presence.activity()
    if (withFiles) return view
    this.statuses.track(view.id)
    return this.statuses.decorate(view)
  }

  /**
   * Sends again a failed message.
   *
   * A message the relay refused (status `failed` with its error, say dated
   * by a clock set days ahead) is sent again as a new message with the same
   * content, dated now, and returned (pending); the failed one is gone. A
   * message whose upload failed is sent again with the files the relay has;
   * those it refused, or whose bytes were freed by the failure, are left out
   * (it keeps its id; nothing is returned).
   *
   * Throws `CONFLICT` (rule `conversation-id-taken`) for a message written
   * into a group created on this device under an id another conversation
   * took first: sent again, it would go to that other conversation, whose
   * participants the user never chose. {@link discard} it.
   */
  retry(id: MessageId | string): ChatMessage | undefined {
    const messageId = parseMessageId(id)
    const refused = this.statuses.refused.get(messageId)
    if (!refused) {
      this.uploads.retry(messageId)
      return undefined
    }
    // Checked before anything else: after a reload, this handle may be the other conversation, ready and writable.
    const taken = this.statuses.failure(messageId)
    if (taken?.rule === Rule.conversationIdTaken)
      throw new ParleyError(
        ErrorCode.CONFLICT,
        `message ${messageId} was written into a conversation created on this device under an id another conversation took first: it is not sent into that one (discard() it)`,
        { cause: taken, rule: Rule.conversationIdTaken },
      )
    const sent = this.send(refused.body, {
      type: refused.type,
      metadata: refused.metadata,
      priority: refused.priority,
      ...(refused.attachments.length > 0 ? { attachments: refused.attachments } : {}),
      ...(refused.replyTo !== undefined ? { replyTo: refused.replyTo } : {}),
    })
    this.statuses.dropRefused(messageId)
    this.emit("change", { events: [], local: true })
    return sent
  }

  /**
   * Drops a failed message on this device: one the relay refused (gone from
   * {@link messages}, its status undefined), or one that waits for its
   * uploads (or failed to upload), with the files kept for it.
   */
  discard(id: MessageId | string): void {
    const messageId = parseMessageId(id)
    if (this.statuses.dropRefused(messageId)) {
      this.emit("change", { events: [], local: true })
      return
    }
    this.uploads.discard(messageId)
  }

  /** Replaces the body of one of the user's messages. */
  edit(id: MessageId | string, body: string): void {
    this.operations.edit(id, body)
  }

  /** Deletes a message (its author, owners and admins); its content is really gone. */
  deleteMessage(id: MessageId | string): void {
    this.operations.deleteMessage(id)
  }

  /** Adds the user's reaction; throws `FORBIDDEN` (rule `reaction-limit`) for a 21st different emoji on the message or the user's 10,001st reaction in the conversation. */
  react(id: MessageId | string, emoji: string): void {
    this.operations.react(id, emoji)
  }

  /** Removes the user's reaction. */
  unreact(id: MessageId | string, emoji: string): void {
    this.operations.unreact(id, emoji)
  }

  /** One message, or undefined when this replica does not have it. */
  message(id: MessageId | string): ChatMessage | undefined {
    const messageId = parseMessageId(id)
    const view = getMessage(this.doc, messageId)
    if (!view)
      return this.uploads.view(messageId) ?? this.statuses.refusedMessages().find((m) => m.id === messageId)
    // An expired fleeting message is gone here too (a reply's quote shows "earlier message").
    return this.priorities.visible(this.doc, [view]).length > 0 ? this.statuses.decorate(view) : undefined
  }

  // ---- sealed history ----

  /**
   * The `limit` messages before the oldest ones loaded so far (the live
   * document's at first), oldest first, then any sealed inside the window
   * shown so far that this device no longer held and did not show live
   * (fetched again). Never more than `limit` (what was filled into the window
   * and does not fit comes with the next call, and {@link hasOlder} stays
   * true until it has), and no message twice across calls, also while a
   * purge rewrites the history being paged. Older messages are sealed by the
   * relay into immutable segments, fetched here on demand (from this
   * device's cache when it has them, which also works offline) and kept for
   * {@link olderMessages}, {@link message} and every operation (edit,
   * delete, react, reply). An empty list: the start of the conversation.
   * Rejects with the retryable UNAVAILABLE when a segment must be fetched
   * while offline, and when a history directory page or segment keeps not
   * matching the hash the live document names, as a purge rewrites it (asked
   * for again a few times first, as the document names it then). Rejects
   * with the relay's refusal, not retryable, once it refused the conversation
   * for good: `FORBIDDEN` once the user was removed from it.
   */
  async loadOlder(limit = 50): Promise<ChatMessage[]> {
    return (await this.history.loadOlder(limit)).map((view) => this.statuses.decorate(view))
  }

  /** Every older message {@link loadOlder} has loaded so far, oldest first (the live ones not included). */
  olderMessages(): ChatMessage[] {
    return this.history.olderMessages().map((view) => this.statuses.decorate(view))
  }

  /** Whether {@link loadOlder} has more to return: older messages (sealed, not loaded yet), or some it owes. */
  get hasOlder(): boolean {
    return this.history.hasOlder
  }

  /**
   * A window of messages in canonical order: `{ last: n }`, or `before` /
   * `after` / `around` an id; the last 50 when no window is given. Live
   * messages only: those {@link loadOlder} fetched are {@link olderMessages}.
   */
  messages(window: MessageWindow = { last: 50 }): ChatMessage[] {
    // Fleeting messages whose time is up are gone for the reader before the relay purges them.
    const listed: ChatMessage[] = this.priorities
      .visible(this.doc, listMessages(this.doc, window))
      .map((view) => this.statuses.decorate(view))
    if (!("last" in window)) return listed
    // Messages the relay refused (failed, outside the replica) and those waiting for uploads are the
    // newest the user sees: at the end of a window that reaches the end.
    const waiting = [...this.statuses.refusedMessages(), ...this.uploads.waiting()]
    return waiting.length > 0 ? [...listed, ...waiting].slice(-window.last) : listed
  }

  // ---- priorities ----

  /** The pinned messages (sent `sticky`, not unpinned, not deleted), oldest first; sealed ones included. */
  pinned(): ChatMessage[] {
    return this.priorities.pinned(this.doc).map((view) => this.statuses.decorate(view))
  }

  /** Unpins a sticky message: its author, owners and admins (rule `unpin-author-or-admin`). */
  unpin(id: MessageId | string): void {
    this.operations.write((doc, user, origin) => unpinMessage(doc, user, parseMessageId(id), { origin }))
  }

  /** Sets (owners and admins) how long fleeting messages live here, in seconds; undefined: the default (1 day). */
  setFleetingSeconds(seconds: number | undefined): void {
    this.operations.write((doc, user, origin) => setFleetingSeconds(doc, user, seconds, { origin }))
  }

  /** Unread emergency messages (ids, oldest first): flagged until the read marker passes them. */
  get unreadEmergency(): MessageId[] {
    return unreadEmergency(this.doc, this.user)
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
    const offExpired = this.on("expired", push)
    return () => {
      offChange()
      offStatus()
      offExpired()
    }
  }

  /** The status of one of the user's messages (undefined for others' messages). */
  status(id: MessageId | string): MessageStatus | undefined {
    return this.statuses.status(id) ?? this.uploads.view(parseMessageId(id))?.status
  }

  /**
   * The user's messages that the relay refused and a resync could not
   * re-apply (they are no longer in the conversation), with the reason.
   */
  get refusedMessages(): ReadonlyMap<MessageId, ParleyError> {
    return this.statuses.lost
  }

  // ---- read state ----

  /** Messages others wrote that the user has not read. */
  get unreadCount(): number {
    return unreadCount(this.doc, this.user)
  }

  /**
   * Moves the user's read marker to `target`: a message id, a sequence
   * number, or "latest" (default). A sealed message's id works once its
   * segment is loaded ({@link loadOlder}); an id this replica does not know
   * throws `NOT_FOUND` rather than marking everything read, and a string that
   * is not a message id `INVALID_ARGUMENT` (as {@link react} and {@link edit}).
   */
  markRead(target: MarkerTarget | string = "latest"): boolean {
    return this.operations.markRead(target)
  }

  /** Every user's read and delivered markers (sequence numbers). */
  get markers(): Record<UserId, Markers> {
    return allMarkers(this.doc)
  }

  // ---- typing and presence ----

  /** Signals that the user is typing; throttled, so call it on every keystroke. */
  typing(): void {
    this.parts.presence.activity()
    this.gen.typing.typing()
  }

  /** Clears the user's typing signal (sending a message does it too). */
  stopTyping(): void {
    this.gen.typing.stop()
  }

  /**
   * Other users seen in this conversation since it opened: `online`, `away`
   * (connected, not active for a while) or `offline` with `lastSeen`. Users
   * who hide their presence never appear. Sorted by user id.
   */
  get presence(): readonly UserPresence[] {
    return this.gen.presence.presence
  }

  /** Other users typing now; entries expire on their own. */
  get typingUsers(): readonly UserId[] {
    return this.gen.typing.typingUsers
  }

  /**
   * @internal The user is a participant again (the relay's inbox lists this
   * conversation): a handle the relay refused on their removal (4403) is
   * ready and connects again. Before, it stayed unavailable until reopened.
   * What the refusal failed is not sent: the replica is rebuilt on the
   * relay's state first, without it (`Resync.readmit`), and the handle is
   * ready once that is done.
   */
  readmit(): void {
    if (this.closed) return
    const state = this.loading.state
    if (state.state !== "unavailable" || state.reason !== ErrorCode.FORBIDDEN) return
    if (!this.connection.hasUnsaved) {
      this.loading.apply({ type: "readmitted", info: getConversation(this.doc) })
      if (this.loading.state.state === "ready") this.connection.start()
      return
    }
    // Stays unavailable when the relay's state cannot be had: told, and the app may open it again.
    this.resyncs
      .readmit(state.error)
      .catch((error: unknown) => this.emit("error", { error: toParleyError(error) }))
  }

  /**
   * What the user wrote here that the relay has not acknowledged as saved
   * (see {@link flush}); undefined when nothing is. A conversation the relay
   * turned away (removed, deleted) has nothing unsaved: what it never took
   * was told as failed messages and `error` events. One it refused as
   * damaged, or for a token, keeps its work pending.
   */
  unsaved(): UnsavedWork | undefined {
    if (!this.hasUnsaved) return undefined
    const uploading = this.uploadingIds()
    const pending = this.statuses.pendingIds()
    return {
      conversationId: this.id,
      messageIds: [...pending, ...uploading.filter((id) => !pending.includes(id))],
      changes: unsavedChanges(this.doc, this.user, this.savedThrough(this.gen)),
    }
  }

  /** @internal Whether {@link unsaved} has anything, cheaply (no listing of the changes). */
  get hasUnsaved(): boolean {
    if (this.closed) return false
    const state = this.loading.state
    if (
      state.state === "unavailable" &&
      state.reason !== ErrorCode.DAMAGED &&
      state.reason !== ErrorCode.UNAUTHORIZED &&
      !isRetryable(state.reason)
    )
      return false
    return this.connection.hasUnsaved || this.uploadingIds().length > 0
  }

  /** The user's messages waiting for their file uploads (not failed). */
  private uploadingIds(): MessageId[] {
    return this.uploads
      .waiting()
      .filter((m) => m.status === "pending")
      .map((m) => m.id)
  }

  /**
   * Resolves once everything written here so far (messages, those waiting
   * for file uploads included, edits, reactions, ...) is saved by the relay:
   * acknowledged as durably stored, so that closing, or losing this device,
   * loses nothing. Rejects after `timeoutMs` (default 10 s) with the
   * retryable TIMEOUT (connected, the relay slow to acknowledge) or
   * UNAVAILABLE (not connected), its message naming what is still unsaved
   * ({@link unsaved} lists it). The work stays pending and keeps going out.
   */
  async flush(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closed) throw new ParleyError(ErrorCode.UNAVAILABLE, "this conversation was closed")
    const saved = await waitUntilSaved(() => this.hasUnsaved, options.timeoutMs ?? 10_000, this.flushes)
    if (saved) return
    if (this.closed) throw new ParleyError(ErrorCode.UNAVAILABLE, "this conversation was closed")
    throw unsavedError(this.unsavedList(), this.connection.status === "online", `conversation ${this.id}`)
  }

  private unsavedList(): UnsavedWork[] {
    const work = this.unsaved()
    return work ? [work] : []
  }

  /**
   * Closes this handle: the socket, timers and local database. Resolves
   * with what the relay had not saved, or undefined.
   *
   * With IndexedDB storage that stays on the device and is sent when the
   * conversation is next opened (by this or a later client). With memory
   * storage nothing outlives the handle: close first waits, while the relay
   * is within reach (the client connected, no reconnect failed), up to
   * `timeoutMs` (default: the client's `closeTimeoutMs`, 5 s) for it to be
   * saved; what is still unsaved then is lost, and told as an `error` event
   * (TIMEOUT or UNAVAILABLE, naming it) besides the resolved value.
   * `timeoutMs: 0` closes at once. Never rejects.
   */
  close(options: { timeoutMs?: number } = {}): Promise<UnsavedWork | undefined> {
    this.closing ??= this.closeOnce(options.timeoutMs, true)
    return this.closing
  }

  /** @internal {@link close}, without the `error` event (the client reports its destroy once, for all). */
  closeQuietly(): Promise<UnsavedWork | undefined> {
    this.closing ??= this.closeOnce(0, false)
    return this.closing
  }

  private async closeOnce(timeoutMs: number | undefined, report: boolean): Promise<UnsavedWork | undefined> {
    const lost = this.parts.keepsLocalData === false
    const wait = timeoutMs ?? (lost ? (this.parts.closeWaitMs ?? 0) : 0)
    // At once, not after the wait below: writes are refused from now on, and opening the conversation
    // again meanwhile gets a new, live handle. The connection stays up while it waits.
    this.loading.close()
    this.parts.onClosing?.()
    if (wait > 0)
      await waitUntilSaved(
        () => this.hasUnsaved,
        wait,
        new Set(),
        () => this.parts.online() && this.connection.progressing,
      )
    const unsaved = this.unsaved()
    if (unsaved && lost && report)
      this.emit("error", {
        error: unsavedError(
          [unsaved],
          this.connection.status === "online",
          `closed conversation ${this.id} with storage "memory"`,
        ),
      })
    await this.release()
    return unsaved
  }

  private async release(): Promise<void> {
    if (this.closed) return
    for (const cancel of [...this.flushes]) cancel()
    this.closed = true
    this.resyncs.close()
    this.delivered.stop()
    this.uploads.close()
    this.priorities.close()
    const gen = this.gen
    // Closing never throws: whatever one part fails with, the others are still released.
    const release = async (step: () => unknown) => {
      try {
        await step()
      } catch (error) {
        console.error("parley: closing a conversation", error)
      }
    }
    await release(() => gen.dispose())
    await release(() => gen.replica.destroy())
    await release(() => gen.doc.destroy())
    this.removeAllListeners()
    this.parts.onClose()
  }

  // ---- internals ----

  /** Opens the local persistence of `doc`; another tab replacing what is stored rebuilds this replica. */
  private openReplica(doc: Y.Doc): LocalReplica {
    return this.parts.openReplica(doc, () => this.resyncs.replacedByAnotherTab(doc))
  }

  /** Binds a document as the current generation, its events routed to the parts. */
  private bind(doc: Y.Doc, replica: LocalReplica, shareWithTabs = true): Generation {
    const generation: Generation = bindGeneration(this.parts, doc, replica, shareWithTabs, {
      typing: (users) => this.emit("typing", { users }),
      presence: (list) => this.emit("presence", { presence: list }),
      diverged: (error) => {
        if (this.gen?.doc === doc && !this.closed) this.refused(error)
      },
      status: () => {
        this.settle()
        this.parts.onStatus()
        if (generation.connection.status !== "online") return
        this.uploads.online()
        // The segment the read marker falls in is fetched once there is a relay to ask: a device that
        // joined or synced without changes of its own (a new one, one offline when it last tried) counted
        // that whole segment as unread until some later change.
        if (this.gen !== generation) return
        this.refreshUnread()
        // Sealed inside the window shown while offline (or dropped by a resync): fetched now, not at the next loadOlder.
        this.history.fetchGaps()
      },
      saved: (stateVector) => {
        this.resyncs.saved()
        this.statuses.acknowledge(stateVector)
        this.limits.clear()
      },
      refused: (error) => {
        // A retryable refusal (storage failing, say) is about the relay, not the work: keep it pending
        // and send it again later; never resync or mark messages failed for it.
        // Unless what it refused retryably follows work it refused for good: that never goes through.
        if (!isRetryable(error.code)) this.refused(error)
        else if (this.resyncs.refusedForGood && this.gen === generation) {
          generation.connection.holdPendingWork()
          this.failUnsaved(this.resyncs.refusedForGood)
        } else {
          generation.connection.resendLater()
          // One of the user's limits (new client ids a day, bytes a day) may hold the work for hours: told
          // once until the relay saves again, the work kept pending (a bot starting a fresh client per job
          // saw its messages stay pending with no word: an outside probe). So is the relay's storage
          // failing for more than a moment: its users saw nothing at all while nothing was saved (another).
          if (error.code === ErrorCode.RATE_LIMITED || error.code === ErrorCode.STORAGE_UNAVAILABLE)
            this.limited(error)
        }
      },
      // A token the source could not give is the client's problem, not this conversation's:
      // `ChatClient` reports it once (an "error" event), however many conversations are open.
      unavailable: (error) => {
        // The relay will not take this conversation's changes any more: what it has not saved never will be.
        // (A refused token is different: the changes wait for a token that works. So does a damaged
        // conversation: the replica keeps them for when an operator has restored it, and may even hold
        // what the relay lost.)
        const refused = error.code !== ErrorCode.UNAUTHORIZED && error.code !== ErrorCode.DAMAGED
        const failed = refused ? this.statuses.refuseUnsaved(error) : []
        // Removed: what the relay refused stays in the replica, and must not go out if the user is added back.
        if (
          error.code === ErrorCode.FORBIDDEN &&
          this.gen === generation &&
          generation.connection.hasUnsaved
        ) {
          const views = failed.flatMap((id) => {
            const view = getMessage(generation.doc, id)
            return view ? [{ view, error }] : []
          })
          // All it refused lies within the replica's state now: the user cannot write while it is unavailable.
          const through = Y.decodeStateVector(Y.encodeStateVector(generation.doc))
          this.holdRefused(generation, views, { through, error })
        }
        this.loading.apply({ type: "unavailable", error })
        this.statuses.refresh()
        // The rest of what it never saved (edits, reactions, ...) stays on this replica only: each told,
        // as a refused change is (a user removed while offline saw their edits and reactions stay, and
        // nothing said they went nowhere: an outside probe). Messages were told as failed just above.
        if (refused)
          for (const change of unsavedChanges(this.doc, this.user, this.savedThrough(generation)))
            this.emit("error", { error, change })
      },
      limited: (error) => {
        // Told to the app; what it has locally stays ready and writable (its changes wait, as offline).
        // One the device never had cannot be shown: ready() rejects, and the state turns ready once
        // another conversation is closed and the connection gets in.
        this.emit("error", { error })
        if (this.loading.state.state === "loading") this.loading.apply({ type: "unavailable", error })
      },
      changed: (events, transaction) => this.changed(events, transaction),
      segmentsChanged: (changed, transaction) => this.history.dropStale(changed, transaction),
    })
    doc.on("afterTransaction", (transaction: Y.Transaction) => {
      if (this.gen?.doc === doc) this.priorities.changed(doc)
      // A deletion (the relay's purge, an erasure, the user's own): the stored updates still hold the
      // text until merged, on a device that might never load this conversation again (an outside probe).
      if (transaction.origin !== generation.replica && removesContent(doc, transaction)) {
        void generation.replica.compact()
        this.parts.onPurged?.()
      }
    })
    return generation
  }

  /** How far the relay is known to have this replica's own client: its acknowledgements, its sync requests. */
  private savedThrough(generation: Generation): number {
    const own = generation.doc.clientID
    return Math.max(generation.statuses.savedThrough(own), generation.connection.relayHas.get(own) ?? 0)
  }

  /** Unsaved work that can no longer be saved: failed with `error` (the refusal it follows), not sent again. */
  private failUnsaved(error: ParleyError): void {
    this.statuses.refuseUnsaved(error)
    this.statuses.refresh()
  }

  /** The relay refused an update: resync (see `conversation/resync.ts`). */
  private refused(error: ParleyError): void {
    this.resyncs.refused(error)
  }

  /** Decides loading / ready / unavailable from what the replica holds and what the relay said. */
  private settle(): void {
    this.loading.apply({
      type: "settled",
      info: getConversation(this.doc),
      relaySynced: this.connection.synced,
      creating: this.creating,
    })
  }

  private changed(events: ChangeEvent[], transaction: Y.Transaction): void {
    if (this.closed) return
    const local = transaction.origin === LOCAL
    for (const event of events) {
      if (event.type === "message.sent" && event.message.author === this.user)
        this.statuses.track(event.message.id)
    }
    if (
      events.some(
        (e) =>
          e.type === "conversation.created" ||
          e.type === "conversation.updated" ||
          e.type === "conversation.deleted" ||
          e.type === "conversation.reopened",
      )
    )
      this.settle()
    this.emit("change", { events, local })
    // Only these change a status or the unread count; skipping the rest keeps a send O(1).
    if (events.some((e) => e.type === "messages.sequenced" || (isMarker(e) && e.user !== this.user)))
      this.statuses.refresh()
    if (events.some((e) => countsForUnread(e, this.user))) this.refreshUnread()
    if (!local) this.delivered.schedule()
  }

  /**
   * Tells a per-user limit, or the relay's storage failing, holding this conversation's work as one
   * `error` event: at once for the daily limits (new client ids, bytes stored), which hold it for
   * hours; a per-minute one, or storage, only if it still refuses {@link LIMIT_TOLD_AFTER_MS} after
   * it first did (a large group created goes on by itself within a minute or so, a database restart
   * within seconds, and need not alarm anyone).
   */
  private limited(error: ParleyError): void {
    const rule = error.rule ?? error.code
    const now = Date.now()
    let seen = this.limits.get(rule)
    if (!seen) {
      seen = { since: now, told: false }
      this.limits.set(rule, seen)
    }
    if (seen.told || (!DAILY_LIMITS.has(rule) && now - seen.since < LIMIT_TOLD_AFTER_MS)) return
    seen.told = true
    this.emit("error", { error })
  }

  private refreshUnread(): void {
    this.history.fetchMarkerSegment()
    const unread = this.unreadCount
    if (unread === this.unread) return
    this.unread = unread
    this.emit("unread", { count: unread })
  }
}
