import {
  type Attachment,
  addParticipants,
  allMarkers,
  assertAllowed,
  assertValid,
  type ChangeEvent,
  type ConversationId,
  type ConversationInfo,
  canSendMessage,
  changeRole,
  checkMessageRecord,
  decodeSegment,
  deleteConversation,
  deleteMessage,
  ErrorCode,
  editMessage,
  epochBaseline,
  getConversation,
  getMessage,
  isRetryable,
  lastSequence,
  leaveConversation,
  listMessages,
  listParticipants,
  listSealedMessages,
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
  newMessageId,
  observeChanges,
  ParleyError,
  type Participant,
  type PendingChange,
  type Priority,
  parseMessageId,
  parseReactionKey,
  parseUserId,
  type Role,
  Rule,
  react,
  rebasePendingWork,
  removeParticipants,
  renameConversation,
  roleOf,
  type Segment,
  type SegmentSummary,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  segmentHash,
  sendMessage,
  setConversationMetadata,
  toParleyError,
  typesOf,
  type UserId,
  unreact,
  unreadCount,
} from "@parley/shared"
import { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import type { ConversationUploads, UploadEvent, UploadState } from "./attachments/conversation-uploads.js"
import type { DocumentConnection } from "./connection.js"
import { Emitter } from "./emitter.js"
import type { SegmentCache } from "./history-cache.js"
import { type MessageStatus, MessageStatuses } from "./message-status.js"
import { type PresenceSettings, PresenceTracker, type UserPresence } from "./presence.js"
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
  /** Present while the message waits for its files to upload (or failed to): the local files and progress. */
  readonly upload?: UploadState
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

/** What {@link Conversation.send} takes: the body, and files to upload (File or Blob objects). */
export interface SendInput extends SendOptions {
  readonly body: string
  /**
   * Files to upload through the relay before the message is written (kept on
   * this device meanwhile, so this works offline and across reloads). Links
   * and object references go in `attachments`: they need no upload.
   */
  readonly files?: readonly Blob[]
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
  /** The files of one of the user's messages moved: queued, uploading (bytes `loaded` of `total`), failed, written or discarded. */
  upload: UploadEvent
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

/** What the client hands a {@link Conversation}; internal. */
export interface ConversationParts {
  readonly id: ConversationId
  readonly user: UserId
  /** Opens the local persistence of a document of this conversation. */
  readonly openReplica: (doc: Y.Doc) => LocalReplica
  /** A connection to the relay for `doc`, sharing with the user's other tabs or not. */
  readonly connect: (doc: Y.Doc, awareness: Awareness, shareWithTabs: boolean) => DocumentConnection
  readonly deliveredDelay: number
  readonly clock: () => number
  readonly online: () => boolean
  readonly onStatus: () => void
  readonly onReady: (info: ConversationInfo) => void
  readonly onClose: () => void
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
}

const isMarker = (e: ChangeEvent): e is Extract<ChangeEvent, { user: UserId; upTo: number }> =>
  e.type === "messages.read" || e.type === "messages.delivered"

/** Whether `event` can change `user`'s unread count. */
const countsForUnread = (event: ChangeEvent, user: UserId): boolean =>
  event.type === "message.deleted" ||
  event.type === "messages.sequenced" ||
  (event.type === "message.sent" && event.message.author !== user) ||
  (event.type === "messages.read" && event.user === user)

/** Resyncs in a row without the relay saving anything in between, before unsaved work counts as failed. */
const MAX_RESYNCS_WITHOUT_SAVE = 3

/** One generation of the local replica: a document and what is bound to it. A resync replaces it whole. */
interface Generation {
  readonly doc: Y.Doc
  readonly awareness: Awareness
  readonly connection: DocumentConnection
  readonly statuses: MessageStatuses
  readonly typing: TypingIndicator
  readonly presence: PresenceTracker
  replica: LocalReplica
  readonly dispose: () => void
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
  private readonly user: UserId
  private current: ConversationState = { state: "loading" }
  private gen: Generation
  private readonly tracked = new Map<MessageId, MessageStatus>()
  /** The user's messages that a resync could not re-apply (the relay refused them), with why. */
  private readonly lost = new Map<MessageId, ParleyError>()
  private unread = -1
  private deliveredTimer: ReturnType<typeof setTimeout> | undefined
  private readonly readyPromise: Promise<this>
  private closed = false
  private resyncing = false
  /** Aborted by close(): ends a resync's fetch of the relay's state. */
  private readonly closing = new AbortController()
  /** Resyncs since the relay last saved something: bounds a refuse → resync → refuse loop. */
  private resyncsWithoutSave = 0
  /** Sealed history segments this replica holds (fetched or cached), kept across resyncs. */
  private readonly held = new Map<number, Segment>()
  /** The hash each held segment was fetched under, to notice when the relay re-seals it. */
  private readonly heldHashes = new Map<number, string>()
  /** Segments being fetched, by index: one fetch each however many callers wait. */
  private readonly fetching = new Map<number, Promise<Segment>>()
  /** Sequence number below which {@link loadOlder} continues (undefined: below the live messages). */
  private olderFrom: number | undefined
  /** @internal Set while the client is about to create this conversation: "not found" is expected then. */
  creating = false
  /** @internal Resolves once the local replica is loaded and the state settled from it. */
  readonly whenLoaded: Promise<void>

  constructor(private readonly parts: ConversationParts) {
    super()
    this.id = parts.id
    this.user = parts.user
    const doc = new Y.Doc()
    this.gen = this.bind(doc, parts.openReplica(doc))
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
    this.whenLoaded = this.gen.replica.loaded.then(() => {
      if (this.closed) return
      this.trackOwnMessages()
      this.settle()
      if (parts.online()) this.connection.start()
    })
    this.attachUploads()
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

  private get statuses(): MessageStatuses {
    return this.gen.statuses
  }

  private get typingIndicator(): TypingIndicator {
    return this.gen.typing
  }

  /** Binds a document and everything that lives with it: awareness, connection, statuses, typing. */
  private bind(doc: Y.Doc, replica: LocalReplica, shareWithTabs = true): Generation {
    const awareness = new Awareness(doc)
    const statuses = new MessageStatuses(doc, this.user)
    const typing = new TypingIndicator(
      awareness,
      this.user,
      (users) => this.emit("typing", { users }),
      this.parts.clock,
    )
    const presence = new PresenceTracker(
      awareness,
      this.user,
      this.parts.presence,
      (list) => this.emit("presence", { presence: list }),
      this.parts.clock,
    )
    const connection = this.parts.connect(doc, awareness, shareWithTabs)
    // Set once the relay's history of this replica's client id turned out to be someone else's:
    // its "saved" acknowledgements then cover their structs, not ours, and the replica is rebuilt.
    let diverged = false
    const diverge = (error: ParleyError) => {
      if (diverged) return
      diverged = true
      if (this.gen.doc === doc && !this.closed) this.refused(error)
    }
    // The relay re-seals a segment without a purged message, or drops a deleted conversation's segments.
    // Summaries are decoded first: shared's cache of them then drops them (its observer) before this runs.
    sealedSegments(doc)
    typesOf(doc).segments.observe(() => this.dropStaleSegments(doc))
    const ownId = doc.clientID
    const onCleanup = (transaction: Y.Transaction) => {
      if (transaction.local || transaction.afterState.get(ownId) === transaction.beforeState.get(ownId))
        return
      // Another client wrote under this replica's id on the relay first. Yjs has just moved the
      // document to a new id, but y-websocket keys the local awareness by the document's id and
      // throws (on reconnect, disconnect, destroy) when the two differ: keep the id until the rebuild.
      doc.clientID = ownId
      const error = new ParleyError(
        ErrorCode.FORBIDDEN,
        "another client wrote under this replica's client id",
        {
          rule: Rule.clientIdOwner,
        },
      )
      queueMicrotask(() => diverge(error))
    }
    doc.on("afterTransactionCleanup", onCleanup)
    connection.on("diverged", ({ error }) => diverge(error))
    connection.on("status", ({ status }) => {
      this.settle()
      this.parts.onStatus()
      if (status === "online") this.parts.uploads?.wake()
    })
    connection.on("saved", ({ stateVector }) => {
      if (diverged) return
      this.resyncsWithoutSave = 0
      statuses.acknowledge(stateVector)
      this.refreshStatuses()
    })
    connection.on("refused", ({ error }) => {
      // A retryable refusal (storage failing, say) is about the relay, not the work: keep it pending
      // and send it again later; never resync or mark messages failed for it.
      if (isRetryable(error.code)) connection.resendLater()
      else this.refused(error)
    })
    // A token the source could not give is the client's problem, not this conversation's:
    // `ChatClient` reports it once (an "error" event), however many conversations are open.
    connection.on("unavailable", ({ error }) => {
      // The relay will not take this conversation's changes any more: what it has not saved never will be.
      // (A refused token is different: the changes wait for a token that works. So does a damaged
      // conversation: the replica keeps them for when an operator has restored it, and may even hold
      // what the relay lost.)
      if (error.code !== ErrorCode.UNAUTHORIZED && error.code !== ErrorCode.DAMAGED)
        for (const id of statuses.refuseUnsaved(error)) this.track(id)
      this.setState({ state: "unavailable", reason: error.code, error })
      this.refreshStatuses()
    })
    const unobserve = observeChanges(doc, (events, transaction) => this.changed(events, transaction))
    return {
      doc,
      awareness,
      connection,
      statuses,
      typing,
      presence,
      replica,
      dispose: () => {
        doc.off("afterTransactionCleanup", onCleanup)
        unobserve()
        typing.destroy()
        presence.destroy()
        connection.destroy()
        awareness.destroy()
      },
    }
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
    if (files && files.length > 0) return this.sendWithFiles(body, files, rest)
    const view = this.write(() => sendMessage(this.doc, this.user, { body, ...rest }, { origin: LOCAL }))
    this.typingIndicator.stop()
    this.parts.presence.activity()
    this.track(view.id)
    return this.decorate(view)
  }

  /**
   * Sends again a message whose upload failed: with the files the relay
   * has; those it refused, or whose bytes were freed by the failure, are left out.
   */
  retry(id: MessageId | string): void {
    this.uploadsOrThrow().retry(parseMessageId(id))
  }

  /** Drops a message that waits for its uploads (or failed to upload), with the files kept for it. */
  discard(id: MessageId | string): void {
    this.uploadsOrThrow().discard(parseMessageId(id))
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
    const messageId = parseMessageId(id)
    const view = getMessage(this.doc, messageId)
    return view ? this.decorate(view) : this.parts.uploads?.view(messageId)
  }

  // ---- sealed history ----

  /**
   * The `limit` messages before the oldest ones loaded so far (the live
   * document's at first), oldest first: older messages are sealed by the
   * relay into immutable segments, fetched here on demand (from this
   * device's cache when it has them, which also works offline) and kept for
   * {@link olderMessages}, {@link message} and every operation (edit,
   * delete, react, reply). An empty list: the start of the conversation.
   * Rejects with the retryable UNAVAILABLE when a segment must be fetched
   * while offline.
   */
  async loadOlder(limit = 50): Promise<ChatMessage[]> {
    const before = this.olderFrom ?? this.firstLiveSeq()
    for (;;) {
      if (listSealedMessages(this.doc, before, limit).length >= limit) break
      const next = sealedSegments(this.doc)
        .filter((s) => s.to < before && !this.held.has(s.index))
        .at(-1)
      if (!next) break
      await this.fetchSegment(next)
    }
    const page = listSealedMessages(this.doc, before, limit)
    if (page.length > 0) this.olderFrom = page[0]!.seq
    return page.map((view) => this.decorate(view))
  }

  /** Every older message {@link loadOlder} has loaded so far, oldest first (the live ones not included). */
  olderMessages(): ChatMessage[] {
    const before = this.firstLiveSeq()
    const from = this.olderFrom ?? before
    return listSealedMessages(this.doc, before, Number.MAX_SAFE_INTEGER)
      .filter((m) => (m.seq ?? 0) >= from)
      .map((view) => this.decorate(view))
  }

  /** Whether messages older than those loaded exist (sealed, not loaded yet). */
  get hasOlder(): boolean {
    const from = this.olderFrom ?? this.firstLiveSeq()
    return sealedSegments(this.doc).some((s) => s.from < from)
  }

  /** The first sequence number the live document holds (after the sealed history). */
  private firstLiveSeq(): number {
    const first = messageIndex(this.doc).order()[0]
    const seq = first === undefined ? undefined : messageIndex(this.doc).seqOf.get(first)
    return seq ?? Math.max(sealedThrough(this.doc), lastSequence(this.doc)) + 1
  }

  /**
   * The segments holding messages that `stale`'s pending edits, reactions and
   * deletions refer to, when `fresh` (the relay's state) no longer holds them
   * live: sealed meanwhile. Pending = written beyond what the relay has (its
   * state vector, or the epoch's baseline).
   */
  private async fetchSegmentsForPendingWork(
    stale: Y.Doc,
    fresh: Y.Doc,
    connection: DocumentConnection,
  ): Promise<void> {
    const known = Y.decodeStateVector(Y.encodeStateVector(fresh))
    const baseline = epochBaseline(fresh)
    const pending = (item: Y.Item) =>
      item.id.clock + item.length > (known.get(item.id.client) ?? baseline.get(item.id.client) ?? 0)
    const ids = new Set<MessageId>()
    for (const root of ["edits", "reactions", "tombstones"] as const) {
      for (const [key, item] of (stale.getMap(root) as unknown as { _map: Map<string, Y.Item> })._map) {
        if (!pending(item)) continue
        ids.add((root === "reactions" ? (parseReactionKey(key)?.message ?? key) : key) as MessageId)
      }
    }
    for (const id of messageIndex(stale).deleted.keys()) ids.add(id)
    const staleIndex = messageIndex(stale)
    const freshIndex = messageIndex(fresh)
    const summaries = sealedSegments(fresh)
    const wanted = new Set<SegmentSummary>()
    for (const id of ids) {
      if (freshIndex.records.has(id) || freshIndex.deleted.has(id)) continue
      const seq = staleIndex.seqOf.get(id) ?? sealedHistory(stale).entry(id)?.seq
      const summary = seq === undefined ? undefined : summaries.find((s) => s.from <= seq && seq <= s.to)
      if (summary && !this.held.has(summary.index)) wanted.add(summary)
    }
    for (const summary of wanted) await this.fetchSegment(summary, connection)
  }

  /** Segment `summary` from the cache or the relay, checked against its hash, held from now on. */
  private fetchSegment(summary: SegmentSummary, connection = this.connection): Promise<Segment> {
    const held = this.held.get(summary.index)
    if (held) return Promise.resolve(held)
    let fetching = this.fetching.get(summary.index)
    if (!fetching) {
      fetching = (async () => {
        let bytes = await this.parts.segments.get(summary.hash)
        if (!bytes) {
          const page = await connection.requestHistory(summary.index)
          if (page.error !== undefined)
            throw new ParleyError(page.error, `the relay did not serve history segment ${summary.index}`)
          // A segment is immutable and named by its hash: what does not match it is not it.
          if (segmentHash(page.bytes) !== summary.hash)
            throw new ParleyError(ErrorCode.MALFORMED_FRAME, "a history segment does not match its hash")
          bytes = page.bytes
          await this.parts.segments.put(summary.hash, bytes)
        }
        const segment = decodeSegment(bytes)
        this.heldHashes.set(segment.index, summary.hash)
        this.hold(segment)
        return segment
      })().finally(() => this.fetching.delete(summary.index))
      this.fetching.set(summary.index, fetching)
    }
    return fetching
  }

  /**
   * Forgets the held segments the live document no longer names by the hash
   * they were fetched under (re-sealed without purged messages, or dropped
   * with a deleted conversation): here, in the replica's sealed history and
   * in this device's cache. A re-sealed one is fetched again at once.
   */
  private dropStaleSegments(doc: Y.Doc): void {
    if (this.gen?.doc !== doc) return
    const named = new Map(sealedSegments(doc).map((s) => [s.index, s]))
    for (const [index, hash] of this.heldHashes) {
      const summary = named.get(index)
      if (summary?.hash === hash) continue
      this.held.delete(index)
      this.heldHashes.delete(index)
      sealedHistory(doc).remove(index)
      void this.parts.segments.delete(hash)
      // Held before, so shown before: the re-sealed one takes its place (offline: when it is asked for).
      if (summary) this.fetchSegment(summary).catch(() => {})
    }
  }

  /** Adds a segment to the replica's sealed history; the unread count may become exact. */
  private hold(segment: Segment): void {
    this.held.set(segment.index, segment)
    sealedHistory(this.doc).add(segment)
    this.refreshUnread()
  }

  /**
   * Fetches the segment the user's read marker falls in, when it is sealed:
   * without it the unread count takes that whole segment as unread.
   */
  private fetchMarkerSegment(): void {
    const marker = markersOf(this.doc, this.user).read
    if (marker === 0 || marker >= sealedThrough(this.doc)) return
    const summary = sealedSegments(this.doc).find((s) => s.from <= marker && marker <= s.to)
    if (!summary || this.held.has(summary.index)) return
    this.fetchSegment(summary).catch(() => {
      // Offline or refused: counted as unread until a later attempt.
    })
  }

  /** A window of messages in canonical order: `{ last: n }`, or `before` / `after` / `around` an id. */
  messages(window: MessageWindow = { last: 50 }): ChatMessage[] {
    const listed: ChatMessage[] = listMessages(this.doc, window).map((view) => this.decorate(view))
    if (!("last" in window)) return listed
    // Messages waiting for uploads are the newest the user sees: at the end of a window that reaches the end.
    // One that another tab of this user has written meanwhile is listed once, as written.
    const index = messageIndex(this.doc)
    const waiting = this.parts.uploads?.pending().filter((m) => !index.records.has(m.id))
    return waiting?.length ? [...listed, ...waiting].slice(-window.last) : listed
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
    const messageId = parseMessageId(id)
    return (
      this.statuses.status(messageId) ??
      (this.lost.has(messageId) ? "failed" : this.parts.uploads?.view(messageId)?.status)
    )
  }

  /**
   * The user's messages that the relay refused and a resync could not
   * re-apply (they are no longer in the conversation), with the reason.
   */
  get refusedMessages(): ReadonlyMap<MessageId, ParleyError> {
    return this.lost
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
    this.parts.presence.activity()
    this.typingIndicator.typing()
  }

  /** Clears the user's typing signal (sending a message does it too). */
  stopTyping(): void {
    this.typingIndicator.stop()
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
    return this.typingIndicator.typingUsers
  }

  /** Closes this handle: the socket, timers and local database. Local data stays. */
  async close(): Promise<void> {
    if (this.closed) return
    if (this.current.state === "loading") {
      // Whoever awaits ready() learns that it will not be.
      const error = new ParleyError(ErrorCode.UNAVAILABLE, "the conversation was closed before it was ready")
      this.setState({ state: "unavailable", reason: error.code, error })
    }
    this.closed = true
    this.closing.abort()
    clearTimeout(this.deliveredTimer)
    this.parts.uploads?.close()
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

  /** Sending with files: checked now (as a write would be), then queued for upload. */
  private sendWithFiles(body: string, files: readonly Blob[], options: SendOptions): ChatMessage {
    const uploads = this.uploadsOrThrow()
    const view = this.write(() => {
      assertAllowed(canSendMessage(this.user, this.role, this.user))
      // Refuse now what the write after the uploads would refuse (body, metadata): not after uploading.
      assertValid(checkMessageRecord, {
        id: newMessageId(),
        author: this.user,
        body,
        createdAt: this.parts.clock(),
        ...(options.type !== undefined && options.type !== "text" ? { type: options.type } : {}),
        ...(options.replyTo !== undefined ? { replyTo: options.replyTo } : {}),
        ...(options.attachments?.length ? { attachments: options.attachments } : {}),
        ...(options.metadata && Object.keys(options.metadata).length > 0
          ? { metadata: options.metadata }
          : {}),
        ...(options.priority !== undefined && options.priority !== "normal"
          ? { priority: options.priority }
          : {}),
      })
      return uploads.add({ body, files, ...options })
    })
    this.typingIndicator.stop()
    this.parts.presence.activity()
    return view
  }

  private uploadsOrThrow(): ConversationUploads {
    const uploads = this.parts.uploads
    if (!uploads) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "this client cannot upload files")
    return uploads
  }

  /** Lends the uploads this conversation's replica: they write the message once its files are up. */
  private attachUploads(): void {
    const uploads = this.parts.uploads
    if (!uploads) return
    uploads.attach({
      ready: () => !this.closed && this.current.state === "ready",
      online: () => !this.closed && this.connection.status === "online",
      participant: () => this.role !== undefined,
      write: (entry, attachments) => {
        this.write(() =>
          sendMessage(
            this.doc,
            this.user,
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
          ),
        )
        this.track(entry.messageId)
      },
      status: (id) => this.statuses.status(id) ?? (this.lost.has(id) ? "failed" : undefined),
      changed: (event) => {
        this.emit("upload", event)
        if (event.phase === "failed")
          this.emit("status", {
            messageId: event.messageId,
            status: "failed",
            ...(event.error ? { error: event.error } : {}),
          })
      },
    })
    this.on("status", () => uploads.settleWritten())
    this.on("state", ({ state }) => {
      if (state.state === "ready") uploads.wake()
      // As for unsaved messages (see bind): a refused token or a damaged conversation may come back; the rest will not.
      else if (
        state.state === "unavailable" &&
        state.reason !== ErrorCode.UNAUTHORIZED &&
        state.reason !== ErrorCode.DAMAGED &&
        state.reason !== ErrorCode.NOT_FOUND
      )
        uploads.failAll(state.error)
    })
  }

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
    if (this.closed || !this.canLeaveState(state)) return
    this.current = state
    if (state.state === "ready") this.parts.onReady(state.conversation)
    this.emit("state", { state })
  }

  /**
   * Unavailable is final, except "not found" (the conversation may still be
   * created, or arrive, later) and "unauthorized" (a later `client.connect()`
   * with a working token brings it back once its connection is online).
   */
  private canLeaveState(next?: ConversationState): boolean {
    if (this.current.state !== "unavailable" || this.current.reason === ErrorCode.NOT_FOUND) return true
    if (this.current.reason === ErrorCode.UNAUTHORIZED)
      return next?.state === "unavailable" || this.connection.status === "online"
    return false
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
    // Only these change a status or the unread count; skipping the rest keeps a send O(1).
    if (events.some((e) => e.type === "messages.sequenced" || (isMarker(e) && e.user !== this.user)))
      this.refreshStatuses()
    if (events.some((e) => countsForUnread(e, this.user))) this.refreshUnread()
    if (!local) this.scheduleDelivered()
  }

  private refreshUnread(): void {
    this.fetchMarkerSegment()
    const unread = this.unreadCount
    if (unread === this.unread) return
    this.unread = unread
    this.emit("unread", { count: unread })
  }

  /**
   * The relay refused an update. It stores an update whole or not at all, and
   * every later update of this replica builds on the refused one, so the
   * replica cannot recover by itself: resync (see {@link resync}).
   */
  private refused(error: ParleyError): void {
    // The live document started a new epoch: rebuilding is the ordinary way onto it, not an error.
    if (error.rule === Rule.epoch) {
      void this.resync().catch((failure: unknown) => this.emit("error", { error: toParleyError(failure) }))
      return
    }
    this.emit("error", { error })
    if (this.resyncsWithoutSave >= MAX_RESYNCS_WITHOUT_SAVE) {
      // Resyncing did not help (the relay refuses even the re-applied work): give up on what is unsaved.
      for (const id of this.statuses.refuseUnsaved(error)) this.track(id)
      this.refreshStatuses()
      return
    }
    void this.resync().catch((failure: unknown) => {
      this.emit("error", { error: toParleyError(failure) })
      // Try again on the next connect; meanwhile, show what is stuck as failed.
      for (const id of this.statuses.refuseUnsaved(error)) this.track(id)
      this.refreshStatuses()
      if (this.parts.online()) this.connection.start()
    })
  }

  /**
   * Replaces the replica with the relay's state plus this user's pending work
   * that the rules still allow (shared `rebasePendingWork`). The refused work
   * is reported: `error` events with the change, and `failed` statuses for
   * messages. The new document gets a new Yjs client id; IndexedDB is
   * rewritten in one transaction, so a reload sees the old or the new replica,
   * never a mix.
   */
  private async resync(): Promise<void> {
    if (this.resyncing || this.closed) return
    this.resyncing = true
    this.resyncsWithoutSave++
    const old = this.gen
    old.connection.stop()
    try {
      const fresh = new Y.Doc()
      try {
        // Pending work on messages sealed meanwhile needs their segments: fetched over the same connection.
        await this.parts.fetchRelayState(fresh, this.closing.signal, (connection) =>
          this.fetchSegmentsForPendingWork(old.doc, fresh, connection),
        )
      } catch (error) {
        fresh.destroy()
        throw error
      }
      if (this.closed || this.gen !== old) {
        fresh.destroy()
        return
      }
      // Pending work on sealed messages is re-applied against the segments this replica holds.
      for (const segment of this.held.values()) sealedHistory(fresh).add(segment)
      // Synchronous from here to the swap: no write of the user can fall between the two documents.
      const result = rebasePendingWork(old.doc, fresh, this.user)
      old.dispose()
      // Other tabs of this user still hold the refused changes and would hand them back over the
      // cross-tab channel; the rebuilt replica talks to the relay only, until the next load.
      this.gen = this.bind(fresh, old.replica, false)
      const snapshot = Y.encodeStateAsUpdate(fresh)
      for (const { what, error } of result.failed) {
        if (what.kind === "message.send") this.lost.set(what.id, error)
      }
      this.tracked.clear()
      this.trackOwnMessages()
      this.settle()
      this.emit("resynced", { reapplied: result.reapplied, failed: result.failed })
      for (const { what, error } of result.failed) {
        if (what.kind === "message.send") this.emit("status", { messageId: what.id, status: "failed", error })
        this.emit("error", { error, change: what })
      }
      this.emit("change", { events: [], local: false })
      this.refreshUnread()
      await old.replica.replaceWith(snapshot)
      await old.replica.destroy()
      old.doc.destroy()
      if (this.closed || this.gen.doc !== fresh) return
      this.gen.replica = this.parts.openReplica(fresh)
      await this.gen.replica.loaded
      if (!this.closed && this.gen.doc === fresh && this.parts.online()) this.gen.connection.start()
    } finally {
      this.resyncing = false
    }
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
    // A deleted conversation is closed to writes (rule `conversation-deleted`): nothing to acknowledge.
    if (getConversation(this.doc)?.deletedAt !== undefined) return
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
