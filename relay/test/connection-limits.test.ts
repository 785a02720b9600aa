import { get } from "node:http"
import { connect, type Socket } from "node:net"
import {
  AddressLimit,
  encodeChannelClose,
  encodeChannelOpen,
  inboxDocumentName,
  listMessages,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  newConversationId,
  sendMessage,
  TOKEN_PARAM,
  type UserId,
  UserLimit,
} from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import { WebSocket } from "ws"
import type { WebsocketProvider } from "y-websocket"
import { AddressConnections } from "../src/address-limits.js"
import { defaultMaxConnections } from "../src/connection-capacity.js"
import { LogThrottle } from "../src/log-throttle.js"
import { createGroup } from "./helpers/attachments.js"
import { stockProvider, synced, TestClient } from "./helpers/clients.js"
import {
  metricLine,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

// Each y-websocket provider in Node listens for the process's exit.
process.setMaxListeners(100)

const alice = "alice" as UserId
const bob = "bob" as UserId

const sockets: Socket[] = []
const clients: TestClient[] = []
const providers: WebsocketProvider[] = []
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy()
  for (const c of clients.splice(0)) c.close()
  for (const p of providers.splice(0)) p.destroy()
  await stopRelayProcesses()
})

/** A connection that sends the start of a request's headers and nothing more (a "slowloris" socket). */
interface Stalled {
  readonly socket: Socket
  /** What the relay sent on it. */
  received: string
  closed: boolean
}

/** A connection that sends `start` (the start of a request's headers by default) and nothing more. */
async function stall(
  relay: RelayProcess,
  localAddress = "127.0.0.1",
  start = "GET /healthz HTTP/1.1\r\nHost: relay\r\n",
): Promise<Stalled> {
  const socket = connect({ host: "127.0.0.1", port: relay.port, localAddress })
  sockets.push(socket)
  const stalled: Stalled = { socket, received: "", closed: false }
  socket.setEncoding("utf8")
  socket.on("data", (chunk: string) => {
    stalled.received += chunk
  })
  socket.on("error", () => {})
  socket.on("close", () => {
    stalled.closed = true
  })
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
  socket.write(start)
  return stalled
}

async function pollUntil(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const until = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > until) throw new Error("timed out")
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** `/healthz`'s status from `localAddress` (another client address on the loopback). */
function healthFrom(relay: RelayProcess, localAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    get(`${relay.httpUrl}/healthz`, { localAddress, agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode!)
    }).on("error", reject)
  })
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("connections per client address", () => {
  it("holds an address to its cap of stalled sockets, lets a burst through, lets a newer client of that address in, and does not count users' WebSockets", async () => {
    const relay = await startRelayProcess({ args: ["--connections-per-address", "5"] })
    const stalled: Stalled[] = []
    // A burst: up to four times the cap are admitted while every connection is recent...
    for (let i = 0; i < 20; i++) stalled.push(await stall(relay))
    // ...and beyond that the next is refused, with a reason.
    const refused = await stall(relay)
    await pollUntil(() => refused.closed)
    expect(refused.received).toMatch(/^HTTP\/1\.1 429 /)
    expect(refused.received).toContain(AddressLimit.connections)
    expect(stalled.filter((s) => s.closed)).toHaveLength(0)
    // Another address is not affected.
    expect(await healthFrom(relay, "127.0.0.2")).toBe(200)

    // Those admitted beyond the cap and still waiting for a request after two seconds are closed.
    await pollUntil(() => stalled.filter((s) => s.closed).length === 15, 5_000)
    expect(stalled.slice(0, 5).every((s) => !s.closed)).toBe(true)

    // The five left have waited longer than an honest client would: the oldest makes room for one.
    const id = newConversationId()
    const a = await createGroup(relay, id, alice, [bob])
    clients.push(a)
    expect(stalled.slice(0, 5).map((s) => s.closed)).toEqual([true, false, false, false, false])

    // Users' WebSockets count per user once admitted: 25 more of them close none of the stalled sockets.
    for (let i = 0; i < 25; i++) {
      const provider = stockProvider(relay.url, id, await relay.token(i % 2 ? alice : bob))
      providers.push(provider)
      await synced(provider)
    }
    expect(stalled.filter((s) => !s.closed)).toHaveLength(4)
    expect(await metricLine(relay, 'parley_connections_refused_total{limit="connections-per-address"}')).toBe(
      1,
    )
  })

  it("cuts a connection that has not sent its request's headers in time", async () => {
    const relay = await startRelayProcess({ args: ["--request-headers-timeout-ms", "500"] })
    const started = performance.now()
    const slow = await stall(relay)
    await pollUntil(() => slow.closed, 5_000)
    expect(slow.received).toMatch(/^HTTP\/1\.1 408 /)
    expect(performance.now() - started).toBeLessThan(3_000)
  })

  it("ends a connection answered before its request's body arrived, however slowly the body still trickles in", async () => {
    const relay = await startRelayProcess()
    // A request no route takes a body for (answered 405 at once), then its body a byte at a time.
    const slow = await stall(
      relay,
      "127.0.0.1",
      "POST /healthz HTTP/1.1\r\nHost: relay\r\nContent-Length: 100000\r\n\r\nx",
    )
    const trickle = setInterval(() => {
      if (!slow.closed) slow.socket.write("x")
    }, 200)
    try {
      await pollUntil(() => slow.received.startsWith("HTTP/1.1 405 "), 5_000)
      // Before: read at the sender's pace for Node's 300 s request timeout, with no token needed.
      await pollUntil(() => slow.closed, 5_000)
    } finally {
      clearInterval(trickle)
    }
  })

  it("drops connections beyond --max-connections at accept while its users keep chatting, and takes new ones once the flood ends", async () => {
    const relay = await startRelayProcess({
      args: ["--max-connections", "30", "--connections-per-address", "0"],
    })
    const id = newConversationId()
    const a = await createGroup(relay, id, alice, [bob])
    clients.push(a)
    const b = new TestClient(relay.url, id, await relay.token(bob))
    clients.push(b)
    await b.synced()

    // Forty stalled sockets from forty addresses: the relay holds 30 connections, two of them the users'.
    const flood: Stalled[] = []
    for (let i = 0; i < 40; i++) flood.push(await stall(relay, `127.0.1.${i + 1}`))
    await pollUntil(() => flood.filter((s) => s.closed).length >= 12)
    await sleep(200)
    expect(flood.filter((s) => s.closed)).toHaveLength(12)
    // Dropped at accept: no answer, nothing read.
    expect(flood.filter((s) => s.closed).every((s) => s.received === "")).toBe(true)

    sendMessage(a.doc, alice, { body: "still here" })
    await a.allSaved()
    await b.until(() => listMessages(b.doc, { last: 10 }).some((m) => m.body === "still here"))

    for (const s of flood) s.socket.destroy()
    await pollUntil(() => flood.every((s) => s.closed))
    await sleep(100)
    expect(await healthFrom(relay, "127.0.0.1")).toBe(200)
    expect(await metricLine(relay, 'parley_connections_refused_total{limit="max-connections"}')).toBe(12)
  })
})

/** A multiplexed socket that opens no channel; resolves once the relay answered its upgrade either way. */
async function idleMux(relay: RelayProcess, user: UserId, localAddress = "127.0.0.1") {
  const params = new URLSearchParams({
    [MUX_PARAM]: MUX_PROTOCOL_VERSION,
    [TOKEN_PARAM]: await relay.token(user),
  })
  const ws = new WebSocket(`${relay.url}/?${params}`, { localAddress })
  const socket = { ws, close: undefined as { code: number; reason: string } | undefined }
  ws.on("close", (code, reason) => {
    socket.close = { code, reason: reason.toString() }
  })
  ws.on("error", () => {})
  sockets.push({ destroy: () => ws.terminate() } as Socket)
  await new Promise<void>((resolve) => {
    ws.once("open", () => resolve())
    ws.once("close", () => resolve())
  })
  return socket
}

describe("the relay's connection cap, shared between users", () => {
  it("keeps a few users' sockets from filling it: the one holding the most gives one up for a newcomer, and /healthz still answers", async () => {
    // 40 connections: 32 for users' sockets, 8 kept for requests and sign-ins.
    const relay = await startRelayProcess({
      args: ["--max-connections", "40", "--connections-per-address", "0", "--mux-idle-ms", "60000"],
    })
    const id = newConversationId()
    const a = await createGroup(relay, id, alice, [bob])
    clients.push(a)
    const b = new TestClient(relay.url, id, await relay.token(bob))
    clients.push(b)
    await b.synced()

    // One account opens 38 idle sockets, within its --max-sockets-per-user (256). Before, they took the
    // relay's every remaining connection: new users and /healthz were dropped at accept.
    const mallory = "mallory" as UserId
    const hog: Awaited<ReturnType<typeof idleMux>>[] = []
    for (let i = 0; i < 38; i++) hog.push(await idleMux(relay, mallory))
    // Refused after the upgrade (the user is known only then): their closes follow the opens.
    await pollUntil(() => hog.filter((s) => s.close !== undefined).length >= 8)
    await sleep(200)
    const refused = hog.filter((s) => s.close !== undefined)
    expect(refused).toHaveLength(8)
    expect(refused.every((s) => s.close?.code === 4429 && s.close.reason === UserLimit.relayFull)).toBe(true)
    expect(await healthFrom(relay, "127.0.0.1")).toBe(200)

    // A newcomer gets in: one of mallory's 30 sockets makes room.
    const carol = "carol" as UserId
    const c = new TestClient(relay.url, newConversationId(), await relay.token(carol))
    clients.push(c)
    await c.synced()
    await pollUntil(() => hog.filter((s) => s.close !== undefined).length === 9)
    expect(hog.filter((s) => s.close?.reason === UserLimit.relayFull)).toHaveLength(9)
    // The honest pair is untouched, and mallory cannot take the slot back.
    const again = await idleMux(relay, mallory)
    await pollUntil(() => again.close !== undefined)
    expect(again.close?.reason).toBe(UserLimit.relayFull)
    sendMessage(a.doc, alice, { body: "room for everyone" })
    await a.allSaved()
    await b.until(() => listMessages(b.doc, { last: 10 }).some((m) => m.body === "room for everyone"))
    expect(await metricLine(relay, 'parley_user_limit_total{limit="relay-full"}')).toBe(10)
  })

  it("keeps its reserve for requests: at the cap, a connection that waits long for a request makes room for a health check", async () => {
    const relay = await startRelayProcess({
      args: ["--max-connections", "40", "--mux-idle-ms", "60000"],
    })
    // Four accounts at the floor a newcomer never takes from (8 sockets each) fill the users' 32 slots...
    const held = []
    for (let u = 0; u < 4; u++)
      for (let i = 0; i < 8; i++) held.push(await idleMux(relay, `sybil${u}` as UserId))
    expect(held.filter((s) => s.close !== undefined)).toHaveLength(0)
    // ...and the same address holds the 8 kept for requests with connections that never send one.
    const stalled: Stalled[] = []
    for (let i = 0; i < 8; i++) stalled.push(await stall(relay))
    await sleep(2500)
    // Before: dropped at accept (ECONNRESET) for as long as the address kept them.
    expect(await healthFrom(relay, "127.0.0.2")).toBe(200)
    // Closed by the relay for it (seen here a moment later).
    await pollUntil(() => stalled.some((s) => s.closed))
    await sleep(100)
    expect(stalled.filter((s) => s.closed)).toHaveLength(1)
    expect(held.filter((s) => s.close !== undefined)).toHaveLength(0)
  })

  it("at the cap, takes a connection of the address holding the most even when all are recent, and cuts an upgrade refused before its user is known", async () => {
    const relay = await startRelayProcess({
      args: ["--max-connections", "40", "--mux-idle-ms", "60000"],
    })
    for (let u = 0; u < 4; u++) for (let i = 0; i < 8; i++) await idleMux(relay, `sybil${u}` as UserId)
    // The reserve, held by one host's connections, none of them 2 s old (a host reopening each before).
    const stalled: Stalled[] = []
    for (let i = 0; i < 8; i++) stalled.push(await stall(relay))
    expect(await healthFrom(relay, "127.0.0.2")).toBe(200)
    await pollUntil(() => stalled.some((s) => s.closed))
    await sleep(100)
    expect(stalled.filter((s) => s.closed)).toHaveLength(1)
    // Upgrades with a bad token from a peer that never answers the close: cut within a second or so,
    // not held (counted busy) for ws's 30 s closing handshake.
    const upgrade =
      "GET /g~x?token=bad HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    const refused: Stalled[] = []
    for (let i = 0; i < 4; i++) refused.push(await stall(relay, "127.0.0.3", upgrade))
    await pollUntil(() => refused.every((s) => s.closed), 5_000)
    expect(refused.every((s) => s.received.startsWith("HTTP/1.1 101 "))).toBe(true)
  })

  it("closes a multiplexed socket that holds no channel for --mux-idle-ms, and keeps one while it holds a channel", async () => {
    const relay = await startRelayProcess({ args: ["--mux-idle-ms", "500"] })
    const idle = await idleMux(relay, alice)
    const used = await idleMux(relay, bob)
    used.ws.send(encodeChannelOpen(0, inboxDocumentName(bob), ""))
    await pollUntil(() => idle.close !== undefined, 5_000)
    expect(idle.close).toEqual({ code: 1000, reason: "no channel" })
    await sleep(1000)
    expect(used.ws.readyState).toBe(WebSocket.OPEN)
    // Its last channel closed: the socket goes once it has been idle as long.
    used.ws.send(encodeChannelClose(0, 1000, ""))
    await pollUntil(() => used.close !== undefined, 5_000)
    expect(used.close).toEqual({ code: 1000, reason: "no channel" })
  })
})

describe("AddressConnections", () => {
  /** A socket stand-in: counts its destroy and lets the test close it. */
  class FakeSocket {
    destroyed = false
    private onClose: (() => void) | undefined
    once(_event: "close", listener: () => void) {
      this.onClose = listener
    }
    destroy() {
      this.destroyed = true
    }
    close() {
      this.onClose?.()
    }
  }

  it("closes the socket that has waited longest for a request, not one with a request under way", () => {
    vi.useFakeTimers()
    let now = 0
    const counted = new AddressConnections(3, 2_000, () => now)
    const [first, second, third] = [new FakeSocket(), new FakeSocket(), new FakeSocket()]
    counted.admit(first, "10.0.0.1")
    now = 100
    counted.admit(second, "10.0.0.1")
    counted.admit(third, "10.0.0.1")
    counted.busy(first)
    now = 2_200
    // `second` waited 2,100 ms: it makes room; `first` has a request under way.
    const fourth = new FakeSocket()
    expect(counted.admit(fourth, "10.0.0.1")).toBe(true)
    expect([first, second, third].map((s) => s.destroyed)).toEqual([false, true, false])
    // `first`'s response ends: it waits from now, after `third`.
    counted.idle(first)
    now = 5_000
    counted.admit(new FakeSocket(), "10.0.0.1")
    expect(third.destroyed).toBe(true)
    expect(first.destroyed).toBe(false)
    // Another address has its own count; an identified socket frees its place at once.
    expect(counted.admit(new FakeSocket(), "10.0.0.2")).toBe(true)
    counted.identified(fourth)
    expect(counted.admit(new FakeSocket(), "10.0.0.1")).toBe(true)
    expect(first.destroyed).toBe(false)
    vi.useRealTimers()
  })

  it("admits a burst up to four times the cap, and closes those beyond the cap that still wait after the grace", () => {
    vi.useFakeTimers()
    let now = 0
    const counted = new AddressConnections(2, 2_000, () => now)
    const burst = Array.from({ length: 8 }, () => new FakeSocket())
    for (const s of burst) expect(counted.admit(s, "10.0.0.1")).toBe(true)
    expect(counted.admit(new FakeSocket(), "10.0.0.1")).toBe(false)
    // Two of those beyond the cap got their request through meanwhile (an upgrade being checked).
    counted.busy(burst[2]!)
    counted.identified(burst[3]!)
    now = 2_000
    vi.advanceTimersByTime(2_000)
    // The cap's two stay; of the rest only the busy one does (the identified one no longer counts).
    expect(burst.map((s) => s.destroyed)).toEqual([false, false, false, false, true, true, true, true])
    vi.useRealTimers()
  })

  it("keeps nothing of an address whose connections closed", () => {
    const counted = new AddressConnections(2)
    const sockets = [new FakeSocket(), new FakeSocket()]
    for (const s of sockets) counted.admit(s, "2001:db8::1")
    expect(counted.size).toBe(1)
    for (const s of sockets) s.close()
    expect(counted.size).toBe(0)
  })

  it("derives the relay's connection cap from the descriptor limit, keeping a reserve", () => {
    expect(defaultMaxConnections(20_000)).toBe(18_976)
    expect(defaultMaxConnections(1_024)).toBe(768)
    expect(defaultMaxConnections(undefined)).toBe(0)
  })
})

describe("LogThrottle", () => {
  it("lets one line per key through per window, and counts the ones it held back for the next", () => {
    let now = 0
    const throttle = new LogThrottle(10_000, () => now)
    expect(throttle.admit("refused 4401\u0000203.0.113.7")).toBe(0)
    for (let i = 0; i < 500; i++) expect(throttle.admit("refused 4401\u0000203.0.113.7")).toBeUndefined()
    // Another source, or another kind, has its own line.
    expect(throttle.admit("refused 4401\u0000198.51.100.1")).toBe(0)
    expect(throttle.admit("refused 4429\u0000203.0.113.7")).toBe(0)
    now = 10_000
    expect(throttle.admit("refused 4401\u0000203.0.113.7")).toBe(500)
    expect(throttle.admit("refused 4401\u0000203.0.113.7")).toBeUndefined()
  })

  it("remembers at most 10,000 keys, forgetting expired ones first", () => {
    let now = 0
    const throttle = new LogThrottle(1_000, () => now)
    for (let i = 0; i < 10_000; i++) throttle.admit(`k${i}`)
    now = 2_000
    throttle.admit("fresh")
    expect(throttle.size).toBe(1)
    for (let i = 0; i < 20_000; i++) throttle.admit(`x${i}`)
    expect(throttle.size).toBe(10_000)
  })
})
