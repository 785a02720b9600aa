import type { WebSocket } from "ws"

/** What {@link holdWrites} needs of the socket under a `ws` WebSocket. */
interface CorkableSocket {
  cork(): void
  uncork(): void
}

/** `ws` keeps its net.Socket in `_socket` (no public accessor); undefined before it opened or once gone. */
const socketOf = (ws: WebSocket): CorkableSocket | undefined =>
  (ws as unknown as { _socket?: CorkableSocket | null })._socket ?? undefined

const NOTHING_HELD = (): void => {}

/**
 * Holds what is written to `ws` (its frames stay separate WebSocket messages)
 * until the returned function is called, which writes it all in one system
 * call. `ws.send` writes each message at once, one `writev` per frame: a
 * sender is sent its message's sequence numbers and its "saved", and a
 * batch's update and sequencing go to every other participant, as separate
 * frames. The caller releases in the same synchronous stretch of code (never
 * across a tick: bytes held longer would count in `ws.bufferedAmount` as
 * unread and delay what a client is owed).
 */
export function holdWrites(ws: WebSocket): () => void {
  const socket = socketOf(ws)
  if (!socket || ws.readyState !== ws.OPEN) return NOTHING_HELD
  socket.cork()
  return () => socket.uncork()
}
