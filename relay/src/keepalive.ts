import { encodeKeepalive } from "@parley/shared"
import { WebSocket } from "ws"

/** How the relay keeps idle connections open and notices dead ones. */
export interface KeepaliveOptions {
  /** Time between two pings (and keepalive frames) to each connection; 0 turns both off. */
  readonly intervalMs: number
  /** Time a connection has to answer a ping (or to read on) before it is dropped. */
  readonly timeoutMs: number
}

interface Watched {
  /** Sends a keepalive frame, once the connection has joined its document. */
  send?: (frame: Uint8Array) => void
  /** Pending while a ping waits for its pong. */
  deadline?: ReturnType<typeof setTimeout>
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

  /** Pings `ws` from now on; `onTimeout` runs just before it is dropped for not answering. */
  watch(ws: WebSocket, onTimeout: () => void): void {
    if (!this.timer) return
    const watched: Watched = { buffered: 0, onTimeout }
    this.sockets.set(ws, watched)
    ws.on("pong", () => {
      clearTimeout(watched.deadline)
      watched.deadline = undefined
    })
    ws.once("close", () => {
      clearTimeout(watched.deadline)
      this.sockets.delete(ws)
    })
  }

  /** `ws` joined its document: it gets keepalive frames, through `send`, from now on. */
  joined(ws: WebSocket, send: (frame: Uint8Array) => void): void {
    const watched = this.sockets.get(ws)
    if (watched) watched.send = send
  }

  /** Stops pinging (the relay is closing). */
  stop(): void {
    clearInterval(this.timer)
    for (const watched of this.sockets.values()) clearTimeout(watched.deadline)
    this.sockets.clear()
  }

  private tick(): void {
    for (const [ws, watched] of this.sockets) {
      if (ws.readyState !== WebSocket.OPEN) continue
      watched.send?.(this.frame)
      if (watched.deadline) continue
      watched.buffered = ws.bufferedAmount
      ws.ping()
      watched.deadline = setTimeout(() => this.expired(ws, watched), this.options.timeoutMs)
    }
  }

  private expired(ws: WebSocket, watched: Watched): void {
    if (ws.bufferedAmount > 0 && ws.bufferedAmount < watched.buffered) {
      // Still reading what was queued before the ping: alive, just slow.
      watched.buffered = ws.bufferedAmount
      watched.deadline = setTimeout(() => this.expired(ws, watched), this.options.timeoutMs)
      return
    }
    this.sockets.delete(ws)
    watched.onTimeout()
    ws.terminate()
  }
}
