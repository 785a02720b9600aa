import {
  CloseCode,
  DEFAULT_UPDATE_PART_LIMITS,
  ErrorCode,
  encodeDirectoryRequest,
  encodeEpochRequest,
  encodeHistoryRequest,
  encodeTokenRefresh,
  encodeView,
  type HistoryPage,
  ParleyError,
  type ParleyFrame,
  Rule,
  toParleyError,
  type UpdatePartLimits,
  UserLimit,
} from "@parley/shared"
import type { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import { Emitter } from "./emitter.js"
import type { SocketOpener, WebSocketConstructor } from "./provider/document-socket.js"
import { RELAY_ORIGIN, SyncSession } from "./provider/sync-session.js"
import { TabChannel } from "./provider/tab-channel.js"
import { expiryOfToken, refreshDelay } from "./token.js"

export type { WebSocketConstructor }

/** Connection status: `online` once synced with the relay, `connecting` while trying, `offline` when not trying. */
export type ConnectionStatus = "connecting" | "online" | "offline"

/** How long a history request made while the connection is still being made waits for it. */
const PAGE_WAIT_MS = 10_000
/** Reconnection timing: exponential backoff from `minDelay` up to `maxDelay`, with jitter. */
export interface ReconnectOptions {
  /** Delay before the first retry, in ms (default 250). */
  readonly minDelay?: number
  /** Longest delay between retries, in ms (default 10 000). */
  readonly maxDelay?: number
}

/** Events of a {@link DocumentConnection}. */
export interface ConnectionEvents {
  status: { status: ConnectionStatus }
  /** The relay durably saved everything up to this state vector. */
  saved: { stateVector: Map<number, number> }
  /** The relay refused a frame (the connection stays open). */
  refused: { error: ParleyError }
  /** What the relay sent does not fit the replica (someone else wrote under its client id): rebuild it. */
  diverged: { error: ParleyError }
  /**
   * Getting a token failed (once per run of failures with the same message),
   * or the relay refused {@link MAX_TOKEN_REFUSALS} fresh ones in a row
   * (UNAUTHORIZED, once per run of refusals, with the relay's reason); the
   * connection retries with backoff, and the document's changes wait.
   */
  tokenFailed: { error: ParleyError }
  /** The relay will not let this connection in again (4403, 4404, ...). */
  unavailable: { error: ParleyError }
  /**
   * The relay refused to open the document because the user has too many
   * open (4429 `documents-per-user`, across all their devices): told once per
   * run of refusals. The connection keeps trying with backoff, and gets in
   * once the user closes another conversation.
   */
  limited: { error: ParleyError }
}

/** What a {@link DocumentConnection} needs. */
export interface ConnectionOptions {
  /** The relay's URL: with the user, it names the channel shared with the user's other tabs. */
  readonly url: string
  readonly name: string
  readonly doc: Y.Doc
  readonly awareness: Awareness
  /** The user: cross-tab updates are shared only between clients of the same user. */
  readonly user: string
  /** Exchange updates with the user's other tabs (default true). */
  readonly shareWithTabs?: boolean
  /** A fresh token: before every connect, and ahead of the open socket's token expiry (refreshed over it). */
  readonly token: () => Promise<string>
  /** Opens the document's socket: a channel of the client's multiplexed socket, or a socket of its own. */
  readonly sockets: SocketOpener
  readonly reconnect?: ReconnectOptions
  /** Random source in [0, 1), for jitter. */
  readonly random?: () => number
  /**
   * How large each part of an update sent to the relay may be (shared by the
   * client's connections, narrowed when a relay refuses a part as too large:
   * it may be configured below the defaults).
   */
  readonly parts?: UpdateParts
}

/** The part limits a client's connections split their updates by (see {@link ConnectionOptions.parts}). */
export interface UpdateParts {
  limits: UpdatePartLimits
}

/** Rules of the relay's per-update caps (relay `CostRule`): the part was too large for this relay. */
const SIZE_RULES: ReadonlySet<string> = new Set([
  "update-structs",
  "update-values",
  "update-elements",
  "struct-density",
  "deleted-on-arrival",
  "integration-cost",
])

/** Half of `limits`, down to a floor every relay configuration worth running takes. */
const narrower = (limits: UpdatePartLimits): UpdatePartLimits => ({
  maxStructs: Math.max(16, Math.floor(limits.maxStructs / 2)),
  maxValues: Math.max(16, Math.floor(limits.maxValues / 2)),
  maxElements: Math.max(1024, Math.floor(limits.maxElements / 2)),
  maxBytes: Math.max(16 * 1024, Math.floor(limits.maxBytes / 2)),
})

/**
 * Close codes after which trying again cannot help, the error they mean and what the app is told:
 * "the relay closed the connection (4403)" left an app developer guessing (an outside tester).
 */
const TERMINAL: ReadonlyMap<number, readonly [ErrorCode, string]> = new Map([
  [
    CloseCode.Forbidden.code,
    [
      ErrorCode.FORBIDDEN,
      "the relay refused this user access: not a participant of the conversation (or removed from it)",
    ],
  ],
  [CloseCode.NotFound.code, [ErrorCode.NOT_FOUND, "the relay knows no document of this name"]],
  [
    CloseCode.MalformedFrame.code,
    [ErrorCode.MALFORMED_FRAME, "the relay could not read a frame of this client"],
  ],
  [CloseCode.TooLarge.code, [ErrorCode.TOO_LARGE, "a frame of this client was larger than the relay takes"]],
  [
    CloseCode.Damaged.code,
    [
      ErrorCode.DAMAGED,
      "the relay's stored copy of this conversation is damaged until an operator restores it",
    ],
  ],
])

/** The error a terminal close `code` means (see {@link TERMINAL}), undefined for any other close. */
function terminalError(code: number): ParleyError | undefined {
  const terminal = TERMINAL.get(code)
  return terminal && new ParleyError(terminal[0], `${terminal[1]} (the relay closed the connection, ${code})`)
}

/** Longest delay `setTimeout` takes. */
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Consecutive 4401 closes, each after a fresh token at once, before the refusal is told to the app
 * (`tokenFailed`, UNAUTHORIZED) and the connection goes on asking with its usual backoff (counted
 * from each start(): see there).
 */
const MAX_TOKEN_REFUSALS = 3

/** 4401 close reasons that say nothing of why (a relay before refusals said why; an expiry says it itself). */
const GENERIC_UNAUTHORIZED: ReadonlySet<string> = new Set([
  CloseCode.Unauthorized.reason,
  CloseCode.TokenRefused.reason,
  "",
])

/**
 * One document's connection to the relay, through the SDK's own provider:
 * a {@link SyncSession} per socket (sync, awareness, Parley frames on the
 * shared codec), a {@link TabChannel} with the user's other tabs, a fresh
 * token on every connect and ahead of expiry, "saved" acknowledgements, and
 * its own reconnect policy (backoff with jitter; terminal close codes end it).
 */
export class DocumentConnection extends Emitter<ConnectionEvents> {
  private session: SyncSession | undefined
  private tabs: TabChannel | undefined
  private readonly minDelay: number
  private readonly maxDelay: number
  private readonly random: () => number
  private readonly parts: UpdateParts
  private wanted = false
  private destroyed = false
  private attempts = 0
  private tokenRefusals = 0
  /**
   * Why the relay will not let this connection in again (a terminal close:
   * the user removed, ...), until the next {@link start}: what history
   * requests are refused with meanwhile, rather than the retryable
   * UNAVAILABLE an app would retry forever.
   */
  private refusal: ParleyError | undefined
  /**
   * Set while the replica holds work the relay refused that must not go out
   * on its own (see {@link hold}): called instead of opening a socket.
   */
  private holder: (() => Promise<void>) | undefined
  /** Why the relay refused this connection's last token (its error frame or 4401 close reason), if it said. */
  private tokenRefusal: string | undefined
  /** The token source's failure last told (`tokenFailed`), until it hands out a token again: told once, not per retry. */
  private toldTokenFailure: string | undefined
  /** Refused for `documents-per-user` since the last connection that synced (told once). */
  private limited = false
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private connecting = false
  private current: ConnectionStatus = "offline"
  /** The token the open socket lives on: the one it connected with, then each refresh the relay accepted. */
  private socketToken: string | undefined
  /** A refresh sent over the open socket, until the relay accepts it. */
  private sentToken: string | undefined
  private refreshTimer: ReturnType<typeof setTimeout> | undefined
  /**
   * What the relay has durably, as far as this client knows: the state vector
   * of the relay's sync step 1 on this connection, raised by "saved"
   * acknowledgements. What the document holds beyond it is the pending work.
   */
  private relayState = new Map<number, number>()
  /**
   * Something was written to the document (not by the relay) and no "saved"
   * came since it went out. The state vector tells what the relay lacks of
   * inserts, not of removals (an unreaction writes only a delete set): this
   * covers those. Cleared by a "saved" once everything written went out on
   * the socket ({@link SyncSession.sentAll}); the relay acknowledges a batch
   * of updates at once, so that "saved" may be the one of the batch before
   * (a removal sent a moment earlier is then taken as saved a moment early).
   */
  private written = false
  /**
   * How far the relay's own updates (its sync answers, live updates: the
   * sequence numbers it writes, other users' work) reached, per client: the
   * relay has those, though its sync request and acknowledgements name only
   * what this replica sent ({@link relayState}).
   */
  private readonly heardFromRelay = new Map<number, number>()
  private readonly onWrite = (update: Uint8Array, origin: unknown) => {
    if (origin !== RELAY_ORIGIN) {
      this.written = true
      return
    }
    // (`encodeStateVectorFromUpdate` names only clients whose structs start at clock 0.)
    for (const [client, clock] of Y.parseUpdateMeta(update).to)
      if (clock > (this.heardFromRelay.get(client) ?? 0)) this.heardFromRelay.set(client, clock)
  }
  private resendAttempts = 0
  private resendTimer: ReturnType<typeof setTimeout> | undefined

  constructor(private readonly options: ConnectionOptions) {
    super()
    this.minDelay = options.reconnect?.minDelay ?? 250
    this.maxDelay = options.reconnect?.maxDelay ?? 10_000
    this.random = options.random ?? Math.random
    this.parts = options.parts ?? { limits: DEFAULT_UPDATE_PART_LIMITS }
    options.doc.on("update", this.onWrite)
  }

  /**
   * Whether the document holds work the relay has not acknowledged as saved:
   * structs beyond what it is known to have durably (its sync request, then
   * its "saved" acknowledgements), or a write that no "saved" has answered
   * yet (a removal). False once every change written so far is durably
   * stored by the relay.
   */
  get hasUnsaved(): boolean {
    if (this.written) return true
    for (const [client, clock] of Y.decodeStateVector(Y.encodeStateVector(this.options.doc)))
      if (clock > Math.max(this.relayState.get(client) ?? 0, this.heardFromRelay.get(client) ?? 0))
        return true
    return false
  }

  /**
   * Whether waiting can get the pending work saved: false when stopped (the
   * app went offline) or when the relay looks out of reach (a reconnect
   * failed, the browser is offline); it keeps trying meanwhile.
   */
  get progressing(): boolean {
    return this.wanted && !this.destroyed && !this.unreachable
  }

  /**
   * Starts exchanging updates with the user's other tabs whose replica is of
   * the same stored `generation` (see `LocalReplica.generation`), even while
   * offline; another user's tab on the same device must go through the relay
   * (and its checks) instead. Tabs on another generation never meet here: a
   * replica that a resync replaced holds changes the relay refused, or of an
   * epoch it left, and would hand them to the rebuilt one.
   */
  joinTabs(generation: string | undefined): void {
    if (this.options.shareWithTabs === false || this.destroyed || this.tabs) return
    const base = `${this.options.url.replace(/\/+$/, "")}/${this.options.name}#${this.options.user}`
    this.tabs = new TabChannel(
      generation === undefined ? base : `${base}@${generation}`,
      this.options.doc,
      this.options.awareness,
    )
  }

  /** The current status. */
  get status(): ConnectionStatus {
    return this.current
  }

  /** How far the relay is known to have each client of the replica (its sync request, then its acknowledgements). */
  get relayHas(): ReadonlyMap<number, number> {
    return this.relayState
  }

  /** True once the relay's state has been received on the current connection. */
  get synced(): boolean {
    return this.session?.synced ?? false
  }

  /** Starts connecting (and keeps reconnecting) until {@link stop}. */
  start(): void {
    if (this.destroyed || this.wanted) return
    this.wanted = true
    this.attempts = 0
    this.refusal = undefined
    // A new start (the app's connect(), the browser back online) gets the whole budget of refused
    // tokens again. After a give-up on 4401 the count stands at the limit, so a single refusal would
    // end it at once, and one can come even when the source now hands out working tokens: a client's
    // connections share a token request in flight (ChatClient), and one started before this start (a
    // refresh over the socket the relay was about to refuse, say) answers with the source's old token.
    this.tokenRefusals = 0
    this.openSoon(0)
  }

  /**
   * After a retryable refusal (storage failing, rate limited): sends the
   * pending work again — everything the document holds beyond what the relay
   * is known to have durably — after a backoff with jitter, on the open
   * connection (no reconnect). Further calls before it is sent do nothing; the
   * backoff grows until the relay acknowledges something. The relay stores
   * only what it does not have yet, so a resend never stores anything twice.
   */
  resendLater(): void {
    if (this.resendTimer !== undefined || this.destroyed || this.session?.holdsPendingWork) return
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this.resendAttempts)
    this.resendAttempts++
    this.resendTimer = setTimeout(
      () => {
        this.resendTimer = undefined
        this.resend()
      },
      cap / 2 + (this.random() * cap) / 2,
    )
  }

  private resend(): void {
    const session = this.session
    // Without an open connection there is nothing to do: the next connect's sync sends the pending work.
    if (!this.wanted || this.destroyed || !session?.open) return
    const pending = Y.encodeStateAsUpdate(this.options.doc, Y.encodeStateVector(this.relayState))
    // With the replica's whole delete set: what it had seen goes first (see `ParleyMessage.view`).
    session.send(encodeView(Y.encodeStateVector(this.options.doc)))
    session.sendInParts(pending)
  }

  /**
   * Never opens a socket from now on: its sync would send everything the
   * replica holds, and it holds work the relay refused (the user removed)
   * that must not go out on its own if the user is added back. Whenever it
   * would open, `holder` is called instead (it replaces the replica, and this
   * connection with it, by one without that work), again with backoff while
   * it rejects.
   */
  hold(holder: () => Promise<void>): void {
    this.holder = holder
  }

  /** Whether it is held (see {@link hold}): it has no socket to stop. */
  get held(): boolean {
    return this.holder !== undefined
  }

  /** The relay refused this conversation when asked apart from this connection (see {@link hold}): as if it closed this one so. */
  refuse(error: ParleyError): void {
    if (this.wanted && !this.destroyed) this.giveUp(error)
  }

  /**
   * The relay refused the pending work for good (resyncing did not help):
   * not sent again on this socket, neither on its retryable refusals of what
   * follows it nor on its requests (see `SyncSession.holdPendingWork`). A
   * new socket's handshake sends it once more.
   */
  holdPendingWork(): void {
    clearTimeout(this.resendTimer)
    this.resendTimer = undefined
    this.session?.holdPendingWork()
  }

  /** Closes the connection and stops reconnecting. Local changes wait for the next {@link start}. */
  stop(): void {
    if (!this.wanted) return
    this.wanted = false
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.cancelRefresh()
    clearTimeout(this.resendTimer)
    this.resendTimer = undefined
    const session = this.session
    this.session = undefined
    session?.close()
    this.failHistoryRequests()
    this.update()
    for (const waiter of [...this.reachWaiters]) waiter()
  }

  /** Stops for good and frees the socket, timers and cross-tab channel. */
  destroy(): void {
    if (this.destroyed) return
    this.stop()
    clearTimeout(this.resendTimer)
    this.failHistoryRequests()
    this.destroyed = true
    this.options.doc.off("update", this.onWrite)
    this.tabs?.destroy()
    this.removeAllListeners()
  }

  private openSoon(delay: number): void {
    clearTimeout(this.retryTimer)
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      void this.open()
    }, delay)
    this.update()
  }

  private async open(): Promise<void> {
    if (!this.wanted || this.destroyed || this.connecting || this.session) return
    this.connecting = true
    if (this.holder) {
      let failed = false
      await this.holder().catch(() => {
        failed = true
      })
      this.connecting = false
      if (failed && this.wanted && !this.destroyed) this.retry()
      return
    }
    let token: string
    try {
      token = await this.options.token()
    } catch (error) {
      this.connecting = false
      if (!this.wanted || this.destroyed) return
      this.tokenSourceFailed(toParleyError(error, ErrorCode.UNAUTHORIZED))
      this.retry()
      return
    }
    this.connecting = false
    if (!this.wanted || this.destroyed) return
    this.toldTokenFailure = undefined
    this.tokenRefusal = undefined
    this.socketToken = token
    const session: SyncSession = new SyncSession(
      this.options.sockets(this.options.name, token),
      this.options.doc,
      this.options.awareness,
      () => this.parts.limits,
      {
        opened: () => {
          if (this.session !== session) return
          this.scheduleRefresh()
          this.update()
        },
        relayState: (stateVector) => {
          if (this.session === session) this.relayState = Y.decodeStateVector(stateVector)
        },
        synced: () => {
          if (this.session !== session) return
          // Reset the backoff only once a connection did useful work, not on open.
          this.attempts = 0
          this.tokenRefusals = 0
          this.limited = false
          this.update()
        },
        parley: (frame) => {
          if (this.session === session) this.parleyFrame(frame)
        },
        relayUpdate: (update) => {
          if (this.session === session) this.tabs?.fromRelay(update)
        },
        diverged: (cause) => {
          if (this.session !== session) return
          // Yjs cannot integrate what the relay sent (another user wrote under this replica's
          // client id first): the conversation rebuilds its replica.
          const error = new ParleyError(ErrorCode.FORBIDDEN, "the relay's state does not fit this replica", {
            rule: Rule.clientIdOwner,
            cause,
          })
          queueMicrotask(() => {
            if (!this.destroyed) this.emit("diverged", { error })
          })
        },
        closed: (code, local, reason) => {
          if (this.session !== session) return
          this.session = undefined
          this.cancelRefresh()
          // Pages asked for on a connection the relay ended for good fail as it did (FORBIDDEN, ...).
          this.failHistoryRequests(local ? undefined : terminalError(code))
          this.update()
          // Every close the relay (or the network, or the silence watchdog) made comes back here.
          if (!local) queueMicrotask(() => this.closed(code, reason))
        },
      },
    )
    this.session = session
    this.update()
  }

  private closed(code: number, reason: string): void {
    if (!this.wanted || this.destroyed) return
    if (code === CloseCode.TooManyDocuments.code && reason === CloseCode.TooManyDocuments.reason) {
      if (!this.limited) {
        this.limited = true
        this.emit("limited", {
          error: new ParleyError(
            ErrorCode.RATE_LIMITED,
            "the relay refused to open this conversation: the user has too many conversations open; close one",
            { rule: UserLimit.documents },
          ),
        })
      }
      this.retry()
      return
    }
    if (code === CloseCode.Unauthorized.code) {
      this.tokenRefusals++
      // The relay says why (its error frame for a refused refresh, else the close reason of a refused
      // connect); older relays said only "Unauthorized".
      const why = this.tokenRefusal ?? (GENERIC_UNAUTHORIZED.has(reason) ? undefined : reason)
      if (this.tokenRefusals < MAX_TOKEN_REFUSALS) {
        this.openSoon(0)
        return
      }
      // Not for good: a key rotation, a skewed clock or a source handing out yesterday's token passes,
      // and the user's work waits on the device meanwhile (before: the connection stopped, the
      // conversation turned unavailable and writes threw until the app called connect()).
      if (this.tokenRefusals === MAX_TOKEN_REFUSALS)
        this.emit("tokenFailed", {
          error: new ParleyError(
            ErrorCode.UNAUTHORIZED,
            `the relay refused the token${why ? `: ${why}` : ""}; asking the token source again with backoff`,
          ),
        })
      this.retry()
      return
    }
    const terminal = terminalError(code)
    if (terminal) {
      this.giveUp(terminal)
      return
    }
    this.retry()
  }

  /**
   * Tells the app the token source failed, once per run of failures with the
   * same message: a source handing out another user's token fails the same
   * way on every reconnect, and the app was told so on each (an outside
   * tester). Told again once it handed out a token, or fails otherwise.
   */
  private tokenSourceFailed(error: ParleyError): void {
    if (this.toldTokenFailure === error.message) return
    this.toldTokenFailure = error.message
    this.emit("tokenFailed", { error })
  }

  private retry(): void {
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempts)
    this.attempts++
    if (this.unreachable) for (const waiter of [...this.reachWaiters]) waiter()
    // Equal jitter: at least half the backoff, so that many clients of a restarted relay spread out.
    this.openSoon(cap / 2 + (this.random() * cap) / 2)
  }

  private giveUp(error: ParleyError): void {
    this.refusal = error
    this.stop()
    this.emit("unavailable", { error })
  }

  /** History requests sent and not answered yet, by request number. */
  private readonly historyRequests = new Map<
    number,
    { resolve: (page: HistoryPage) => void; reject: (error: ParleyError) => void }
  >()
  private nextHistoryRequest = 1
  /** Page requests waiting for the connection, told when it looks out of reach (see {@link unreachable}). */
  private readonly reachWaiters = new Set<() => void>()

  /**
   * Asks the relay for sealed history segment `segment` of this conversation
   * (see PROTOCOL.md, "History pages"). Rejects with the retryable
   * UNAVAILABLE when not connected or when the connection drops first, and
   * with the relay's refusal (FORBIDDEN, ...) once it ended the connection for good.
   */
  requestHistory(segment: number): Promise<HistoryPage> {
    return this.requestPage((request) => encodeHistoryRequest(request, segment))
  }

  /**
   * Asks the relay for directory page `page` of this conversation's folded
   * history (see PROTOCOL.md, "History pages"); answered like
   * {@link requestHistory}, `segment` holding the page's number.
   */
  requestDirectory(page: number): Promise<HistoryPage> {
    return this.requestPage((request) => encodeDirectoryRequest(request, page))
  }

  /**
   * Asks the relay for epoch record `record` of this conversation (see
   * PROTOCOL.md, "Epochs"); answered like {@link requestHistory}, `segment`
   * holding the record's number.
   */
  requestEpochRecord(record: number): Promise<HistoryPage> {
    return this.requestPage((request) => encodeEpochRequest(request, record))
  }

  /** Sends the frame `encode` makes for a new request number, and waits for the page that answers it. */
  private requestPage(encode: (request: number) => Uint8Array): Promise<HistoryPage> {
    const session = this.session
    if (!session?.open) {
      if (this.refusal) return Promise.reject(this.refusal)
      // Connecting (a reload resolves ready() from the local replica before the socket is up): the
      // request waits for the connection, a while, rather than failing as if the device were offline.
      if (this.wanted && !this.destroyed) return this.whenOnline().then(() => this.requestPage(encode))
      return Promise.reject(new ParleyError(ErrorCode.UNAVAILABLE, "not connected to the relay"))
    }
    const request = this.nextHistoryRequest++
    return new Promise<HistoryPage>((resolve, reject) => {
      this.historyRequests.set(request, { resolve, reject })
      session.send(encode(request))
    })
  }

  private failHistoryRequests(
    error = this.refusal ?? new ParleyError(ErrorCode.UNAVAILABLE, "the connection to the relay closed"),
  ): void {
    for (const { reject } of this.historyRequests.values()) reject(error)
    this.historyRequests.clear()
  }

  private parleyFrame(frame: ParleyFrame): void {
    if (frame.type === "historyPage" || frame.type === "directoryPage" || frame.type === "epochRecord") {
      const waiting = this.historyRequests.get(frame.request)
      this.historyRequests.delete(frame.request)
      waiting?.resolve(frame)
      return
    }
    if (frame.type === "saved") {
      const stateVector = Y.decodeStateVector(frame.stateVector)
      for (const [client, clock] of stateVector)
        if (clock > (this.relayState.get(client) ?? 0)) this.relayState.set(client, clock)
      this.resendAttempts = 0
      // Everything written went out on this socket and the relay has acknowledged since: removals included.
      if (this.session?.sentAll) this.written = false
      this.emit("saved", { stateVector })
    } else if (frame.type === "tokenAccepted") {
      if (this.sentToken === undefined) return
      this.socketToken = this.sentToken
      this.sentToken = undefined
      this.scheduleRefresh()
    } else if (frame.type === "error") {
      const { code, message, rule } = frame.error
      // About the token, not a frame: the relay closes with 4401 next, and a reconnect gets a fresh one.
      // Why is kept for the error told if fresh tokens keep being refused.
      if (code === ErrorCode.UNAUTHORIZED) {
        this.tokenRefusal = message
        return
      }
      // A relay configured below the default caps: what is sent again (the resync) goes in smaller parts.
      if (code === ErrorCode.TOO_LARGE || SIZE_RULES.has(rule ?? ""))
        this.parts.limits = narrower(this.parts.limits)
      this.emit("refused", { error: new ParleyError(code, message, rule ? { rule } : undefined) })
    }
  }

  /** Plans the open socket's next token refresh, ahead of its token's expiry (see `refreshDelay`). */
  private scheduleRefresh(): void {
    this.cancelRefresh()
    const session = this.session
    const delay = this.socketToken === undefined ? undefined : refreshDelay(this.socketToken, Date.now())
    if (!session?.open || delay === undefined) return
    // Timers take at most ~24.8 days (a longer delay fires at once): far expiries are reached in steps.
    if (delay > MAX_TIMER_MS) this.refreshTimer = setTimeout(() => this.scheduleRefresh(), MAX_TIMER_MS)
    else this.refreshTimer = setTimeout(() => void this.refresh(session), delay)
  }

  private cancelRefresh(): void {
    clearTimeout(this.refreshTimer)
    this.refreshTimer = undefined
    this.sentToken = undefined
  }

  /**
   * Sends a fresh token over `session` if it is still the open socket. A token
   * source that fails (or hands back no newer token) is asked again halfway to
   * the expiry while there is time; after that the relay closes the socket at
   * expiry (4401) and the usual reconnect, with its backoff, takes over.
   */
  private async refresh(session: SyncSession): Promise<void> {
    this.refreshTimer = undefined
    const current = () => !this.destroyed && this.session === session && session.open
    if (!current()) return
    let token: string | undefined
    try {
      token = await this.options.token()
    } catch (error) {
      if (current()) this.tokenSourceFailed(toParleyError(error, ErrorCode.UNAUTHORIZED))
    }
    if (!current()) return
    if (token !== undefined) this.toldTokenFailure = undefined
    const expiresAt = expiryOfToken(this.socketToken) ?? Number.POSITIVE_INFINITY
    const next = token === undefined ? undefined : (expiryOfToken(token) ?? Number.POSITIVE_INFINITY)
    if (token !== undefined && next !== undefined && next > expiresAt) {
      this.sentToken = token
      session.send(encodeTokenRefresh(token))
      return
    }
    const remaining = expiresAt - Date.now()
    const delay = Math.max(this.minDelay, remaining / 2)
    if (delay < remaining) this.refreshTimer = setTimeout(() => void this.refresh(session), delay)
  }

  /**
   * Resolves once the connection is online; rejects with the retryable UNAVAILABLE when it is
   * stopped, looks out of reach, or is not online within {@link PAGE_WAIT_MS}.
   */
  private whenOnline(): Promise<void> {
    if (this.current === "online") return Promise.resolve()
    const offline = () => this.refusal ?? new ParleyError(ErrorCode.UNAVAILABLE, "not connected to the relay")
    // Out of reach (the device went offline, the relay is down): a page the user scrolled to fails
    // now, not after the whole wait, so the app can say so while the connection keeps trying.
    if (this.unreachable) return Promise.reject(offline())
    return new Promise<void>((resolve, reject) => {
      const done = (error?: ParleyError) => {
        clearTimeout(timer)
        off()
        this.reachWaiters.delete(unreachable)
        if (error) reject(error)
        else resolve()
      }
      const unreachable = () => done(offline())
      this.reachWaiters.add(unreachable)
      const timer = setTimeout(() => done(offline()), PAGE_WAIT_MS)
      const off = this.on("status", ({ status }) => {
        if (status === "online") done()
        else if (status === "offline") done(offline())
      })
    })
  }

  /**
   * Calls `listener` once the relay looks out of reach (see {@link unreachable}) or the connection is
   * stopped — at once (in a microtask) if it is so now; returns the function that stops listening.
   */
  onUnreachable(listener: () => void): () => void {
    let live = true
    const once = () => {
      if (!live) return
      live = false
      this.reachWaiters.delete(once)
      listener()
    }
    if (!this.wanted || this.destroyed || this.unreachable) queueMicrotask(once)
    else this.reachWaiters.add(once)
    return () => {
      live = false
      this.reachWaiters.delete(once)
    }
  }

  /**
   * Whether the relay looks out of reach: a reconnect after the last connection that synced has
   * failed already (the attempt that follows a drop counts once), or the browser says it is offline.
   */
  private get unreachable(): boolean {
    const navigator = (globalThis as { navigator?: { onLine?: boolean } }).navigator
    return this.attempts >= 2 || navigator?.onLine === false
  }

  private update(): void {
    const status: ConnectionStatus = !this.wanted
      ? "offline"
      : this.session?.open && this.session.synced
        ? "online"
        : "connecting"
    if (status === this.current) return
    this.current = status
    this.emit("status", { status })
  }
}
