import type { Socket } from "node:net"
import type { WebSocket } from "ws"

/** What a user's sockets hold of messages not finished yet, by socket, and their sum. */
interface UserHolding {
  total: number
  readonly sockets: Map<WebSocket, number>
}

/**
 * Bounds what `ws` holds of messages not finished yet, per user. A message
 * sent as fragments is kept, fragment by fragment, until its last one arrives
 * (up to the frame limit, on every socket), and only a whole message is
 * charged to its user's budgets: an outside probe held 341 MB of the relay's
 * memory with one user's 256 sockets, each sending a message of 1 MiB less a
 * byte and never its last fragment, answering pings meanwhile, and 780 MB
 * with three users. So the bytes read on each socket since its last whole
 * message are summed per user, and past the user's bound the socket holding
 * the most is closed (`close`: the transport's limit close). Honest clients
 * send each message at once; one that arrives over several reads is counted
 * only until it is whole.
 */
export class UnfinishedMessages {
  private readonly users = new Map<string, UserHolding>()

  constructor(private readonly perUser: number) {}

  /** Counts what `ws` (of `user`, admitted) reads until it closes. */
  watch(ws: WebSocket, user: string, close: (ws: WebSocket) => void): void {
    const socket = (ws as unknown as { _socket?: Socket })._socket
    if (!socket) return
    let holding = this.users.get(user)
    if (!holding) {
      holding = { total: 0, sockets: new Map() }
      this.users.set(user, holding)
    }
    const mine = holding
    mine.sockets.set(ws, 0)
    const set = (bytes: number) => {
      const before = mine.sockets.get(ws)
      if (before === undefined) return
      mine.sockets.set(ws, bytes)
      mine.total += bytes - before
    }
    // Before `ws`'s own listener: its whole messages, parsed from this chunk, then set the count back.
    const onData = (chunk: Buffer) => {
      set((mine.sockets.get(ws) ?? 0) + chunk.length)
      if (mine.total > this.perUser) this.closeLargest(mine, close)
    }
    socket.prependListener("data", onData)
    ws.on("message", () => set(0))
    ws.once("close", () => {
      socket.off("data", onData)
      set(0)
      mine.sockets.delete(ws)
      if (mine.sockets.size === 0 && this.users.get(user) === mine) this.users.delete(user)
    })
  }

  private closeLargest(holding: UserHolding, close: (ws: WebSocket) => void): void {
    let largest: WebSocket | undefined
    let most = -1
    for (const [ws, bytes] of holding.sockets)
      if (bytes > most) {
        largest = ws
        most = bytes
      }
    if (!largest) return
    // Off the count at once: what it still reads until it is gone cannot close another.
    holding.total -= most
    holding.sockets.delete(largest)
    close(largest)
  }
}
