import type { Socket } from "node:net"
import type { WebSocket } from "ws"

/** One socket's unfinished bytes, and how it is closed when it holds the most. */
interface Held {
  bytes: number
  readonly close: () => void
}

/** What a user's sockets hold of messages not finished yet, by socket, and their sum. */
interface UserHolding {
  total: number
  readonly sockets: Map<WebSocket, Held>
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

  /**
   * Counts what `ws` (of `user`, admitted) reads until it closes; `close`
   * closes it when it is the user's socket holding the most past the bound.
   */
  watch(ws: WebSocket, user: string, close: () => void): void {
    const socket = (ws as unknown as { _socket?: Socket })._socket
    if (!socket) return
    let holding = this.users.get(user)
    if (!holding) {
      holding = { total: 0, sockets: new Map() }
      this.users.set(user, holding)
    }
    const mine = holding
    const held: Held = { bytes: 0, close }
    mine.sockets.set(ws, held)
    const set = (bytes: number) => {
      if (mine.sockets.get(ws) !== held) return
      mine.total += bytes - held.bytes
      held.bytes = bytes
    }
    // Before `ws`'s own listener: its whole messages, parsed from this chunk, then set the count back.
    const onData = (chunk: Buffer) => {
      set(held.bytes + chunk.length)
      if (mine.total > this.perUser) this.closeLargest(mine)
    }
    socket.prependListener("data", onData)
    ws.on("message", () => set(0))
    ws.once("close", () => {
      socket.off("data", onData)
      set(0)
      if (mine.sockets.get(ws) === held) mine.sockets.delete(ws)
      if (mine.sockets.size === 0 && this.users.get(user) === mine) this.users.delete(user)
    })
  }

  private closeLargest(holding: UserHolding): void {
    let largest: [WebSocket, Held] | undefined
    for (const entry of holding.sockets) if (!largest || entry[1].bytes > largest[1].bytes) largest = entry
    if (!largest) return
    // Off the count at once, and cut at once (`close`): what it holds goes with the connection, and
    // what it still reads cannot close another.
    const [ws, held] = largest
    holding.total -= held.bytes
    holding.sockets.delete(ws)
    held.close()
  }
}
