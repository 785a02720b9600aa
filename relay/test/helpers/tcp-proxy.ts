import { connect, createServer, type Socket } from "node:net"

/**
 * A TCP proxy in front of a server that a test can cut (a network partition).
 * It runs on the test's event loop: while the test blocks that loop, nothing passes.
 */
export interface TcpProxy {
  /** `host:port` to connect to instead of the server. */
  readonly port: number
  /** Drops every connection and refuses new ones until {@link heal}. */
  cut(): void
  heal(): void
  close(): Promise<void>
}

/** Starts a proxy on a free local port forwarding to `host:port`. */
export async function startTcpProxy(host: string, port: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>()
  let open = true
  const server = createServer((client) => {
    if (!open) {
      client.destroy()
      return
    }
    const upstream = connect(port, host)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
      socket.on("error", () => {
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const address = server.address()
  const cut = () => {
    open = false
    for (const socket of sockets) socket.destroy()
  }
  return {
    port: typeof address === "object" && address ? address.port : 0,
    cut,
    heal() {
      open = true
    },
    close() {
      cut()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
