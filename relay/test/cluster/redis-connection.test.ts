import { createServer, type Server, type Socket } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import { CheckedRedis } from "../../src/cluster/redis-connection.js"
import { until } from "../helpers/until.js"

/**
 * A stand-in for Redis that answers `+OK` to every command (the handshake's `CLIENT SETINFO`,
 * then whatever is sent), and lets the test write raw bytes to its connections.
 */
async function fakeRedis(): Promise<{ server: Server; port: number; sockets: Socket[]; commands: string[] }> {
  const sockets: Socket[] = []
  const commands: string[] = []
  const server = createServer((socket) => {
    sockets.push(socket)
    socket.on("data", (chunk) => {
      // One `+OK` per command: each RESP command array starts with `*`.
      const text = chunk.toString()
      for (const match of text.matchAll(/\*\d+\r\n\$\d+\r\n([^\r]+)/g)) {
        commands.push(match[1]!.toLowerCase())
        socket.write("+OK\r\n")
      }
    })
    socket.on("error", () => {})
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const address = server.address()
  if (address === null || typeof address === "string") throw new Error("no port")
  return { server, port: address.port, sockets, commands }
}

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

describe("a Redis connection whose replies cannot be read", () => {
  it("drops the socket for a fresh one and tells it as an error, instead of throwing from the socket's reader (which ended the process)", async () => {
    const redis = await fakeRedis()
    cleanup.push(() => new Promise((resolve) => redis.server.close(resolve)))
    const client = new CheckedRedis(`redis://127.0.0.1:${redis.port}`, {
      enableReadyCheck: false,
      retryStrategy: () => 50,
    })
    cleanup.push(() => client.disconnect())
    const errors: string[] = []
    client.on("error", (error: Error) => errors.push(error.message))
    await until(
      () => client.status,
      (status) => status === "ready",
    )
    expect(await client.set("k", "v")).toBe("OK")
    // A reply nothing asked for (what a healed partition delivered): a null bulk string with no
    // command waiting, on which ioredis' reader throws (`reply.toString()` of null).
    const first = redis.sockets.length
    redis.sockets.at(-1)!.write("$-1\r\n")
    await until(
      () => errors,
      (seen) => seen.some((m) => m.includes("Redis connection dropped: its replies could not be read")),
    )
    // A fresh connection, which works.
    await until(
      () => redis.sockets.length > first && client.status === "ready",
      (fresh) => fresh,
    )
    expect(await client.set("k", "w")).toBe("OK")
  })
})
