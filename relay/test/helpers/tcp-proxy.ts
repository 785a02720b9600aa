import { connect, createServer, type Socket } from "node:net"

/**
 * A TCP proxy in front of a server that a test can cut (a network partition)
 * or stall (a server that stops answering, as a paused Redis does).
 * It runs on the test's event loop: while the test blocks that loop, nothing passes.
 */
export interface TcpProxy {
  /** `host:port` to connect to instead of the server. */
  readonly port: number
  /** Drops every connection and refuses new ones until {@link heal}. */
  cut(): void
  heal(): void
  /** Holds every byte either way, connections open, until {@link resume}: nothing is answered, nothing fails. */
  stall(): void
  /**
   * Stalls (as {@link stall}) right after the first chunk a client sends that holds `text` has
   * passed: the server runs that statement (taking its locks) and its answer is held, so the
   * client's transaction stays open on the server, idle, mid-way.
   */
  stallAfter(text: string): void
  /** Passes on what {@link stall} held, in order, and everything after it. */
  resume(): void
  /**
   * Drops every byte either way of the connections open now, for good, and
   * keeps them open; new connections pass (a NAT or firewall that forgot the
   * old flows, a failover behind a virtual IP). Nothing fails on the old ones
   * until the peer gives up on them.
   */
  holeExisting(): void
  /**
   * On every connection open now, drops the server's next whole reply (RESP, Redis's protocol) that
   * begins with `start`, once: the client's later commands each get the reply of the one before (a
   * middlebox that lost bytes mid-stream). Nothing fails, nothing closes. Resolves once one was dropped.
   */
  dropReply(start: string): Promise<void>
  close(): Promise<void>
}

/** The length of the RESP reply at `at` of `data`, or undefined when `data` does not hold all of it. */
function replyLength(data: Buffer, at = 0): number | undefined {
  const end = data.indexOf("\r\n", at)
  if (end < 0) return undefined
  const line = end + 2 - at
  const count = Number(data.toString("latin1", at + 1, end))
  switch (String.fromCharCode(data[at]!)) {
    case "$":
      return count < 0 ? line : at + line + count + 2 <= data.length ? line + count + 2 : undefined
    case "*": {
      let length = line
      for (let i = 0; i < count; i++) {
        const element = replyLength(data, at + length)
        if (element === undefined) return undefined
        length += element
      }
      return length
    }
    default:
      return line
  }
}

/** Starts a proxy on a free local port forwarding to `host:port`. */
export async function startTcpProxy(host: string, port: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>()
  const upstreams = new Set<Socket>()
  let open = true
  let stalled = false
  const held: { to: Socket; data: Buffer }[] = []
  const holed = new WeakSet<Socket>()
  /** Per server-side socket, the start of the reply {@link TcpProxy.dropReply} is to drop from it. */
  const dropping = new Map<Socket, Buffer>()
  let dropped = () => {}
  let stallAt: string | undefined
  const forward = (from: Socket, to: Socket, fromClient: boolean) =>
    from.on("data", (data: Buffer) => {
      if (holed.has(from)) return
      const start = dropping.get(from)
      if (start && data.subarray(0, start.length).equals(start)) {
        const length = replyLength(data)
        if (length !== undefined) {
          dropping.delete(from)
          data = data.subarray(length)
          dropped()
        }
      }
      if (stalled) held.push({ to, data })
      else {
        to.write(data)
        if (fromClient && stallAt !== undefined && data.includes(stallAt)) {
          stallAt = undefined
          stalled = true
        }
      }
    })
  const server = createServer((client) => {
    if (!open) {
      client.destroy()
      return
    }
    const upstream = connect(port, host)
    upstreams.add(upstream)
    upstream.on("close", () => {
      upstreams.delete(upstream)
      dropping.delete(upstream)
    })
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      socket.on("error", () => {
        client.destroy()
        upstream.destroy()
      })
    }
    forward(client, upstream, true)
    forward(upstream, client, false)
    client.on("end", () => upstream.end())
    upstream.on("end", () => client.end())
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const address = server.address()
  const cut = () => {
    open = false
    held.length = 0
    for (const socket of sockets) socket.destroy()
  }
  return {
    port: typeof address === "object" && address ? address.port : 0,
    cut,
    heal() {
      open = true
    },
    stall() {
      stalled = true
    },
    stallAfter(text) {
      stallAt = text
    },
    resume() {
      stalled = false
      for (const { to, data } of held.splice(0)) if (!to.destroyed) to.write(data)
    },
    holeExisting() {
      for (const socket of sockets) holed.add(socket)
    },
    dropReply(start) {
      for (const upstream of upstreams) dropping.set(upstream, Buffer.from(start))
      return new Promise<void>((resolve) => {
        dropped = resolve
      })
    },
    close() {
      cut()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
