import { type Command, Redis } from "ioredis"

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
    socket.destroy()
    this.emit("error", new Error(`${reason.message}: its replies can no longer be trusted, reconnecting`))
  }
}
