import { EventEmitter } from "node:events"
import { encodeKeepalive, TOKEN_PARAM } from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import { WebSocket } from "ws"
import { Keepalive } from "../src/keepalive.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

afterEach(stopRelayProcesses)

describe("relay keepalive", () => {
  it("drops a socket that stops answering pings, and says so without the token", async () => {
    const relay = await startRelayProcess({ args: ["--ping-interval-ms", "100", "--ping-timeout-ms", "500"] })
    const token = await relay.token("silent-sam")
    // autoPong off: the client's side of a half-open connection, which never answers.
    const silent = new WebSocket(`${relay.url}/inbox~silent-sam?${TOKEN_PARAM}=${token}`, { autoPong: false })
    const pinged = new Promise<void>((resolve) => silent.once("ping", () => resolve()))
    const closed = new Promise<number>((resolve) => silent.once("close", (code) => resolve(code)))
    await pinged
    // Dropped without a closing handshake: such a peer would not answer that either.
    expect(await closed).toBe(1006)
    const line = await relay.waitForLog((entry) => entry.msg === "dropped: no answer to ping")
    expect(line.doc).toBe("inbox~silent-sam")
    expect(relay.lines.join("\n")).not.toContain(token)
  })

  it("sends joined sockets keepalive frames that a stock client applies as an empty awareness update", async () => {
    const relay = await startRelayProcess({ args: ["--ping-interval-ms", "100"] })
    const token = await relay.token("kept-kim")
    const socket = new WebSocket(`${relay.url}/inbox~kept-kim?${TOKEN_PARAM}=${token}`)
    const frames: Uint8Array[] = []
    socket.on("message", (data: Buffer) => frames.push(new Uint8Array(data)))
    await vi.waitFor(() => expect(frames).toContainEqual(encodeKeepalive()), { timeout: 10_000 })
    expect([...encodeKeepalive()]).toEqual([0x01, 0x01, 0x00])
    socket.close()
  })
})

/** A socket as Keepalive sees it: open, with a send queue the test drains by hand. */
class FakeSocket extends EventEmitter {
  readonly readyState = WebSocket.OPEN
  bufferedAmount = 0
  pings = 0
  terminated = false
  ping() {
    this.pings++
  }
  terminate() {
    this.terminated = true
  }
}

describe("Keepalive", () => {
  afterEach(() => {
    vi.useRealTimers()
  })

  it("gives a client still reading a large initial sync more time, and drops it once it stops reading", () => {
    vi.useFakeTimers()
    const keepalive = new Keepalive({ intervalMs: 1_000, timeoutMs: 5_000 })
    const socket = new FakeSocket()
    socket.bufferedAmount = 8_000_000 // the ping queues behind this
    let dropped = 0
    keepalive.watch(socket as unknown as WebSocket, () => dropped++)
    vi.advanceTimersByTime(1_000)
    expect(socket.pings).toBe(1)
    for (let i = 0; i < 4; i++) {
      socket.bufferedAmount -= 1_000_000 // reading on, slowly: the pong is still queued
      vi.advanceTimersByTime(5_000)
    }
    expect(socket.terminated).toBe(false)
    // Stalled: nothing read for a whole timeout.
    vi.advanceTimersByTime(5_000)
    expect(socket.terminated).toBe(true)
    expect(dropped).toBe(1)
    keepalive.stop()
  })

  it("pings no socket whose client spoke since the last tick, and still finds one that fell silent", () => {
    vi.useFakeTimers()
    const keepalive = new Keepalive({ intervalMs: 1_000, timeoutMs: 3_000 })
    const socket = new FakeSocket()
    let dropped = 0
    const liveness = keepalive.watch(socket as unknown as WebSocket, () => dropped++)!
    for (let i = 0; i < 30; i++) {
      liveness.heard = true // a frame from the client (its presence renewals, say)
      vi.advanceTimersByTime(1_000)
    }
    expect(socket.pings).toBe(0)
    // Silent from now on, and not answering: pinged once, dropped once the timeout passed.
    vi.advanceTimersByTime(1_000)
    expect(socket.pings).toBe(1)
    vi.advanceTimersByTime(3_000)
    expect(socket.terminated).toBe(true)
    expect(dropped).toBe(1)
    keepalive.stop()
  })

  it("sends no keepalive frame to a socket sent something in the last half interval", () => {
    vi.useFakeTimers()
    const keepalive = new Keepalive({ intervalMs: 1_000, timeoutMs: 3_000 })
    const socket = new FakeSocket()
    const frames: Uint8Array[] = []
    const liveness = keepalive.watch(socket as unknown as WebSocket, () => {})!
    keepalive.joined(socket as unknown as WebSocket, (frame) => {
      frames.push(frame)
    })
    // Something goes out 200 ms before each tick: no keepalive needed.
    for (let i = 0; i < 10; i++) {
      vi.advanceTimersByTime(800)
      liveness.sentAt = performance.now()
      vi.advanceTimersByTime(200)
      socket.emit("pong")
    }
    expect(frames).toHaveLength(0)
    // Quiet: a keepalive frame every tick again.
    for (let i = 0; i < 5; i++) {
      vi.advanceTimersByTime(1_000)
      socket.emit("pong")
    }
    expect(frames).toHaveLength(5)
    keepalive.stop()
  })

  it("keeps a socket that answers every ping, and pings no more once stopped", () => {
    vi.useFakeTimers()
    const keepalive = new Keepalive({ intervalMs: 1_000, timeoutMs: 3_000 })
    const socket = new FakeSocket()
    const frames: Uint8Array[] = []
    keepalive.watch(socket as unknown as WebSocket, () => {})
    keepalive.joined(socket as unknown as WebSocket, (frame) => frames.push(frame))
    for (let i = 0; i < 60; i++) {
      vi.advanceTimersByTime(1_000)
      socket.emit("pong")
    }
    expect(socket.terminated).toBe(false)
    expect(socket.pings).toBe(60)
    expect(frames).toHaveLength(60)
    keepalive.stop()
    vi.advanceTimersByTime(10_000)
    expect(socket.pings).toBe(60)
  })
})
