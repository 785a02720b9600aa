import {
  CloseCode,
  type ConversationId,
  createConversation,
  ErrorCode,
  encodeChannelFrame,
  encodeChannelOpen,
  encodeSyncStep1,
  MessageType,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  newConversationId,
  readFrame,
  readMuxFrame,
  sendMessage,
  TOKEN_PARAM,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import * as Y from "yjs"
import { MemoryBackend } from "../src/backend/memory.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { TestClient } from "./helpers/clients.js"
import { signToken } from "./helpers/relay-process.js"
import { until } from "./helpers/until.js"

// A token that expires while its document loads: the relay used to send the document anyway, as soon
// as the load finished, whenever the token's expiry timer had not run yet by then (an event loop busy
// when the expiry passed: a large synchronous SQLite read, a loaded machine).

const SECRET = "expiry-during-load-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId

const relays: RunningRelay[] = []
const closers: (() => void)[] = []
afterEach(async () => {
  for (const close of closers.splice(0)) close()
  for (const r of relays.splice(0)) await r.close()
})

/**
 * A relay whose storage answers a load of a document in `slow` only once
 * `expiresAt` (ms) has passed, busy until just after it: the expiry's timer
 * cannot run between the expiry and the moment the document is ready.
 */
async function relayWithSlowLoads(slow: Set<string>, expiresAt: () => number): Promise<RunningRelay> {
  const backend = new MemoryBackend()
  const documents = backend.documents
  const load = documents.load.bind(documents)
  documents.load = async (name) => {
    const stored = await load(name)
    if (!slow.has(name)) return stored
    const at = expiresAt()
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - 50 - Date.now())))
    // Busy across the expiry, as a large synchronous read is.
    while (Date.now() <= at + 50) {}
    return stored
  }
  const relay = await startRelay({
    backend,
    port: 0,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    warmUp: false,
    limits: { idleUnloadMs: 50 },
  })
  relays.push(relay)
  return relay
}

/** A conversation of alice and bob holding a secret message, stored and no longer loaded. */
async function storedConversation(relay: RunningRelay): Promise<{ id: ConversationId; secret: string }> {
  const id = newConversationId()
  const secret = `secret of ${id}`
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(doc, alice, { body: secret })
  })
  // The hooks (inboxes) read it too: once they are done, it unloads and stays unloaded.
  await relay.hooks?.idle()
  await until(
    () => relay.core.isLoaded(id),
    (loaded) => !loaded,
  )
  return { id, secret }
}

/** A token of `user` expiring at the next whole second at least `ms` from now; with its expiry in ms. */
async function expiringToken(user: UserId, ms: number): Promise<{ token: string; expiresAt: number }> {
  const exp = Math.ceil((Date.now() + ms) / 1000)
  return { token: await signToken(SECRET, user, { expiresIn: exp }), expiresAt: exp * 1000 }
}

const isSync = (frame: Uint8Array) => frame[0] === MessageType.sync

describe("a token that expires while its document loads", () => {
  it("closes a socket with 4401 'Token expired', sending no byte of the document", async () => {
    const slow = new Set<string>()
    let expiresAt = 0
    const relay = await relayWithSlowLoads(slow, () => expiresAt)
    const { id, secret } = await storedConversation(relay)
    slow.add(id)
    const token = await expiringToken(bob, 1000)
    expiresAt = token.expiresAt
    const c = new TestClient(relay.url, id, token.token)
    closers.push(() => c.close())

    expect(await c.closed).toEqual(CloseCode.TokenExpired)
    expect(c.frames.some(isSync)).toBe(false)
    expect(Buffer.concat(c.frames).toString("latin1")).not.toContain(secret)
    expect(c.errors).toEqual([{ code: ErrorCode.UNAUTHORIZED, message: "the token expired" }])
  })

  it("closes a multiplexed channel with 4401 'Token expired', sending no byte of the document, and keeps the socket", async () => {
    const slow = new Set<string>()
    let expiresAt = 0
    const relay = await relayWithSlowLoads(slow, () => expiresAt)
    const { id, secret } = await storedConversation(relay)
    const other = await storedConversation(relay)
    slow.add(id)
    const socket = new WebSocket(
      `${relay.url}/?${new URLSearchParams({
        [MUX_PARAM]: MUX_PROTOCOL_VERSION,
        [TOKEN_PARAM]: await signToken(SECRET, bob, { expiresIn: "1h" }),
      })}`,
    )
    closers.push(() => socket.close())
    const frames = new Map<number, Uint8Array[]>()
    const closes = new Map<number, { code: number; reason: string }>()
    socket.on("message", (data: Buffer) => {
      const frame = readMuxFrame(new Uint8Array(data))
      if (frame.type === "channel")
        frames.set(frame.channel, [...(frames.get(frame.channel) ?? []), frame.frame.slice()])
      else if (frame.type === "close") closes.set(frame.channel, { code: frame.code, reason: frame.reason })
    })
    await new Promise((resolve) => socket.once("open", resolve))
    const token = await expiringToken(bob, 1000)
    expiresAt = token.expiresAt
    const ask = encodeSyncStep1(Y.encodeStateVector(new Y.Doc()))
    socket.send(encodeChannelOpen(1, id, token.token))
    socket.send(encodeChannelFrame(1, ask))

    await until(
      () => closes.get(1),
      (close) => close !== undefined,
    )
    expect(closes.get(1)).toEqual(CloseCode.TokenExpired)
    const received = frames.get(1) ?? []
    expect(received.some(isSync)).toBe(false)
    expect(Buffer.concat(received).toString("latin1")).not.toContain(secret)
    const errors = received.flatMap((bytes) => {
      const frame = readFrame(bytes)
      return frame.type === "parley" && frame.message?.type === "error" ? [frame.message.error] : []
    })
    expect(errors).toEqual([{ code: ErrorCode.UNAUTHORIZED, message: "the token expired" }])

    // The socket's own token is valid: its other channels are served.
    socket.send(encodeChannelOpen(2, other.id, ""))
    socket.send(encodeChannelFrame(2, ask))
    await until(
      () => frames.get(2) ?? [],
      (got) => Buffer.concat(got).toString("latin1").includes(other.secret),
    )
    expect(socket.readyState).toBe(WebSocket.OPEN)
  })
})
