import {
  CloseCode,
  ErrorCode,
  encodeHistoryRequest,
  encodeSyncUpdate,
  encodeTokenRefresh,
  type HistoryPage,
  MessageType,
  PARLEY_PARAM,
  PARLEY_PROTOCOL_VERSION,
  ParleyError,
  Rule,
  readAuthMessage,
  readParleyFrame,
  readSyncMessage,
  TOKEN_PARAM,
  toParleyError,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import type * as encoding from "lib0/encoding"
import type { Awareness } from "y-protocols/awareness"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { Emitter } from "./emitter.js"
import { expiryOfToken, refreshDelay } from "./token.js"

/** Connection status: `online` once synced with the relay, `connecting` while trying, `offline` when not trying. */
export type ConnectionStatus = "connecting" | "online" | "offline"

/** A WebSocket class with the browser's API: the browser's own, or `ws` in Node (passed as it is). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown

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
  /** Getting a token failed; the connection retries with backoff. */
  tokenFailed: { error: ParleyError }
  /** The relay will not let this connection in again (4403, 4404, repeated 4401, ...). */
  unavailable: { error: ParleyError }
}

/** What a {@link DocumentConnection} needs. */
export interface ConnectionOptions {
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
  readonly WebSocket: WebSocketConstructor
  readonly reconnect?: ReconnectOptions
  /** Random source in [0, 1), for jitter. */
  readonly random?: () => number
}

/** Close codes after which trying again cannot help, and the error they mean. */
const TERMINAL: ReadonlyMap<number, ErrorCode> = new Map([
  [CloseCode.Forbidden.code, ErrorCode.FORBIDDEN],
  [CloseCode.NotFound.code, ErrorCode.NOT_FOUND],
  [CloseCode.MalformedFrame.code, ErrorCode.MALFORMED_FRAME],
  [CloseCode.TooLarge.code, ErrorCode.TOO_LARGE],
  [CloseCode.Damaged.code, ErrorCode.DAMAGED],
])

/** Longest delay `setTimeout` takes. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** Consecutive 4401 closes, each after a fresh token, before the token counts as refused for good. */
const MAX_TOKEN_REFUSALS = 3

/**
 * One conversation document's connection to the relay: a y-websocket
 * `WebsocketProvider` (so the wire is the standard protocol) extended with
 * Parley's frames, a fresh token on every connect, and its own reconnect
 * policy (backoff with jitter; terminal close codes end it).
 */
export class DocumentConnection extends Emitter<ConnectionEvents> {
  private readonly provider: WebsocketProvider
  private readonly minDelay: number
  private readonly maxDelay: number
  private readonly random: () => number
  private wanted = false
  private destroyed = false
  private attempts = 0
  private tokenRefusals = 0
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
  private resendAttempts = 0
  private resendTimer: ReturnType<typeof setTimeout> | undefined
  private readonly forwarding: () => boolean
  private readonly forwardFromTab = (update: Uint8Array, origin: unknown) => {
    const ws = this.provider.ws
    if (origin !== this.provider || !this.forwarding() || !this.provider.wsconnected || !ws) return
    ws.send(encodeSyncUpdate(update))
  }

  constructor(private readonly options: ConnectionOptions) {
    super()
    this.minDelay = options.reconnect?.minDelay ?? 250
    this.maxDelay = options.reconnect?.maxDelay ?? 10_000
    this.random = options.random ?? Math.random
    this.provider = new WebsocketProvider(options.url, options.name, options.doc, {
      connect: false,
      awareness: options.awareness,
      WebSocketPolyfill: options.WebSocket as unknown as typeof WebSocket,
      // y-websocket's own retry timer only fires after local closes; 0 leaves none pending at destroy.
      maxBackoffTime: 0,
      disableBc: options.shareWithTabs === false,
      // Every server close comes back to us: we decide whether and when to retry.
      shouldReconnect: (event) => {
        queueMicrotask(() => this.closed(event.code))
        return false
      },
    })
    // In Node, y-websocket adds a process "exit" listener per provider (to clear awareness, which
    // destroy() does anyway); a bot with more than ten conversations would get a leak warning.
    const node = (globalThis as { process?: { off?: (event: string, listener: () => void) => unknown } })
      .process
    node?.off?.("exit", this.provider._exitHandler)
    // Yjs can throw while integrating structs that do not fit the replica (another user wrote
    // under its client id on the relay first). Thrown from the socket's message handler, that
    // would be an uncaught error; instead the conversation rebuilds its replica.
    const sync = this.provider.messageHandlers[MessageType.sync]!
    this.provider.messageHandlers[MessageType.sync] = (encoder, decoder, provider, emitSynced, type) => {
      try {
        const message = readSyncMessage(decoding.clone(decoder))
        if (message.type === "syncStep1") this.relayState = Y.decodeStateVector(message.stateVector)
        sync(encoder, decoder, provider, emitSynced, type)
      } catch (cause) {
        const error = new ParleyError(ErrorCode.FORBIDDEN, "the relay's state does not fit this replica", {
          rule: Rule.clientIdOwner,
          cause,
        })
        queueMicrotask(() => {
          if (!this.destroyed) this.emit("diverged", { error })
        })
      }
    }
    // y-websocket's own handler of auth messages logs the socket's URL, token and all; the
    // relay's "permission denied" is followed by its close code (4403), which says the same.
    this.provider.messageHandlers[MessageType.auth] = (
      _encoder: encoding.Encoder,
      decoder: decoding.Decoder,
    ) => readAuthMessage(decoder)
    this.provider.messageHandlers[MessageType.parley] = (
      _encoder: encoding.Encoder,
      decoder: decoding.Decoder,
    ) => this.parleyFrame(decoder)
    this.provider.on("status", ({ status }: { status: string }) => {
      if (status === "connected") this.scheduleRefresh()
      else {
        this.cancelRefresh()
        this.failHistoryRequests()
      }
      this.update()
    })
    this.provider.on("sync", (synced: boolean) => {
      if (synced) {
        // Reset the backoff only once a connection did useful work, not on open.
        this.attempts = 0
        this.tokenRefusals = 0
      }
      this.update()
    })
    // Other tabs of the same user share updates, even while offline; another user's
    // tab on the same device must go through the relay (and its checks) instead.
    this.provider.bcChannel = `${this.provider.bcChannel}#${options.user}`
    // y-websocket assumes every tab has its own connection and never forwards what it
    // hears from another tab; an offline tab's changes would then wait for that tab.
    // So an online tab forwards them (the relay ignores what it already has).
    const fromTab = this.provider._bcSubscriber
    let forwarding = false
    this.provider._bcSubscriber = (data, origin) => {
      forwarding = true
      try {
        fromTab(data, origin)
      } finally {
        forwarding = false
      }
    }
    options.doc.on("update", this.forwardFromTab)
    this.forwarding = () => forwarding
    this.provider.connectBc()
  }

  /** The current status. */
  get status(): ConnectionStatus {
    return this.current
  }

  /** True once the relay's state has been received on the current connection. */
  get synced(): boolean {
    return this.provider.synced
  }

  /** Starts connecting (and keeps reconnecting) until {@link stop}. */
  start(): void {
    if (this.destroyed || this.wanted) return
    this.wanted = true
    this.attempts = 0
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
    if (this.resendTimer !== undefined || this.destroyed) return
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
    const ws = this.provider.ws
    // Without an open connection there is nothing to do: the next connect's sync sends the pending work.
    if (!this.wanted || this.destroyed || !this.provider.wsconnected || !ws) return
    const pending = Y.encodeStateAsUpdate(this.options.doc, Y.encodeStateVector(this.relayState))
    ws.send(encodeSyncUpdate(pending))
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
    // Going offline must not throw whatever state y-websocket is in (it assumes much of the document).
    guard(() => this.provider.disconnect())
    if (!this.destroyed) guard(() => this.provider.connectBc())
    this.update()
  }

  /** Stops for good and frees the socket, timers and cross-tab channel. */
  destroy(): void {
    if (this.destroyed) return
    this.stop()
    clearTimeout(this.resendTimer)
    this.failHistoryRequests()
    this.destroyed = true
    guard(() => this.provider.disconnectBc())
    this.options.doc.off("update", this.forwardFromTab)
    guard(() => this.provider.destroy())
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
    if (!this.wanted || this.destroyed || this.connecting) return
    this.connecting = true
    let token: string
    try {
      token = await this.options.token()
    } catch (error) {
      this.connecting = false
      if (!this.wanted || this.destroyed) return
      this.emit("tokenFailed", { error: error as ParleyError })
      this.retry()
      return
    }
    this.connecting = false
    if (!this.wanted || this.destroyed) return
    // y-websocket builds the URL from `params` at every connect, so the fresh token is used.
    this.provider.params = { [TOKEN_PARAM]: token, [PARLEY_PARAM]: PARLEY_PROTOCOL_VERSION }
    this.socketToken = token
    this.provider.connect()
    this.update()
  }

  private closed(code: number): void {
    if (!this.wanted || this.destroyed) return
    if (code === CloseCode.Unauthorized.code) {
      this.tokenRefusals++
      if (this.tokenRefusals < MAX_TOKEN_REFUSALS) {
        this.openSoon(0)
        return
      }
      this.giveUp(new ParleyError(ErrorCode.UNAUTHORIZED, "the relay refused the token"))
      return
    }
    const terminal = TERMINAL.get(code)
    if (terminal) {
      this.giveUp(new ParleyError(terminal, `the relay closed the connection (${code})`))
      return
    }
    this.retry()
  }

  private retry(): void {
    const cap = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempts)
    this.attempts++
    // Equal jitter: at least half the backoff, so that many clients of a restarted relay spread out.
    this.openSoon(cap / 2 + (this.random() * cap) / 2)
  }

  private giveUp(error: ParleyError): void {
    this.stop()
    this.emit("unavailable", { error })
  }

  /** History requests sent and not answered yet, by request number. */
  private readonly historyRequests = new Map<
    number,
    { resolve: (page: HistoryPage) => void; reject: (error: ParleyError) => void }
  >()
  private nextHistoryRequest = 1

  /**
   * Asks the relay for sealed history segment `segment` of this conversation
   * (see PROTOCOL.md, "History pages"). Rejects with the retryable
   * UNAVAILABLE when not connected or when the connection drops first.
   */
  requestHistory(segment: number): Promise<HistoryPage> {
    const ws = this.provider.ws
    if (!ws || !this.provider.wsconnected)
      return Promise.reject(new ParleyError(ErrorCode.UNAVAILABLE, "not connected to the relay"))
    const request = this.nextHistoryRequest++
    return new Promise<HistoryPage>((resolve, reject) => {
      this.historyRequests.set(request, { resolve, reject })
      ws.send(encodeHistoryRequest(request, segment))
    })
  }

  private failHistoryRequests(): void {
    const error = new ParleyError(ErrorCode.UNAVAILABLE, "the connection to the relay closed")
    for (const { reject } of this.historyRequests.values()) reject(error)
    this.historyRequests.clear()
  }

  private parleyFrame(decoder: decoding.Decoder): void {
    const frame = readParleyFrame(decoder)
    if (frame?.type === "historyPage") {
      const waiting = this.historyRequests.get(frame.request)
      this.historyRequests.delete(frame.request)
      waiting?.resolve(frame)
      return
    }
    if (frame?.type === "saved") {
      const stateVector = Y.decodeStateVector(frame.stateVector)
      for (const [client, clock] of stateVector)
        if (clock > (this.relayState.get(client) ?? 0)) this.relayState.set(client, clock)
      this.resendAttempts = 0
      this.emit("saved", { stateVector })
    } else if (frame?.type === "tokenAccepted") {
      if (this.sentToken === undefined) return
      this.socketToken = this.sentToken
      this.sentToken = undefined
      this.scheduleRefresh()
    } else if (frame?.type === "error") {
      const { code, message, rule } = frame.error
      // About the token, not a frame: the relay closes with 4401 next, and a reconnect gets a fresh one.
      if (code === ErrorCode.UNAUTHORIZED) return
      this.emit("refused", { error: new ParleyError(code, message, rule ? { rule } : undefined) })
    }
  }

  /** Plans the open socket's next token refresh, ahead of its token's expiry (see `refreshDelay`). */
  private scheduleRefresh(): void {
    this.cancelRefresh()
    const ws = this.provider.ws
    const delay = this.socketToken === undefined ? undefined : refreshDelay(this.socketToken, Date.now())
    if (!ws || delay === undefined) return
    // Timers take at most ~24.8 days (a longer delay fires at once): far expiries are reached in steps.
    if (delay > MAX_TIMER_MS) this.refreshTimer = setTimeout(() => this.scheduleRefresh(), MAX_TIMER_MS)
    else this.refreshTimer = setTimeout(() => void this.refresh(ws), delay)
  }

  private cancelRefresh(): void {
    clearTimeout(this.refreshTimer)
    this.refreshTimer = undefined
    this.sentToken = undefined
  }

  /**
   * Sends a fresh token over `ws` if it is still the open socket. A token
   * source that fails (or hands back no newer token) is asked again halfway to
   * the expiry while there is time; after that the relay closes the socket at
   * expiry (4401) and the usual reconnect, with its backoff, takes over.
   */
  private async refresh(ws: WebSocket): Promise<void> {
    this.refreshTimer = undefined
    const current = () => !this.destroyed && this.provider.ws === ws && this.provider.wsconnected
    if (!current()) return
    let token: string | undefined
    try {
      token = await this.options.token()
    } catch (error) {
      if (current()) this.emit("tokenFailed", { error: toParleyError(error, ErrorCode.UNAUTHORIZED) })
    }
    if (!current()) return
    const expiresAt = expiryOfToken(this.socketToken) ?? Number.POSITIVE_INFINITY
    const next = token === undefined ? undefined : (expiryOfToken(token) ?? Number.POSITIVE_INFINITY)
    if (token !== undefined && next !== undefined && next > expiresAt) {
      this.sentToken = token
      ws.send(encodeTokenRefresh(token))
      return
    }
    const remaining = expiresAt - Date.now()
    const delay = Math.max(this.minDelay, remaining / 2)
    if (delay < remaining) this.refreshTimer = setTimeout(() => void this.refresh(ws), delay)
  }

  private update(): void {
    const status: ConnectionStatus = !this.wanted
      ? "offline"
      : this.provider.wsconnected && this.provider.synced
        ? "online"
        : "connecting"
    if (status === this.current) return
    this.current = status
    this.emit("status", { status })
  }
}

/** Runs `step`, reporting instead of throwing what it throws. */
function guard(step: () => void): void {
  try {
    step()
  } catch (error) {
    console.error("parley: the WebSocket provider failed", error)
  }
}
