import { createServer, type Server, Socket } from "node:net"

/** One proxied connection: the relay's side, the database's side, and what waits while black-holed. */
interface Pair {
  readonly client: Socket
  upstream: Socket | undefined
  /** Bytes from the relay not forwarded yet (black hole, or before the upstream connected). */
  held: Buffer[]
  dead: boolean
}

/**
 * A TCP proxy between the relay and PostgreSQL that a test can break:
 * - {@link blackhole}: nothing is forwarded either way, connections stay open
 *   and new ones are accepted but go nowhere (a database that stopped
 *   answering, a partition). Bytes the relay sends meanwhile are held; a
 *   connection the relay gives up on (closes or resets) loses them, as a real
 *   network loses the unacknowledged data of a socket its owner reset.
 * - {@link restore}: forwarding resumes, held bytes of live connections first.
 * - {@link cut}: every open connection is reset at once (a restart, a
 *   failover, a network reset); new connections work.
 */
export class TcpProxy {
  private readonly pairs = new Set<Pair>()
  private blackholed = false

  private constructor(
    private readonly server: Server,
    private readonly target: { readonly host: string; readonly port: number },
  ) {
    server.on("connection", (client) => this.accept(client))
  }

  /** Listens on a free port of 127.0.0.1, forwarding to `target`. */
  static async start(target: { host: string; port: number }): Promise<TcpProxy> {
    const server = createServer()
    const proxy = new TcpProxy(server, target)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    return proxy
  }

  /** The port to connect to. */
  get port(): number {
    const address = this.server.address()
    if (typeof address !== "object" || !address) throw new Error("not listening")
    return address.port
  }

  /** Connections open now. */
  get connections(): number {
    return [...this.pairs].filter((p) => !p.dead).length
  }

  /** Bytes from the relay held back by the black hole now. */
  get heldBytes(): number {
    let bytes = 0
    for (const pair of this.pairs) for (const chunk of pair.held) bytes += chunk.length
    return bytes
  }

  blackhole(): void {
    this.blackholed = true
    for (const pair of this.pairs) pair.upstream?.pause()
  }

  restore(): void {
    this.blackholed = false
    for (const pair of this.pairs) this.flush(pair)
  }

  cut(): void {
    for (const pair of [...this.pairs]) {
      pair.client.resetAndDestroy()
      pair.upstream?.resetAndDestroy()
      this.drop(pair)
    }
  }

  async close(): Promise<void> {
    this.cut()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }

  private accept(client: Socket): void {
    const pair: Pair = { client, upstream: undefined, held: [], dead: false }
    this.pairs.add(pair)
    client.on("data", (chunk: Buffer) => {
      if (this.blackholed || !pair.upstream || pair.upstream.connecting) pair.held.push(chunk)
      else pair.upstream.write(chunk)
    })
    client.on("error", () => {})
    client.on("close", () => {
      // What the relay sent into the black hole dies with its socket.
      pair.held = []
      pair.upstream?.destroy()
      this.drop(pair)
    })
    if (!this.blackholed) this.connectUpstream(pair)
  }

  private connectUpstream(pair: Pair): void {
    const upstream = new Socket()
    pair.upstream = upstream
    upstream.on("data", (chunk: Buffer) => {
      if (!pair.dead) pair.client.write(chunk)
    })
    upstream.on("connect", () => this.flush(pair))
    upstream.on("error", () => {})
    upstream.on("close", () => {
      if (!pair.dead) pair.client.destroy()
      this.drop(pair)
    })
    upstream.connect(this.target.port, this.target.host)
  }

  private flush(pair: Pair): void {
    if (pair.dead || this.blackholed) return
    if (!pair.upstream) {
      this.connectUpstream(pair)
      return
    }
    if (pair.upstream.connecting) return
    pair.upstream.resume()
    for (const chunk of pair.held.splice(0)) pair.upstream.write(chunk)
  }

  private drop(pair: Pair): void {
    pair.dead = true
    this.pairs.delete(pair)
  }
}
