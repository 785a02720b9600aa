import { type Command, Redis, type RedisOptions } from "ioredis"

/** How ioredis rejects a command its `commandTimeout` gave up on. */
const TIMED_OUT = "Command timed out"

/** Commands the relay sends whose reply is an integer whatever their arguments (outside `MULTI`). */
const INTEGER_REPLIES = new Set([
  "publish",
  "del",
  "hdel",
  "hset",
  "pexpire",
  "zadd",
  "zrem",
  "zremrangebyscore",
])

/** Whether `reply` has the shape `command` always answers with; true for commands this does not know. */
function expectedShape(command: Command, reply: unknown): boolean {
  if (command.inTransaction) return true // Answered `QUEUED`, then in `EXEC`'s reply.
  if (INTEGER_REPLIES.has(command.name)) return typeof reply === "number"
  if (command.name === "zrangebyscore") return Array.isArray(reply)
  return true
}

/**
 * An ioredis connection that drops its socket for a fresh one (ioredis
 * reconnects as after any dropped connection) once its replies can no longer
 * be trusted to answer the commands they are matched with: a command timed
 * out, or a reply had a shape its command never answers with. Redis answers
 * in order and ioredis matches replies by order alone, so a connection that
 * lost one reply (a proxy that dropped bytes) answers every later command
 * with the reply of the one before, or leaves it waiting, for good; a
 * protocol error is ioredis' own to recover from (it reconnects). Each drop is
 * told as an `error` event with the reason.
 */
export class CheckedRedis extends Redis {
  /** Commands watched already: ioredis sends a command again after a reconnect (one that timed out too). */
  private readonly watched = new WeakSet<Command>()
  /** Sockets given up (dropped, or closed): what they still deliver is not read. */
  private readonly dropped = new WeakSet<object>()

  constructor(url: string, options: RedisOptions) {
    super(url, options)
    // ioredis reads each socket's replies into the connection's *current* command queue, and a
    // dropped socket could still deliver what it had buffered: after a partition healed, the replies
    // held by the network arrived on a socket already dropped for a fresh one and were matched with
    // the fresh connection's commands (wrong answers), or found its queue empty, and ioredis threw
    // from the socket's data handler, which ended the relay's process (an outside probe: 5 of 7
    // runs, every relay of the cluster). Its reader is attached right after "connect".
    this.on("connect", () => {
      const socket = this.stream
      queueMicrotask(() => this.readOnlyWhileCurrent(socket))
    })
  }

  /**
   * Wraps `socket`'s readers: a chunk is read only while `socket` is the connection's and not
   * dropped, and a reader that throws drops the socket for a fresh one instead of the process.
   */
  private readOnlyWhileCurrent(socket: Redis["stream"]): void {
    const readers = socket.listeners("data") as ((chunk: Buffer) => void)[]
    socket.removeAllListeners("data")
    for (const reader of readers)
      socket.on("data", (chunk: Buffer) => {
        if (this.dropped.has(socket) || this.stream !== socket) return
        try {
          reader(chunk)
        } catch (error) {
          this.dropSocket(socket, `its replies could not be read (${(error as Error).message})`)
        }
      })
    socket.once("close", () => this.dropped.add(socket))
  }

  /** Drops `socket` for good (ioredis reconnects when it was the connection's), told as an `error` event. */
  private dropSocket(socket: Redis["stream"], why: string): void {
    if (this.dropped.has(socket)) return
    this.dropped.add(socket)
    socket.destroy()
    this.emit("error", new Error(`Redis connection dropped: ${why}; reconnecting`))
  }

  override sendCommand(command: Command, stream?: Parameters<Redis["sendCommand"]>[1]): unknown {
    // The socket the command is written to: a command timing out after a reconnect says nothing of the new one.
    const socket = this.stream
    const sent = super.sendCommand(command, stream)
    if (this.watched.has(command)) return sent
    this.watched.add(command)
    command.promise.then(
      (reply: unknown) => {
        if (!expectedShape(command, reply))
          this.distrust(new Error(`Redis answered ${command.name} with another command's reply`), socket)
      },
      (error: unknown) => {
        if (error instanceof Error && error.message === TIMED_OUT)
          this.distrust(new Error(`Redis did not answer ${command.name} in time`), socket)
      },
    )
    return sent
  }

  /**
   * Drops the socket (when still `socket`, default the current one, and ready) for a fresh
   * connection: nothing more is read from it. Commands waiting on it are sent again on the new one.
   */
  distrust(reason: Error, socket = this.stream): void {
    if (this.status !== "ready" || this.stream !== socket || socket.destroyed) return
    this.dropSocket(socket, `${reason.message}: its replies can no longer be trusted`)
  }
}
