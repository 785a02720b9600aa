import {
  CloseCode,
  ErrorCode,
  MessageType,
  PARLEY_PARAM,
  PARLEY_PROTOCOL_VERSION,
  ParleyError,
  readParleyFrame,
  TOKEN_PARAM,
} from "@parley/shared"
import type * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import * as authProtocol from "y-protocols/auth"
import type { Awareness } from "y-protocols/awareness"
import * as syncProtocol from "y-protocols/sync"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { Emitter } from "./emitter.js"

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
])

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
  private readonly forwarding: () => boolean
  private readonly forwardFromTab = (update: Uint8Array, origin: unknown) => {
    const ws = this.provider.ws
    if (origin !== this.provider || !this.forwarding() || !this.provider.wsconnected || !ws) return
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.sync)
    syncProtocol.writeUpdate(encoder, update)
    ws.send(encoding.toUint8Array(encoder))
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
    // y-websocket's own handler of auth messages logs the socket's URL, token and all; the
    // relay's "permission denied" is followed by its close code (4403), which says the same.
    this.provider.messageHandlers[MessageType.auth] = (
      _encoder: encoding.Encoder,
      decoder: decoding.Decoder,
    ) => authProtocol.readAuthMessage(decoder, options.doc, () => {})
    this.provider.messageHandlers[MessageType.parley] = (
      _encoder: encoding.Encoder,
      decoder: decoding.Decoder,
    ) => this.parleyFrame(decoder)
    this.provider.on("status", () => this.update())
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

  /** Closes the connection and stops reconnecting. Local changes wait for the next {@link start}. */
  stop(): void {
    if (!this.wanted) return
    this.wanted = false
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.provider.disconnect()
    if (!this.destroyed) this.provider.connectBc()
    this.update()
  }

  /** Stops for good and frees the socket, timers and cross-tab channel. */
  destroy(): void {
    if (this.destroyed) return
    this.stop()
    this.destroyed = true
    this.provider.disconnectBc()
    this.options.doc.off("update", this.forwardFromTab)
    this.provider.destroy()
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

  private parleyFrame(decoder: decoding.Decoder): void {
    const frame = readParleyFrame(decoder)
    if (frame?.type === "saved") {
      this.emit("saved", { stateVector: Y.decodeStateVector(frame.stateVector) })
    } else if (frame?.type === "error") {
      const { code, message, rule } = frame.error
      this.emit("refused", { error: new ParleyError(code, message, rule ? { rule } : undefined) })
    }
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
