import {
  type Attachment,
  type ConversationId,
  type ConversationKind,
  createConversation,
  DEFAULT_UPDATE_PART_LIMITS,
  directConversationId,
  ErrorCode,
  getConversation,
  inboxDocumentName,
  type Metadata,
  newConversationId,
  ParleyError,
  type Profile,
  type ProfileInput,
  parseConversationId,
  parseUserId,
  Rule,
  reopenConversation,
  toParleyError,
  type UserId,
} from "@parley/shared"
import * as bc from "lib0/broadcastchannel"
import { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import { AttachmentUrls, type AttachmentVariant } from "./attachments/attachment-urls.js"
import { ConversationUploads, type UploadRetryOptions } from "./attachments/conversation-uploads.js"
import type { RelayHttp } from "./attachments/http.js"
import { type OutboxStore, openOutboxStore } from "./attachments/outbox-store.js"
import {
  type ConnectionStatus,
  DocumentConnection,
  type ReconnectOptions,
  type UpdateParts,
  type WebSocketConstructor,
} from "./connection.js"
import { Conversation, LOCAL } from "./conversation.js"
import { Emitter } from "./emitter.js"
import { openSegmentCache, type SegmentCache } from "./history-cache.js"
import { Inbox } from "./inbox.js"
import { deleteDatabasesOf, deleteLocalData, localDataChannel } from "./local-data.js"
import { dropDeletedContent, forgetCachedHistory } from "./local-purge.js"
import { mergePresence, PresenceSettings, type UserPresence } from "./presence.js"
import { claimsOfToken, Profiles } from "./profiles.js"
import { ownSockets, type SocketOpener } from "./provider/document-socket.js"
import {
  type BrowserPushSubscription,
  httpOriginOf,
  type PushDevice,
  PushRegistrations,
  type PushSubscriptionInput,
} from "./push.js"
import { SocketMux } from "./socket-mux.js"
import {
  LocalDatabase,
  type LocalReplica,
  persistDocument,
  replicaName,
  rewriteStored,
  type StorageKind,
} from "./storage.js"
import { resolveToken, type TokenSource, userOfToken } from "./token.js"
import { type UnsavedWork, unsavedError, waitUntilSaved } from "./unsaved.js"

/** Options of {@link createChatClient}. */
export interface ChatClientOptions {
  /** The relay's WebSocket URL, e.g. `wss://chat.example.com`. */
  readonly url: string
  /**
   * The token, or a function returning one; called on every connect, after the
   * relay refuses a token, and ahead of each open connection's token expiry.
   */
  readonly token: TokenSource
  /** Where replicas live: `"indexeddb"` (default; survives reloads) or `"memory"`. */
  readonly storage?: StorageKind
  /** The WebSocket constructor; defaults to the global one (pass `ws`'s in Node 20). */
  readonly WebSocket?: WebSocketConstructor
  /**
   * The user id, when the app knows it. Lets the client start offline without
   * calling the token function; otherwise it is read from the token's `sub`.
   */
  readonly user?: string
  /** Connect at once (default true). `false` starts offline until {@link ChatClient.connect}. */
  readonly connect?: boolean
  /** Reconnect backoff. */
  readonly reconnect?: ReconnectOptions
  /** The clock (ms since epoch), for typing signals; injectable for tests. Default `Date.now`. */
  readonly clock?: () => number
  /** How long to batch arriving messages before advancing the delivered marker, in ms (default 500). */
  readonly deliveredDelay?: number
  /**
   * Carry the inbox and every conversation over one WebSocket (default true;
   * see PROTOCOL.md, "Multiplexed sockets"). `false`: one socket per document,
   * the stock y-websocket URL scheme (for relays older than the multiplexed protocol).
   */
  readonly multiplex?: boolean
  /** Backoff of file uploads after a transient failure (default 1 s doubling up to 30 s). */
  readonly uploads?: UploadRetryOptions
  /** The `fetch` of HTTP requests to the relay (uploads, attachment URLs); defaults to the global one. */
  readonly fetch?: typeof fetch
  /**
   * With `storage: "memory"`, how long {@link ChatClient.destroy} and
   * `Conversation.close()` wait by default for unsaved work to be saved by
   * the relay before dropping it (ms; default 5,000; 0: not at all). Ignored
   * with IndexedDB, where unsaved work stays on the device.
   */
  readonly closeTimeoutMs?: number
}

/** Options of {@link ChatClient.destroy}. */
export interface DestroyOptions {
  /**
   * How long to wait for unsaved work to be saved by the relay first (ms).
   * Default: `closeTimeoutMs` (5 s) with `storage: "memory"` or `deleteLocalData`, 0 with IndexedDB.
   */
  readonly timeoutMs?: number
  /**
   * Then remove everything the SDK stored on this device for the user (see
   * {@link deleteLocalData}): for a sign-out on a shared device. Unsaved work
   * is then lost as with `storage: "memory"`: the wait above, then it is
   * told (the resolved value and an `error` event). An app that must not
   * lose it awaits {@link ChatClient.flush} first and signs out only once it
   * resolves (or asks the user). The user's clients in other tabs stop too
   * (their `localDataDeleted` event). Default false: the data stays for the
   * user's next sign-in on this device.
   */
  readonly deleteLocalData?: boolean
}

/** Options of {@link ChatClient.flush}. */
export interface FlushOptions {
  /** How long to wait before rejecting (ms; default 10,000). */
  readonly timeoutMs?: number
}

/**
 * The client's connection status: `online` when the inbox or an open
 * conversation is synced with the relay, `connecting` while trying,
 * `offline` when not trying (disconnected, browser offline).
 */
export type ClientStatus = ConnectionStatus

/** A conversation this device knows (has opened or created), as recorded locally. */
export interface KnownConversation {
  readonly id: ConversationId
  readonly kind?: ConversationKind
  readonly title?: string
  /** When this device first saw it (ms since epoch). */
  readonly firstSeenAt: number
}

/** What to create with {@link ChatClient.createConversation}. */
export interface CreateGroupInput {
  /** Other participants; the creator is added as owner. */
  readonly participants: readonly string[]
  readonly title?: string
  readonly metadata?: Metadata
  /** The id to use (default: a new random one). */
  readonly id?: string
}

/** Events of a {@link ChatClient}, one payload object each. */
export interface ChatClientEvents {
  /** The connection status changed. */
  status: { status: ClientStatus }
  /** Something failed in the background (a refused frame, a token source failure, ...). */
  error: { error: ParleyError; conversationId?: ConversationId }
  /** The list of conversations this device knows changed. */
  conversations: { conversations: readonly KnownConversation[] }
  /** Someone's presence changed in one of the open conversations (see {@link ChatClient.presence}). */
  presence: { presence: readonly UserPresence[] }
  /** These users' profiles changed (in an open conversation, or the user's own; see {@link ChatClient.profileOf}). */
  profiles: { users: readonly UserId[] }
  /**
   * The user's local data was deleted from this device elsewhere (a sign-out
   * in another tab: `deleteLocalData`): this client is being destroyed, and
   * `unsaved` (what it held that the relay had not saved) is lost. The app
   * shows its signed-out screen.
   */
  localDataDeleted: { unsaved: readonly UnsavedWork[] }
}

const DIRECTORY = LocalDatabase.directory
/** Local document of the user's own inbox changes not yet reflected by the relay (never synced). */
const PENDING_INBOX = LocalDatabase.pendingInbox
/** Conversations opened at once to send what this device changed in them (see `sendChangedHere`). */
const MAX_BACKGROUND_CONVERSATIONS = 4

/**
 * The entry point of the SDK: opens conversations (replicas kept offline in
 * IndexedDB, synced with the relay when online) and reports the connection.
 * Create it with {@link createChatClient}.
 */
export class ChatClient extends Emitter<ChatClientEvents> {
  /** The signed-in user (the token's subject). */
  readonly user: UserId
  /**
   * The user's conversations across devices, maintained by the relay (title,
   * last message, unread count, mute); a local replica, so it works offline.
   */
  readonly inbox: Inbox
  private readonly inboxDoc = new Y.Doc()
  /** Device-local: the user's own inbox changes the relay has not reflected yet. */
  private readonly pendingInboxDoc = new Y.Doc()
  private readonly inboxAwareness: Awareness
  private readonly inboxConnection: DocumentConnection
  private readonly open = new Map<ConversationId, Conversation>()
  /**
   * Open conversations the relay refused on the user's removal (4403), with
   * whether the inbox has stopped listing them since: listed again after
   * that, the user was added back (see {@link readmitRefused}).
   */
  private readonly refused = new Map<ConversationId, boolean>()
  /** Conversations opened only to send what this device changed in them (see {@link sendChangedHere}), not by the app. */
  private readonly background = new Set<ConversationId>()
  /** Those of them done since the client last went online: not opened again until it goes online again. */
  private readonly sentHere = new Set<ConversationId>()
  /** Whether the locally stored inbox (which lists the conversations changed here and not yet sent) is loaded. */
  private inboxLoaded = false
  private readonly directoryDoc = new Y.Doc()
  private readonly directory: Y.Map<KnownConversation>
  /**
   * Deleted conversations (by the inbox) whose local copies this device has
   * purged without opening them (see {@link purgeDeleted}), with when.
   */
  private readonly purgedHere: Y.Map<number>
  /** Those being purged now ({@link destroy} waits for them). */
  private readonly purging = new Map<ConversationId, Promise<void>>()
  private readonly directoryReplica: LocalReplica
  /** The sealed history segments this device fetched, by hash (IndexedDB or memory). */
  private readonly segments: SegmentCache
  /** Opens document sockets: channels of {@link mux}, or real sockets. */
  private readonly sockets: SocketOpener
  /** How large each part of an update sent to the relay may be: narrowed for all conversations once a relay refuses one. */
  private readonly updateParts: UpdateParts = { limits: DEFAULT_UPDATE_PART_LIMITS }
  /** The one socket of every document, unless `multiplex: false`. */
  private readonly mux: SocketMux | undefined
  private readonly storage: StorageKind
  private readonly presenceSettings: PresenceSettings
  private readonly profiles: Profiles
  private wanted: boolean
  private browserOnline = true
  private current: ClientStatus = "offline"
  private storageFailure: ParleyError | undefined
  private destroyed = false
  private destroying: Promise<UnsavedWork[]> | undefined
  /** Whether {@link destroying} ends by deleting the user's local data. */
  private deletesLocalData = false
  /** Another tab deleted this user's local data: stop before writing it back (see {@link deleteLocalData}). */
  private readonly onLocalDataDeleted = (_data: unknown, origin: unknown) => {
    if (origin === this || this.destroyed) return
    const unsaved = this.unsaved()
    this.emit("localDataDeleted", { unsaved })
    // At once, even while a destroy() waits for unsaved work: that work is gone with the databases.
    const teardown = this.teardown()
    // A flush() waiting meanwhile rejects naming it (see flush).
    this.destroying ??= teardown.then(() => unsaved)
    // What this client wrote after the other tab deleted the databases (before the notice came) goes too.
    void teardown
      .then(() => deleteDatabasesOf(this.user))
      .catch((error: unknown) => console.warn("parley: could not delete this user's local data", error))
  }
  private pushRegistrations: PushRegistrations | undefined
  /** The user's messages waiting for file uploads, on this device (IndexedDB or memory). */
  private readonly outbox: OutboxStore
  /** The relay's HTTP API with the user's token (uploads, attachment URLs). */
  private readonly http: RelayHttp
  private readonly attachmentUrls: AttachmentUrls
  private tokenInFlight: Promise<string> | undefined
  /** Waits in progress, ended by destroy() so that none of their timers outlive the client. */
  private readonly cancels = new Set<() => void>()
  private readonly onBrowserOnline = () => this.setBrowserOnline(true)
  private readonly onBrowserOffline = () => this.setBrowserOnline(false)

  /** @internal Use {@link createChatClient}. */
  constructor(
    private readonly options: ChatClientOptions,
    user: UserId,
  ) {
    super()
    this.user = user
    this.storage = options.storage ?? "indexeddb"
    this.presenceSettings = new PresenceSettings(options.clock ?? Date.now)
    const WebSocketCtor = options.WebSocket ?? (globalThis.WebSocket as WebSocketConstructor | undefined)
    if (!WebSocketCtor)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        "no global WebSocket: pass one (e.g. from `ws`) as options.WebSocket",
      )
    this.mux = options.multiplex === false ? undefined : new SocketMux(options.url, WebSocketCtor)
    this.sockets = this.mux?.open ?? ownSockets(options.url, WebSocketCtor)
    this.wanted = options.connect ?? true
    this.directory = this.directoryDoc.getMap("conversations")
    this.purgedHere = this.directoryDoc.getMap("purged")
    this.directoryReplica = persistDocument(
      this.storage,
      replicaName(user, DIRECTORY),
      this.directoryDoc,
      this.storageFailed(),
    )
    this.segments = openSegmentCache(this.storage, user)
    bc.subscribe(localDataChannel(user), this.onLocalDataDeleted)
    this.outbox = openOutboxStore(this.storage, user)
    this.http = {
      origin: httpOriginOf(options.url),
      token: () => this.token(),
      fetch: options.fetch ?? ((...args) => fetch(...args)),
    }
    this.attachmentUrls = new AttachmentUrls(this.http, options.clock ?? Date.now)
    this.directory.observe(() => this.emit("conversations", { conversations: this.list() }))
    this.profiles = new Profiles(
      user,
      this.directoryDoc.getMap("profile"),
      this.directoryReplica.loaded,
      LOCAL,
      options.clock ?? Date.now,
    )
    this.profiles.on("changed", ({ users }) => this.emit("profiles", { users }))
    this.inboxAwareness = new Awareness(this.inboxDoc)
    // The inbox is read (and muted) here; nobody's presence lives in it.
    this.inboxAwareness.setLocalState(null)
    const inboxName = inboxDocumentName(user)
    const inboxConnection = new DocumentConnection({
      url: options.url,
      name: inboxName,
      doc: this.inboxDoc,
      awareness: this.inboxAwareness,
      user,
      token: () => this.token(),
      sockets: this.sockets,
      parts: this.updateParts,
      ...(options.reconnect ? { reconnect: options.reconnect } : {}),
    })
    this.inboxConnection = inboxConnection
    inboxConnection.on("status", () => this.updateStatus())
    inboxConnection.on("tokenFailed", ({ error }) => this.emit("error", { error }))
    inboxConnection.on("unavailable", ({ error }) => this.emit("error", { error }))
    this.inbox = new Inbox({
      doc: this.inboxDoc,
      replica: persistDocument(
        this.storage,
        replicaName(user, inboxName),
        this.inboxDoc,
        this.storageFailed(),
      ),
      connection: inboxConnection,
      origin: LOCAL,
      user,
      pending: {
        doc: this.pendingInboxDoc,
        replica: persistDocument(
          this.storage,
          replicaName(user, PENDING_INBOX),
          this.pendingInboxDoc,
          this.storageFailed(),
        ),
      },
    })
    this.inbox.on("change", () => {
      this.profiles.noteInbox(this.inbox.items)
      this.readmitRefused()
      if (this.inboxLoaded) this.purgeDeleted()
    })
    void this.inbox.loaded.then(() => {
      this.inboxLoaded = true
      this.purgeDeleted()
      if (!this.destroyed && this.wanted && this.browserOnline) {
        this.inbox.start()
        this.sendChangedHere()
      }
    })
    const win = (globalThis as { window?: Window }).window
    if (win && typeof win.addEventListener === "function") {
      this.browserOnline = globalThis.navigator?.onLine ?? true
      win.addEventListener("online", this.onBrowserOnline)
      win.addEventListener("offline", this.onBrowserOffline)
    }
  }

  /**
   * The presence of the user's contacts — everyone seen in the conversations
   * open on this client — merged across them (online beats away beats
   * offline; the latest `lastSeen`). Open a conversation to follow its
   * people; users who hide their presence never appear. Sorted by user id.
   */
  get presence(): readonly UserPresence[] {
    const views = new Map<UserId, UserPresence[]>()
    for (const conversation of this.open.values())
      for (const view of conversation.presence) {
        const list = views.get(view.user) ?? []
        list.push(view)
        views.set(view.user, list)
      }
    return [...views.keys()].sort().map((user) => mergePresence(views.get(user)!)!)
  }

  /** One contact's presence (see {@link presence}); `offline` without `lastSeen` when never seen. */
  presenceOf(user: string): UserPresence {
    return this.presence.find((p) => p.user === user) ?? { user: user as UserId, status: "offline" }
  }

  /** Whether others see this user's presence (default true). */
  get presenceVisible(): boolean {
    return this.presenceSettings.visible
  }

  /**
   * The privacy switch: `false` hides this user's presence in every
   * conversation (nothing is published; typing indicators are not sent
   * either), `true` shows it again.
   */
  setPresenceVisible(visible: boolean): void {
    this.presenceSettings.setVisible(visible)
  }

  /**
   * Tells others the user is active (throttled: call it on any interaction).
   * Typing and sending do it too; without it, a user shows as away after a while.
   */
  active(): void {
    this.presenceSettings.activity()
  }

  /**
   * The user's own profile (display name and picture): by default from the
   * token's `name` and `picture` claims, then as set with {@link setProfile}.
   * Others see it in the conversations they share with the user.
   */
  get profile(): Profile {
    return this.profiles.own
  }

  /**
   * Sets the user's display name and picture (an `https:` URL, or "" for
   * none). Written at once into every open conversation the user takes part
   * in, and into each other one when it next opens (on any of their
   * devices); until then its people see the previous profile. Works offline.
   * Rejects with INVALID_ARGUMENT for a name over 64 characters or with
   * control characters, or a picture that is not an `https:` URL (≤ 512 characters).
   */
  setProfile(input: ProfileInput): Promise<Profile> {
    this.assertAlive()
    return this.profiles.set(input)
  }

  /**
   * How `user` is shown: their profile in the open conversations (the most
   * recent one they set), else the name the inbox carries for them (the first
   * participants of each conversation), else their id as name. The `profiles`
   * event says when it changes.
   */
  profileOf(user: string): Profile {
    return this.profiles.profileOf(parseUserId(user))
  }

  /** The connection status. */
  get status(): ClientStatus {
    return this.current
  }

  /**
   * Set once local storage failed (no IndexedDB, private mode, a quota, a
   * damaged entry): the replicas it concerns live in memory, so what this
   * device has not sent yet is lost if the page closes. Told as an `error`
   * event too (`STORAGE_UNAVAILABLE`), which may come before your listener.
   */
  get localStorageFailure(): ParleyError | undefined {
    return this.storageFailure
  }

  /** What a replica's local storage failure is told as (see {@link localStorageFailure}). */
  private storageFailed(conversationId?: ConversationId): (error: unknown) => void {
    return (cause) => {
      const error = new ParleyError(
        ErrorCode.STORAGE_UNAVAILABLE,
        `local storage failed (${cause instanceof Error ? cause.message : String(cause)}): this device keeps the replica in memory, and loses what it has not sent if the page closes`,
        { cause },
      )
      this.storageFailure ??= error
      this.emit("error", { error, ...(conversationId ? { conversationId } : {}) })
    }
  }

  /**
   * Opens a conversation by id and returns its handle at once, in state
   * `loading`; `await handle.ready()` for the local replica (or, on a device
   * that never had it, the relay's copy). Opening twice returns the same handle.
   */
  conversation(id: string): Conversation {
    this.assertAlive()
    const conversationId = parseConversationId(id)
    const existing = this.open.get(conversationId)
    // Opened in the background to send its pending work: the app's from now on.
    this.background.delete(conversationId)
    if (existing) return existing
    const connect = (document: Y.Doc, awareness: Awareness, shareWithTabs: boolean) =>
      new DocumentConnection({
        url: this.options.url,
        name: conversationId,
        doc: document,
        awareness,
        user: this.user,
        shareWithTabs,
        token: () => this.token(),
        sockets: this.sockets,
        parts: this.updateParts,
        ...(this.options.reconnect ? { reconnect: this.options.reconnect } : {}),
      })
    const conversation = new Conversation({
      id: conversationId,
      user: this.user,
      openReplica: (document, onReplaced) =>
        persistDocument(
          this.storage,
          replicaName(this.user, conversationId),
          document,
          this.storageFailed(conversationId),
          onReplaced,
        ),
      connect,
      fetchRelayState: (document, signal, prepare) => fetchRelayState(document, connect, signal, prepare),
      segments: this.segments,
      presence: this.presenceSettings,
      uploads: new ConversationUploads({
        conversationId,
        user: this.user,
        store: this.outbox,
        http: this.http,
        ...(this.options.uploads ? { retry: this.options.uploads } : {}),
        ...(this.options.clock ? { clock: this.options.clock } : {}),
      }),
      deliveredDelay: this.options.deliveredDelay ?? 500,
      clock: this.options.clock ?? Date.now,
      keepsLocalData: this.storage !== "memory",
      closeWaitMs: this.closeTimeoutMs,
      online: () => this.wanted && this.browserOnline,
      onStatus: () => this.updateStatus(),
      onReady: (info) => this.remember(conversationId, info.kind, info.title),
      onPurged: () => this.purgedInOpen(conversation),
      // Only this handle: the conversation may have been opened again while it closed.
      onClosing: () => {
        if (this.open.get(conversationId) === conversation) this.open.delete(conversationId)
      },
      onClose: () => {
        if (this.open.get(conversationId) === conversation) this.open.delete(conversationId)
        this.profiles.untrack(conversation)
        this.updateStatus()
      },
    })
    conversation.on("error", ({ error }) => {
      // Sent in the background and deleted meanwhile: told once, by the background send (see `sendChangedHere`).
      if (this.background.has(conversationId) && error.rule === Rule.conversationDeleted) return
      this.emit("error", { error, conversationId })
    })
    conversation.on("state", ({ state }) => {
      if (state.state === "unavailable" && state.reason === ErrorCode.FORBIDDEN)
        this.refused.set(
          conversationId,
          !this.inbox.items.some((item) => item.conversationId === conversationId),
        )
    })
    this.inbox.track(conversation)
    // The relay acknowledged what was sent while open (it acknowledges in order): no background send
    // owed for it (see sendChangedHere). Offline, nothing is acknowledged and the mark stays.
    const watchSaved = () =>
      conversation.connection.on("saved", () => {
        // Only once it all is: closed with part of it unsaved, it is sent in the background after a reload.
        if (this.inbox.unsentHere(conversationId) && !conversation.hasUnsaved)
          this.inbox.sentHere(conversationId)
      })
    let offSaved = watchSaved()
    conversation.on("resynced", () => {
      offSaved()
      offSaved = watchSaved()
    })
    conversation.on("presence", () => this.emit("presence", { presence: this.presence }))
    this.profiles.track(conversation)
    this.open.set(conversationId, conversation)
    return conversation
  }

  /** Creates a group conversation (works offline) and returns it, ready. */
  async createConversation(input: CreateGroupInput): Promise<Conversation> {
    const id = input.id === undefined ? newConversationId() : parseConversationId(input.id)
    const conversation = this.conversation(id)
    conversation.creating = true
    try {
      await this.loaded(conversation)
    } finally {
      conversation.creating = false
    }
    createConversation(
      conversation.doc,
      this.user,
      {
        kind: "group",
        id,
        participants: input.participants.map(parseUserId),
        ...(input.title !== undefined ? { title: input.title } : {}),
        ...(input.metadata !== undefined ? { metadata: input.metadata } : {}),
      },
      { origin: LOCAL },
    )
    return conversation.ready()
  }

  /**
   * The direct conversation with `other`, found or created. Its id derives from
   * the two users, so both sides (even offline, even concurrently) reach the
   * same conversation. When online, the relay's copy is awaited briefly
   * (`waitMs`) before creating locally. A deleted one is reopened (shared
   * `reopenConversation`): empty, since its history was purged with the
   * deletion, and open to both users again, also to one who left it.
   */
  async directConversation(other: string, waitMs = 2_000): Promise<Conversation> {
    const otherUser = parseUserId(other)
    const conversation = this.conversation(directConversationId([this.user, otherUser]))
    conversation.creating = true
    try {
      return await this.findOrCreateDirect(conversation, otherUser, waitMs)
    } finally {
      conversation.creating = false
    }
  }

  private async findOrCreateDirect(conversation: Conversation, otherUser: UserId, waitMs: number) {
    await this.loaded(conversation)
    if (!getConversation(conversation.doc) && this.wanted && this.browserOnline) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.cancels.delete(done)
          clearTimeout(timer)
          offState()
          offStatus()
          resolve()
        }
        const timer = setTimeout(done, waitMs)
        this.cancels.add(done)
        const offState = conversation.on("state", done)
        const offStatus = conversation.connection.on("status", ({ status }) => {
          if (status === "online") done()
        })
      })
    }
    this.assertAlive()
    const info = getConversation(conversation.doc)
    if (!info) {
      createConversation(
        conversation.doc,
        this.user,
        { kind: "direct", participants: [otherUser] },
        { origin: LOCAL },
      )
    } else if (info.deletedAt !== undefined) {
      // The user asked to talk to `other`: the pair's only id is theirs again, empty (its history was
      // purged with the deletion). Offline too: the reopen goes out with what is written after it.
      reopenConversation(conversation.doc, this.user, { origin: LOCAL })
    }
    return conversation.ready()
  }

  /** The conversations this device knows (opened or created here), most recent first. */
  async knownConversations(): Promise<KnownConversation[]> {
    await this.directoryReplica.loaded
    return this.list()
  }

  /**
   * Goes online: opens connections (and keeps reconnecting) for every open
   * conversation, including those that gave up after the relay refused the token.
   */
  connect(): void {
    this.assertAlive()
    this.wanted = true
    if (this.browserOnline) {
      this.inbox.start()
      for (const conversation of this.open.values()) conversation.connection.start()
      this.sentHere.clear()
      this.sendChangedHere()
    }
    this.updateStatus()
  }

  /**
   * Serves again an open conversation the relay refused on the user's
   * removal once the relay's inbox lists it again after dropping it (added
   * back): before, its handle stayed unavailable until the app reopened it.
   */
  private readmitRefused(): void {
    if (this.refused.size === 0) return
    const listed = new Set(this.inbox.items.map((item) => item.conversationId))
    for (const [id, dropped] of this.refused) {
      const conversation = this.open.get(id)
      if (conversation?.state.state !== "unavailable") this.refused.delete(id)
      else if (!listed.has(id)) this.refused.set(id, true)
      else if (dropped) {
        this.refused.delete(id)
        conversation.readmit()
      }
    }
  }

  /**
   * Opens, in the background, the conversations this device changed (sent,
   * read, edited ...) whose inbox entries the relay has not caught up with and
   * that the app has not opened, so that their pending work goes out now:
   * after a reload, only open conversations connect, and a read or a message
   * made offline waited until the user opened that conversation again (an
   * outside probe). Each closes once the relay has everything it wrote,
   * unless the app opened it meanwhile.
   */
  private sendChangedHere(): void {
    if (this.destroyed || !this.wanted || !this.browserOnline) return
    for (const id of this.inbox.changedHere()) {
      // A few at a time: each takes one of the user's open documents on the relay, which the app's need.
      if (this.background.size >= MAX_BACKGROUND_CONVERSATIONS) return
      if (this.open.has(id) || this.sentHere.has(id)) continue
      let conversation: Conversation
      try {
        conversation = this.conversation(id)
      } catch (error) {
        // Not a conversation id (a damaged local entry): nothing to send.
        this.sentHere.add(id)
        this.emit("error", { error: toParleyError(error) })
        continue
      }
      this.background.add(id)
      const finish = (sent: boolean) => {
        if (!this.background.delete(id)) return
        this.sentHere.add(id)
        if (sent) this.inbox.sentHere(id)
        void conversation.close().then(() => this.sendChangedHere())
      }
      // Its sync sends everything the relay lacks; the relay's "saved" for it (before or after its
      // answer) says it is stored (a refusal turns it unavailable or rebuilds it instead).
      let saved = false
      const check = () => {
        if (saved && conversation.connection.synced) finish(true)
      }
      const attach = () => {
        saved = false
        conversation.connection.on("saved", () => {
          saved = true
          check()
        })
        conversation.connection.on("status", check)
      }
      attach()
      // Rebuilt after a refusal: its rebased work goes on a new connection.
      conversation.on("resynced", attach)
      // Deleted while this device was offline: its refused work is told by its statuses and the deletion
      // (as online), which nobody shows for this handle: told here, once, as a removal is below.
      conversation.on("resynced", ({ failed }) => {
        const { state } = conversation
        const refused = failed.find(
          ({ what, error }) => what.kind !== "marker" && error.rule === Rule.conversationDeleted,
        )
        if (!this.background.has(id) || !refused || state.state !== "ready") return
        if (state.conversation.deletedAt !== undefined)
          this.emit("error", { error: refused.error, conversationId: id })
      })
      // Refused (removed from it, deleted): nothing more to send.
      conversation.on("state", ({ state }) => {
        if (state.state !== "unavailable" || !this.background.has(id)) return
        // Nobody shows this handle: its refusal (removed or deleted while this device was offline, its
        // messages now `failed`) is told here, or the work written offline went nowhere without a word.
        // (A token refused is told once by the client; a damaged one keeps its work for when an operator
        // restored it.)
        if (state.reason !== ErrorCode.UNAUTHORIZED && state.reason !== ErrorCode.DAMAGED)
          this.emit("error", { error: state.error, conversationId: id })
        finish(state.reason !== ErrorCode.DAMAGED)
      })
    }
  }

  /** Goes offline: closes every connection. Everything keeps working locally; changes go out on {@link connect}. */
  disconnect(): void {
    this.wanted = false
    this.inbox.stop()
    for (const conversation of this.open.values()) conversation.connection.stop()
    this.updateStatus()
  }

  /**
   * The user's Web Push registrations on the relay (over HTTP, with the
   * user's token): the relay's public key to subscribe with, and this
   * device's subscription to register or remove.
   */
  get push(): PushRegistrations {
    this.pushRegistrations ??= new PushRegistrations(
      httpOriginOf(this.options.url),
      () => this.token(),
      undefined,
      (error) => this.emit("error", { error }),
    )
    return this.pushRegistrations
  }

  /**
   * Registers this device's Web Push subscription (from
   * `registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: await client.push.publicKey() })`)
   * under `device`, a name stable per installation; the relay then pushes
   * messages to it while the user is not in the conversation.
   */
  registerPush(
    device: string,
    subscription: PushSubscriptionInput | BrowserPushSubscription,
  ): Promise<PushDevice> {
    return this.push.register(device, subscription)
  }

  /** Stops pushing to `device`; resolves false when the relay had no such device. */
  unregisterPush(device: string): Promise<boolean> {
    return this.push.unregister(device)
  }

  /**
   * A URL to show or download an attachment with (`<img src>`, `<a href>`):
   * for a file stored by the relay, a short-lived signed URL that only works
   * for participants of its conversation, cached until shortly before it
   * expires; `variant: "thumbnail"` for an image's thumbnail. Anything hosted
   * elsewhere is returned as it is. Rejects with NOT_FOUND when the user may
   * not see the attachment (or it is gone), UNAVAILABLE when offline.
   */
  attachmentUrl(attachment: Attachment | string, variant: AttachmentVariant = "file"): Promise<string> {
    return this.attachmentUrls.url(attachment, variant)
  }

  /** The URL {@link attachmentUrl} would give, when it has a fresh one cached (no request); else undefined. */
  cachedAttachmentUrl(
    attachment: Attachment | string,
    variant: AttachmentVariant = "file",
  ): string | undefined {
    return this.attachmentUrls.cached(attachment, variant)
  }

  /** When the cached URL of `attachment` is renewed (ms since epoch), if one is cached: for views that keep one. */
  attachmentUrlRenewsAt(attachment: Attachment | string): number | undefined {
    return this.attachmentUrls.renewAt(attachment)
  }

  /** How long destroy and close wait for unsaved work by default (see {@link ChatClientOptions.closeTimeoutMs}). */
  private get closeTimeoutMs(): number {
    return this.storage === "memory" ? (this.options.closeTimeoutMs ?? 5_000) : 0
  }

  /** Whether {@link unsaved} has anything, cheaply (polled while waiting). */
  private hasUnsaved(): boolean {
    return (
      this.inboxConnection.hasUnsaved ||
      [...this.open.values()].some((c) => c.hasUnsaved) ||
      this.untold().length > 0
    )
  }

  /**
   * Conversations this device changed whose work may not have reached the
   * relay and that no loaded handle tells of yet: not open (their background
   * send waits its turn, see `sendChangedHere`) or still loading their
   * replica. Right after a reload that is all of them: `unsaved()` said `[]`
   * and `flush()` resolved at once for the ~150 ms before the background
   * opens had loaded, a second before the relay had 1,500 messages written
   * offline (an outside probe). Before the local inbox is loaded, which
   * conversations these are is not known: the inbox counts as unsaved then.
   */
  private untold(): UnsavedWork[] {
    if (!this.inboxLoaded) return this.storage === "memory" ? [] : [{ messageIds: [], changes: [] }]
    return this.inbox
      .changedHere()
      .filter(
        (id) =>
          this.inbox.unsentHere(id) &&
          !this.sentHere.has(id) &&
          (this.open.get(id)?.state.state ?? "loading") === "loading",
      )
      .map((conversationId) => ({ conversationId, messageIds: [], changes: [] }))
  }

  /**
   * What the user wrote on this client that the relay has not acknowledged
   * as saved, per document: the open conversations (messages, with those
   * waiting for file uploads, and other changes) and the inbox (mutes);
   * and conversations changed on this device (before a reload, say) whose
   * work may not have reached the relay and that are not open or still
   * loading (no `messageIds` or `changes` known yet: they are sent in the
   * background, see the README). Empty when everything is saved. See {@link flush}.
   */
  unsaved(): UnsavedWork[] {
    const work: UnsavedWork[] = []
    if (this.inboxConnection.hasUnsaved) work.push({ messageIds: [], changes: [] })
    for (const conversation of this.open.values()) {
      const pending = conversation.unsaved()
      if (pending) work.push(pending)
    }
    const told = new Set(work.map((w) => w.conversationId))
    for (const untold of this.untold()) if (!told.has(untold.conversationId)) work.push(untold)
    return work
  }

  /**
   * Resolves once everything written so far in every open conversation (and
   * the inbox) is saved by the relay: acknowledged as durably stored (each
   * message `sent`), so that destroying the client or losing the device
   * loses nothing. A bot on `storage: "memory"` awaits it before
   * {@link destroy}. Rejects after `timeoutMs` (default 10 s) with the
   * retryable TIMEOUT (connected, the relay slow to acknowledge) or
   * UNAVAILABLE (not connected), its message naming what is unsaved
   * ({@link unsaved} lists it); the work stays pending and keeps going out.
   * Messages the relay refused are not waited for: they are `failed`.
   */
  async flush(options: FlushOptions = {}): Promise<void> {
    this.assertAlive()
    const saved = await waitUntilSaved(() => this.hasUnsaved(), options.timeoutMs ?? 10_000, this.cancels)
    if (saved) return
    if (this.destroying) {
      // destroy() began meanwhile: its own wait decides, and what it found unsaved is what this could not
      // save (before, this rejected "destroyed" while destroy() saved everything).
      const left = await this.destroying
      if (left.length === 0) return
      throw unsavedError(left, false, "flush")
    }
    this.assertAlive()
    throw unsavedError(this.unsaved(), this.current === "online", "flush")
  }

  /**
   * Closes every conversation, socket, timer and database handle, and
   * resolves with what the relay had not saved (empty when everything was).
   *
   * With IndexedDB storage (the default), unsaved work stays in the
   * device's replicas and is sent by the next client of this user that
   * opens those conversations (the inbox, the list of known conversations,
   * waiting files and refused messages stay too). With `storage: "memory"`
   * nothing outlives the client: destroy first waits, while the relay is
   * within reach (the client connected, no reconnect failed), up to
   * `timeoutMs` (default `closeTimeoutMs`, 5 s) for the unsaved work to be
   * saved; what is still unsaved then is lost, and told as an `error`
   * event (TIMEOUT or UNAVAILABLE, naming it) besides the resolved value.
   * Calling it again returns the same promise (which then also deletes
   * the local data if asked to). Never rejects, but with `deleteLocalData`
   * when a database could not be deleted (STORAGE_UNAVAILABLE; the client is
   * destroyed all the same: call {@link deleteLocalData} to try again).
   *
   * With `deleteLocalData`, nothing of the user stays on the device: see
   * {@link DestroyOptions.deleteLocalData}.
   */
  destroy(options: DestroyOptions = {}): Promise<UnsavedWork[]> {
    const deleting = options.deleteLocalData === true
    if (!this.destroying) {
      this.deletesLocalData = deleting
      const wait = deleting ? (this.options.closeTimeoutMs ?? 5_000) : this.closeTimeoutMs
      this.destroying = this.destroyOnce(options.timeoutMs ?? wait, deleting)
    } else if (deleting && !this.deletesLocalData) {
      this.deletesLocalData = true
      this.destroying = this.destroying.then(async (unsaved) => {
        await deleteLocalData(this.user)
        return unsaved
      })
    }
    return this.destroying
  }

  private async destroyOnce(timeoutMs: number, deleting: boolean): Promise<UnsavedWork[]> {
    if (timeoutMs > 0 && !this.destroyed)
      await waitUntilSaved(
        () => this.hasUnsaved(),
        timeoutMs,
        new Set(),
        () =>
          this.wanted &&
          this.browserOnline &&
          [this.inboxConnection, ...[...this.open.values()].map((c) => c.connection)].some(
            (connection) => connection.progressing,
          ),
      )
    const unsaved = this.destroyed ? [] : this.unsaved()
    if (unsaved.length > 0 && (this.storage === "memory" || deleting))
      this.emit("error", {
        error: unsavedError(
          unsaved,
          this.current === "online",
          deleting ? "deleted the local data" : 'destroyed a client with storage "memory"',
        ),
      })
    await this.teardown()
    // After the teardown: none of this client's replicas is left to write a database back.
    if (deleting) await deleteLocalData(this.user)
    return unsaved
  }

  private async teardown(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    this.wanted = false
    bc.unsubscribe(localDataChannel(this.user), this.onLocalDataDeleted)
    const win = (globalThis as { window?: Window }).window
    if (win && typeof win.removeEventListener === "function") {
      win.removeEventListener("online", this.onBrowserOnline)
      win.removeEventListener("offline", this.onBrowserOffline)
    }
    for (const cancel of [...this.cancels]) cancel()
    await Promise.all([...this.open.values()].map((conversation) => conversation.closeQuietly()))
    await Promise.all(this.purging.values())
    await this.inbox.destroy()
    this.profiles.destroy()
    this.inboxAwareness.destroy()
    this.inboxDoc.destroy()
    await this.directoryReplica.destroy()
    this.directoryDoc.destroy()
    this.segments.close()
    this.outbox.close()
    this.mux?.destroy()
    // Nothing connects any more: an app's indicator said "connecting" (or "online") for good.
    if (this.current !== "offline") {
      this.current = "offline"
      this.emit("status", { status: "offline" })
    }
    this.removeAllListeners()
  }

  /**
   * A token for a new connection. Connections opening at the same moment (all
   * conversations after a network change) share one call of the token
   * function; any later connect calls it again, so a refused token is never reused.
   */
  private token(): Promise<string> {
    this.tokenInFlight ??= resolveToken(this.options.token)
      .then((token) => {
        // Writes are checked locally as this.user; a token for someone else would make the relay see another author.
        const subject = userOfToken(token)
        if (subject !== this.user)
          throw new ParleyError(ErrorCode.UNAUTHORIZED, `the token is for ${subject}, not ${this.user}`)
        // The token's name and picture claims are the profile's default until the user edits it.
        void this.profiles.noteClaims(claimsOfToken(token))
        // Every connect and every refresh ahead of expiry come through here: this device's push
        // registration is renewed with the fresh token, or it would get only wake-ups once the one
        // it was registered with expired.
        this.pushRegistrations?.renewWith(token)
        return token
      })
      .finally(() => {
        this.tokenInFlight = undefined
      })
    return this.tokenInFlight
  }

  private async loaded(conversation: Conversation): Promise<void> {
    await conversation.whenLoaded
    if (conversation.state.state === "unavailable" && conversation.state.reason !== ErrorCode.NOT_FOUND)
      throw conversation.state.error
  }

  /**
   * An open conversation's replica lost content to a deletion: the inbox's
   * stored previews may hold it too, and a deleted conversation's title is
   * in the list of known conversations.
   */
  private purgedInOpen(conversation: Conversation): void {
    if (this.destroyed) return
    this.inbox.purgedIn(conversation.id)
    if (conversation.info?.deletedAt !== undefined)
      void this.directoryReplica.loaded.then(() => {
        if (!this.destroyed) this.forgetTitle(conversation.id)
      })
  }

  /** Empties the title kept of deleted conversation `id` in the (loaded) list of known ones, and merges that list. */
  private forgetTitle(id: ConversationId): void {
    const known = this.directory.get(id)
    if (!known?.title) return
    this.directory.set(id, { ...known, title: "" })
    void this.directoryReplica.compact()
  }

  /**
   * Purges the local copies of the conversations the inbox says were
   * deleted and this client does not have open, so that a deleted
   * conversation the app never opens again leaves this device too (before,
   * its text stayed in IndexedDB for good: an outside probe): its replica
   * loses what the relay's purge removed (see `dropDeletedContent`), the
   * sealed history it cached and its title go, and so does the device's own
   * inbox entry of it. Once per conversation (recorded with the list of
   * known conversations). One with work written here and not sent yet is
   * left to its background send (see {@link sendChangedHere}), which tells
   * that work refused; its replica then merges the relay's purge as an open
   * one does.
   */
  private purgeDeleted(): void {
    if (this.destroyed || this.storage === "memory") return
    for (const item of this.inbox.items) {
      const id = item.conversationId
      if (!item.deleted || this.purgedHere.has(id) || this.open.has(id) || this.purging.has(id)) continue
      if (this.inbox.unsentHere(id)) continue
      const purge = this.purgeStoredCopy(id)
        // Not recorded as done: tried again at the next start.
        .catch((error: unknown) =>
          console.warn("parley: could not purge a deleted conversation's local copy", error),
        )
        .finally(() => this.purging.delete(id))
      this.purging.set(id, purge)
    }
  }

  private async purgeStoredCopy(id: ConversationId): Promise<void> {
    await this.directoryReplica.loaded
    if (this.purgedHere.has(id)) return
    const named = await rewriteStored(replicaName(this.user, id), dropDeletedContent)
    if (named) await forgetCachedHistory(this.segments, named)
    this.inbox.forgetPending(id)
    this.inbox.compactStored()
    this.forgetTitle(id)
    this.purgedHere.set(id, Date.now())
  }

  private remember(id: ConversationId, kind: ConversationKind, title: string): void {
    void this.directoryReplica.loaded.then(() => {
      if (this.destroyed) return
      const known = this.directory.get(id)
      if (known && known.kind === kind && known.title === title) return
      this.directory.set(id, { id, kind, title, firstSeenAt: known?.firstSeenAt ?? Date.now() })
    })
  }

  private list(): KnownConversation[] {
    return [...this.directory.values()].sort((a, b) => b.firstSeenAt - a.firstSeenAt)
  }

  private setBrowserOnline(online: boolean): void {
    this.browserOnline = online
    if (online && this.wanted) this.inbox.start()
    else this.inbox.stop()
    for (const conversation of this.open.values()) {
      if (online && this.wanted) conversation.connection.start()
      else conversation.connection.stop()
    }
    if (online) this.sentHere.clear()
    this.sendChangedHere()
    this.updateStatus()
  }

  private updateStatus(): void {
    if (this.destroyed) return
    let status: ClientStatus = "offline"
    for (const connection of [this.inboxConnection, ...[...this.open.values()].map((c) => c.connection)]) {
      const s = connection.status
      if (s === "online") {
        status = "online"
        break
      }
      if (s === "connecting") status = "connecting"
    }
    if (status === this.current) return
    this.current = status
    this.emit("status", { status })
  }

  private assertAlive(): void {
    if (this.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "this client was destroyed")
  }
}

/** How long a resync waits for the relay's state. */
const FETCH_TIMEOUT_MS = 15_000

/** Fills `doc` with the relay's state over a one-off connection that shares nothing with other tabs. */
function fetchRelayState(
  doc: Y.Doc,
  connect: (doc: Y.Doc, awareness: Awareness, shareWithTabs: boolean) => DocumentConnection,
  signal: AbortSignal,
  prepare?: (connection: DocumentConnection) => Promise<void>,
): Promise<void> {
  const awareness = new Awareness(doc)
  // No presence of its own: this connection only reads.
  awareness.setLocalState(null)
  const connection = connect(doc, awareness, false)
  return new Promise<void>((resolve, reject) => {
    const aborted = () => finish(new ParleyError(ErrorCode.UNAVAILABLE, "the conversation was closed"))
    const finish = (error?: ParleyError) => {
      clearTimeout(timer)
      signal.removeEventListener("abort", aborted)
      connection.destroy()
      awareness.destroy()
      if (error) reject(error)
      else resolve()
    }
    const timer = setTimeout(
      () => finish(new ParleyError(ErrorCode.TIMEOUT, "the relay's state did not arrive in time")),
      FETCH_TIMEOUT_MS,
    )
    connection.on("status", ({ status }) => {
      if (status !== "online") return
      // Whatever else the caller needs over this connection (history segments), before it closes.
      if (prepare)
        prepare(connection).then(
          () => finish(),
          (error: unknown) => finish(toParleyError(error)),
        )
      else finish()
    })
    connection.on("unavailable", ({ error }) => finish(error))
    if (signal.aborted) return aborted()
    signal.addEventListener("abort", aborted)
    connection.start()
  })
}

/**
 * Creates a chat client. Resolves the token once to learn the user (unless
 * `options.user` is given), then opens nothing until asked.
 *
 * @example
 * const client = await createChatClient({ url: "wss://relay.example", token: () => fetchToken() })
 * const chat = await client.directConversation("bob")
 * chat.send("hi")
 */
export async function createChatClient(options: ChatClientOptions): Promise<ChatClient> {
  const user =
    options.user !== undefined ? parseUserId(options.user) : userOfToken(await resolveToken(options.token))
  return new ChatClient(options, user)
}
