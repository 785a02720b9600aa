import { afterAll, afterEach, describe, expect, it, vi } from "vitest"
import type { WebSocket as WsSocket } from "ws"

// y-websocket's provider drops a socket after 30 s without a message, timed by lib0's clock,
// which keeps the `Date.now` it finds when first loaded. So the clock is faked before anything
// loads lib0 (hence the dynamic imports): minutes of the provider's time pass in seconds.
vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "Date"] })
const time = await import("lib0/time")
const { default: WebSocket } = await import("ws")
const { WebsocketProvider } = await import("y-websocket")
const Y = await import("yjs")
const { TOKEN_PARAM } = await import("@parley/shared")
const { connectClient, destroyClients, devToken, eventually, startRelay } = await import("./support.js")

const relays: { stop(): Promise<void> }[] = []
afterEach(async () => {
  await destroyClients()
  for (const relay of relays.splice(0)) await relay.stop()
})
afterAll(() => {
  vi.useRealTimers()
})

/** A `ws` WebSocket class that records every socket made with it. */
function recordingWebSocket() {
  const sockets: WsSocket[] = []
  class Recording extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols)
      sockets.push(this)
    }
  }
  return { Recording, sockets }
}

/**
 * Resolves on the socket's next keepalive frame (`01 01 00`): on a
 * multiplexed socket only that one reaches every channel (another frame may
 * be one channel's), and each channel's provider must hear from the relay.
 */
const nextMessage = (socket: WsSocket) =>
  new Promise<void>((resolve) => {
    const listener = (data: Buffer | ArrayBuffer) => {
      const bytes = new Uint8Array(data)
      if (bytes.length !== 3 || bytes[0] !== 1 || bytes[1] !== 1 || bytes[2] !== 0) return
      socket.off("message", listener)
      resolve()
    }
    socket.on("message", listener)
  })

/**
 * Lets five minutes of client time pass, twenty seconds at a time, each step
 * only after every open socket heard from the relay since the last one.
 */
async function idleFiveMinutes(sockets: readonly WsSocket[]): Promise<void> {
  for (let step = 0; step < 15; step++) {
    await Promise.all(sockets.filter((s) => s.readyState === WebSocket.OPEN).map(nextMessage))
    vi.advanceTimersByTime(20_000)
  }
}

async function startKeepaliveRelay(pingIntervalMs: number) {
  const relay = await startRelay({ args: ["--dev", "--ping-interval-ms", String(pingIntervalMs)] })
  relays.push(relay)
  return relay
}

describe("idle connections", () => {
  it("runs the provider's clock on the faked one (else these tests would prove nothing)", () => {
    const before = time.getUnixTime()
    vi.advanceTimersByTime(60_000)
    expect(time.getUnixTime() - before).toBe(60_000)
  })

  it("keeps an idle SDK client connected for five minutes with no reconnect", async () => {
    const relay = await startKeepaliveRelay(100)
    const { Recording, sockets } = recordingWebSocket()
    const client = await connectClient(relay, "idle-alice", { WebSocket: Recording as never })
    const chat = await client.createConversation({ participants: ["idle-bob"], title: "quiet" })
    await chat.ready()
    await eventually(() => expect(client.status).toBe("online"))
    const opened = sockets.length
    expect(opened).toBe(1) // one multiplexed socket carries the inbox and the conversation
    await idleFiveMinutes(sockets)
    expect(sockets).toHaveLength(opened)
    expect(sockets.every((s) => s.readyState === WebSocket.OPEN)).toBe(true)
    expect(client.status).toBe("online")
  })

  it("keeps an idle stock y-websocket provider connected for five minutes with no reconnect", async () => {
    const relay = await startKeepaliveRelay(100)
    const { Recording, sockets } = recordingWebSocket()
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(relay.url, "inbox~idle-ida", doc, {
      WebSocketPolyfill: Recording as unknown as typeof globalThis.WebSocket,
      params: { [TOKEN_PARAM]: await devToken(relay, "idle-ida") },
      disableBc: true,
    })
    try {
      await eventually(() => expect(provider.synced).toBe(true))
      await idleFiveMinutes(sockets)
      expect(sockets).toHaveLength(1)
      expect(provider.wsconnected).toBe(true)
    } finally {
      provider.destroy()
      doc.destroy()
    }
  })

  it("without keepalive frames, the provider drops an idle inbox socket after 30 s (what the keepalive prevents)", async () => {
    const relay = await startKeepaliveRelay(0)
    const { Recording, sockets } = recordingWebSocket()
    const client = await connectClient(relay, "idle-ivo", { WebSocket: Recording as never })
    await eventually(() => expect(client.status).toBe("online"))
    const opened = sockets.length
    vi.advanceTimersByTime(40_000)
    await eventually(() => expect(sockets.length).toBeGreaterThan(opened))
  })
})
