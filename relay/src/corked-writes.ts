import type WebSocket from "ws"

/** What {@link corkForThisTick} needs of the socket under a `ws` WebSocket. */
interface CorkableSocket {
  cork(): void
  uncork(): void
}

/** Sockets corked in the current tick, uncorked together once it ends. */
let corked = new Set<CorkableSocket>()

function uncorkAll(): void {
  const sockets = corked
  corked = new Set()
  for (const socket of sockets) socket.uncork()
}

/** `ws` keeps its net.Socket in `_socket` (no public accessor); undefined before it opened or once gone. */
const socketOf = (ws: WebSocket): CorkableSocket | undefined =>
  (ws as unknown as { _socket?: CorkableSocket | null })._socket ?? undefined

/**
 * Holds what is written to `ws` until the current tick ends (its synchronous
 * work and the microtasks it queued), then writes it in one system call.
 * `ws.send` writes each message to the socket at once, one `writev` per
 * frame: a chat message cost its sender two (its sequence numbers, then its
 * "saved") and every other participant one or two; a store that completes
 * several changes at once cost one per change and socket. Corking changes no
 * byte on the wire — each frame stays its own WebSocket message, which is how
 * stock y-websocket clients read them — only how many writes carry them. The
 * corked bytes count in `ws.bufferedAmount` like any unsent ones.
 */
export function corkForThisTick(ws: WebSocket): void {
  const socket = socketOf(ws)
  if (!socket || corked.has(socket)) return
  socket.cork()
  corked.add(socket)
  if (corked.size === 1) process.nextTick(uncorkAll)
}
