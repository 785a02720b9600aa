import { once } from "node:events"
import { connect, createServer, type Socket } from "node:net"
import { describe, expect, it } from "vitest"
import type WebSocket from "ws"
import { corkForThisTick } from "../src/corked-writes.js"

/** A stand-in for a ws WebSocket: only the socket it holds matters to corkForThisTick. */
const wsOver = (socket: Socket) => ({ _socket: socket }) as unknown as WebSocket

describe("corkForThisTick", () => {
  it("writes what a tick sends to one socket in one write, once the tick ends", async () => {
    const server = createServer()
    server.listen(0, "127.0.0.1")
    await once(server, "listening")
    const { port } = server.address() as { port: number }
    const accepted = once(server, "connection")
    const client = connect(port, "127.0.0.1")
    await once(client, "connect")
    const [peer] = (await accepted) as [Socket]
    try {
      const writes: number[] = []
      // Every call that reaches the system: `_writev` for a corked batch, `_write` for a lone chunk.
      const socket = client as unknown as {
        _writev: (chunks: unknown[], cb: () => void) => void
        _write: (chunk: unknown, encoding: string, cb: () => void) => void
      }
      const writev = socket._writev.bind(client)
      const write = socket._write.bind(client)
      socket._writev = (chunks, cb) => {
        writes.push(chunks.length)
        writev(chunks, cb)
      }
      socket._write = (chunk, encoding, cb) => {
        writes.push(1)
        write(chunk, encoding, cb)
      }
      const ws = wsOver(client)
      corkForThisTick(ws)
      client.write("a")
      corkForThisTick(ws)
      client.write("b")
      client.write("c")
      expect(writes).toEqual([])
      expect(client.writableCorked).toBe(1)
      await new Promise((resolve) => process.nextTick(resolve))
      expect(writes).toEqual([3])
      expect(client.writableCorked).toBe(0)

      let received = ""
      peer.setEncoding("utf8")
      peer.on("data", (chunk: string) => {
        received += chunk
      })
      await new Promise<void>((resolve) => {
        const check = () => (received.length >= 3 ? resolve() : setTimeout(check, 5))
        check()
      })
      expect(received).toBe("abc")
      // Not corked beyond its tick: the next write goes out on its own.
      client.write("d")
      expect(writes).toEqual([3, 1])
    } finally {
      client.destroy()
      peer.destroy()
      server.close()
    }
  })

  it("does nothing for a WebSocket without a socket (not open yet, or gone)", () => {
    expect(() => corkForThisTick({ _socket: null } as unknown as WebSocket)).not.toThrow()
  })
})
