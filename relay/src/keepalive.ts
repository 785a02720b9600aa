import { encodeKeepalive } from "@parley/shared"
import { WebSocket } from "ws"

/** How the relay keeps idle connections open and notices dead ones. */
export interface KeepaliveOptions {
  /** Time between two pings (and keepalive frames) to each connection; 0 turns both off. */
  readonly intervalMs: number
  /** Time a connection has to answer a ping (or to read on) before it is dropped. */
  readonly timeoutMs: number
}

/** What the keepalive knows of one socket; the transport marks {@link heard} as frames arrive. */
export interface Liveness {
  /** The client sent a frame since the last tick: it is alive, and needs no ping. */
  heard: boolean
  /**
   * When the relay last sent the client a message (`performance.now()`): one
   * sent within the last half interval stands for the keepalive frame (the
   * longest silence is then 1.5 intervals, under y-websocket's 30 s at the
   * default 15 s). Set for a socket to one document only: every channel of a
   * multiplexed socket needs to hear from the relay, and the bare frame is the
   * one that reaches them all.
   */
  sentAt: number
}

interface Watched extends Liveness {
  /** Sends a keepalive frame, once the connection has joined its document. */
  send?: (frame: Uint8Array) => void
  /** When the ping waiting for its pong was sent (or last re-armed), by `performance.now()`. */
  pingedAt: number | undefined
  /** The socket's unsent bytes when the ping was sent or last re-armed. */
  buffered: number
  readonly onTimeout: () => void
}

/**
 * Keeps WebSocket connections alive, and finds the dead ones.
 *
 * Every `intervalMs` each socket gets a ping frame, and each joined connection
 * a {@link encodeKeepalive} frame: y-websocket's provider (stock clients and
 * the SDK alike) drops a socket after 30 s without a message, and ping frames
 * are not messages to it. A socket that leaves a ping unanswered for
 * `timeoutMs` is dropped without a closing handshake (a peer that does not
 * answer pings will not answer that either): a client that vanished without
 * closing its TCP connection would otherwise hold its documents and memory
 * for ever. A ping queues behind what is being sent, so a client still
 * reading a large initial sync is given more time for as long as it reads on.
 *
 * Cheap per socket when idle: no keepalive frame to a socket to one document
 * that was sent something in the last half interval (any message counts for
 * its provider), one interval for all sockets, no timer per ping
 * (an unanswered ping is found by a later tick, so a dead socket goes between
 * `timeoutMs` and `timeoutMs + intervalMs` after its ping), and no ping to a
 * socket whose client sent a frame since the last tick (it is alive; a
 * client's own presence renewals, every 15 s, are such frames).
 */
export class Keepalive {
  private readonly sockets = new Map<WebSocket, Watched>()
  private readonly timer: ReturnType<typeof setInterval> | undefined
  private readonly frame = encodeKeepalive()

  constructor(private readonly options: KeepaliveOptions) {
    if (options.intervalMs > 0) {
      this.timer = setInterval(() => this.tick(), options.intervalMs)
      this.timer.unref()
    }
  }

  /**
   * Pings `ws` from now on; `onTimeout` runs just before it is dropped for not
   * answering. The transport sets `heard` on the returned {@link Liveness} for
   * every frame the client sends (undefined when keepalive is off).
   */
  watch(ws: WebSocket, onTimeout: () => void): Liveness | undefined {
    if (!this.timer) return undefined
    const watched: Watched = {
      heard: false,
      sentAt: Number.NEGATIVE_INFINITY,
      pingedAt: undefined,
      buffered: 0,
      onTimeout,
    }
    this.sockets.set(ws, watched)
    ws.on("pong", () => {
      watched.pingedAt = undefined
    })
    ws.once("close", () => {
      this.sockets.delete(ws)
    })
    return watched
  }

  /** `ws` joined its document: it gets keepalive frames, through `send`, from now on. */
  joined(ws: WebSocket, send: (frame: Uint8Array) => void): void {
    const watched = this.sockets.get(ws)
    if (watched) watched.send = send
  }

  /** Stops pinging (the relay is closing). */
  stop(): void {
    clearInterval(this.timer)
    this.sockets.clear()
  }

  private tick(): void {
    const now = performance.now()
    for (const [ws, watched] of this.sockets) {
      if (ws.readyState !== WebSocket.OPEN) continue
      if (now - watched.sentAt >= this.options.intervalMs / 2) watched.send?.(this.frame)
      if (watched.heard) {
        // It spoke since the last tick: alive, whatever ping it has not answered yet.
        watched.heard = false
        watched.pingedAt = undefined
      } else if (watched.pingedAt === undefined) {
        watched.buffered = ws.bufferedAmount
        ws.ping()
        watched.pingedAt = now
      } else if (now - watched.pingedAt >= this.options.timeoutMs) this.expired(ws, watched, now)
    }
  }

  private expired(ws: WebSocket, watched: Watched, now: number): void {
    if (ws.bufferedAmount > 0 && ws.bufferedAmount < watched.buffered) {
      // Still reading what was queued before the ping: alive, just slow.
      watched.buffered = ws.bufferedAmount
      watched.pingedAt = now
      return
    }
    this.sockets.delete(ws)
    watched.onTimeout()
    ws.terminate()
  }
}
