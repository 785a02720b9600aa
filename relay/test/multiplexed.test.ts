import {
  type ConversationId,
  createConversation,
  ErrorCode,
  encodeChannelClose,
  encodeChannelFrame,
  encodeChannelOpen,
  encodeSyncStep1,
  encodeSyncUpdate,
  encodeTokenRefresh,
  inboxDocumentName,
  listMessages,
  MessageType,
  MetaKey,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  newConversationId,
  readFrame,
  readMuxFrame,
  sendMessage,
  TOKEN_PARAM,
  typesOf,
  type UserId,
  UserLimit,
} from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import * as Y from "yjs"
import { TestClient } from "./helpers/clients.js"
import {
  metricLine,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelayProcess({ args: ["--max-documents-per-user", "3"] })
})
afterAll(() => stopRelayProcesses())
const open: { close(): void }[] = []
afterEach(() => {
  for (const c of open.splice(0)) c.close()
})

let unique = 0
const users = () => {
  unique++
  return {
    alice: `malice${unique}` as UserId,
    bob: `mbob${unique}` as UserId,
    mallory: `mmal${unique}` as UserId,
  }
}

/**
 * A hand-driven multiplexed socket: opens channels, records every frame the
 * relay sends per channel (unwrapped) and each channel's close.
 */
class MuxProbe {
  readonly ws: WebSocket
  readonly frames = new Map<number, Uint8Array[]>()
  readonly closes = new Map<number, { code: number; reason: string }>()
  readonly opened: Promise<void>
  readonly closed: Promise<number>
  private readonly waiters = new Set<() => void>()

  constructor(url: string, token: string) {
    const params = new URLSearchParams({ [MUX_PARAM]: MUX_PROTOCOL_VERSION, [TOKEN_PARAM]: token })
    this.ws = new WebSocket(`${url}/?${params}`)
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve())
      this.ws.once("error", reject)
    })
    this.closed = new Promise((resolve) => this.ws.once("close", (code) => resolve(code)))
    this.ws.on("message", (data: Buffer) => {
      const bytes = new Uint8Array(data)
      if (bytes[0] !== MessageType.awareness) {
        const frame = readMuxFrame(bytes)
        if (frame.type === "channel") {
          const list = this.frames.get(frame.channel) ?? []
          list.push(frame.frame.slice())
          this.frames.set(frame.channel, list)
        } else if (frame.type === "close")
          this.closes.set(frame.channel, { code: frame.code, reason: frame.reason })
      }
      for (const waiter of [...this.waiters]) waiter()
    })
    this.ws.on("error", () => {})
    open.push({ close: () => this.ws.close() })
  }

  /** Opens `channel` to `name` and asks for everything (an empty replica's sync step 1). */
  open(channel: number, name: string, token = ""): void {
    this.ws.send(encodeChannelOpen(channel, name, token))
    this.ws.send(encodeChannelFrame(channel, encodeSyncStep1(Y.encodeStateVector(new Y.Doc()))))
  }

  until(check: () => boolean, ms = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timed out")), ms)
      const test = () => {
        if (!check()) return
        clearTimeout(timer)
        this.waiters.delete(test)
        resolve()
      }
      this.waiters.add(test)
      test()
    })
  }

  /** The document built from every update the relay sent on `channel`. */
  replica(channel: number): Y.Doc {
    const doc = new Y.Doc()
    for (const bytes of this.frames.get(channel) ?? []) {
      const frame = readFrame(bytes)
      if (frame.type === "sync" && frame.message.type !== "syncStep1")
        Y.applyUpdate(doc, frame.message.update)
    }
    return doc
  }
}

/** A member creates `id` with a secret title and message over a socket of its own; resolves with the secrets. */
async function createWithSecrets(actor: UserId, other: UserId, id: ConversationId): Promise<string[]> {
  const owner = new TestClient(relay.url, id, await relay.token(actor))
  open.push({ close: () => owner.close() })
  await owner.opened
  await owner.synced()
  const secrets = [`title-${id}`, `body-${id}`]
  owner.doc.transact(() => {
    createConversation(owner.doc, actor, { kind: "group", id, participants: [other] })
    typesOf(owner.doc).meta.set(MetaKey.title, secrets[0]!)
    sendMessage(owner.doc, actor, { body: secrets[1]! })
  })
  await owner.allSaved()
  return secrets
}

const holds = (frames: Uint8Array[] | undefined, secret: string) =>
  (frames ?? []).some((frame) => Buffer.from(frame).includes(Buffer.from(secret)))

describe("a multiplexed socket", () => {
  it("syncs the inbox and several conversations over one socket, each like a socket of its own", async () => {
    const { alice, bob } = users()
    const [one, two] = [newConversationId(), newConversationId()]
    const secretsOne = await createWithSecrets(alice, bob, one)
    const secretsTwo = await createWithSecrets(alice, bob, two)
    const mux = new MuxProbe(relay.url, await relay.token(bob))
    await mux.opened
    mux.open(0, inboxDocumentName(bob))
    mux.open(1, one)
    mux.open(2, two)
    // The inbox channel is answered too (its sync step 1 at least; it derives the user's entries
    // first, so it may come after the conversations').
    await mux.until(
      () =>
        listMessages(mux.replica(1), { last: 10 }).length === 1 &&
        listMessages(mux.replica(2), { last: 10 }).length === 1 &&
        (mux.frames.get(0)?.length ?? 0) > 0,
    )
    expect(listMessages(mux.replica(1), { last: 10 })[0]!.body).toBe(secretsOne[1])
    expect(listMessages(mux.replica(2), { last: 10 })[0]!.body).toBe(secretsTwo[1])
    // Nothing was closed.
    expect(mux.closes.size).toBe(0)

    // A write on one channel is stored, acknowledged on that channel, and reaches a member elsewhere.
    const bobsReplica = mux.replica(1)
    const before = Y.encodeStateVector(bobsReplica)
    sendMessage(bobsReplica, bob, { body: "over the shared socket" })
    const acks = () => (mux.frames.get(1) ?? []).filter((f) => f[0] === MessageType.parley).length
    const acked = acks()
    mux.ws.send(encodeChannelFrame(1, encodeSyncUpdate(Y.encodeStateAsUpdate(bobsReplica, before))))
    await mux.until(() => acks() > acked)
    const reader = new TestClient(relay.url, one, await relay.token(alice))
    open.push({ close: () => reader.close() })
    await reader.until(() =>
      listMessages(reader.doc, { last: 10 }).some((m) => m.body === "over the shared socket"),
    )

    // Closing a channel detaches it alone: the others keep receiving.
    mux.ws.send(encodeChannelClose(1, 1000, ""))
    sendMessage(reader.doc, alice, { body: "after the close" })
    await reader.allSaved()
    const writer = new TestClient(relay.url, two, await relay.token(alice))
    open.push({ close: () => writer.close() })
    await writer.synced()
    sendMessage(writer.doc, alice, { body: "on channel two" })
    await mux.until(() => holds(mux.frames.get(2), "on channel two"))
    expect(holds(mux.frames.get(1), "after the close")).toBe(false)
  })

  it("sends a non-member no byte of a conversation, before or after its creation, and closes that channel alone", async () => {
    const { alice, bob, mallory } = users()
    const [early, late] = [newConversationId(), newConversationId()]
    const mux = new MuxProbe(relay.url, await relay.token(mallory))
    await mux.opened
    mux.open(0, inboxDocumentName(mallory))
    mux.open(1, early) // before it exists: access pending
    await mux.until(() => (mux.frames.get(1)?.length ?? 0) > 0)
    const secretsEarly = await createWithSecrets(alice, bob, early)
    const secretsLate = await createWithSecrets(alice, bob, late)
    mux.open(2, late)
    await mux.until(() => mux.closes.has(1) && mux.closes.has(2))
    expect(mux.closes.get(1)!.code).toBe(4403)
    expect(mux.closes.get(2)!.code).toBe(4403)
    for (const secret of secretsEarly) expect(holds(mux.frames.get(1), secret)).toBe(false)
    for (const secret of secretsLate) expect(holds(mux.frames.get(2), secret)).toBe(false)
    expect(mux.frames.get(2) ?? []).toEqual([])
    // The socket and the user's own inbox channel stay.
    expect(mux.ws.readyState).toBe(WebSocket.OPEN)
    expect(mux.closes.has(0)).toBe(false)
  })

  it("refuses a channel whose token is another user's, and holds the user to the documents limit per document", async () => {
    const { alice, bob, mallory } = users()
    const mux = new MuxProbe(relay.url, await relay.token(mallory))
    await mux.opened
    mux.open(0, inboxDocumentName(alice), await relay.token(alice))
    await mux.until(() => mux.closes.has(0))
    expect(mux.closes.get(0)!.code).toBe(4401)
    expect(mux.frames.get(0) ?? []).toEqual([])
    // --max-documents-per-user 3: a fourth document is refused, on this channel only.
    const ids = [newConversationId(), newConversationId(), newConversationId(), newConversationId()]
    for (const [i, id] of ids.entries()) mux.open(i + 1, id)
    await mux.until(() => mux.closes.has(4))
    expect(mux.closes.get(4)!.code).toBe(4429)
    expect([1, 2, 3].filter((channel) => mux.closes.has(channel))).toEqual([])
    void bob
  })

  it("counts every channel toward the user's connections, across sockets, and frees the count as channels close", async () => {
    const limited = await startRelayProcess({ args: ["--max-connections-per-user", "6"] })
    const { alice, mallory } = users()
    const id = newConversationId()
    const owner = new TestClient(limited.url, id, await limited.token(mallory))
    open.push({ close: () => owner.close() })
    await owner.opened
    owner.doc.transact(() =>
      createConversation(owner.doc, mallory, { kind: "group", id, participants: [alice] }),
    )
    await owner.allSaved()
    // Her per-document socket is one connection; five channels over two sockets (to one group) fill the rest.
    const [first, second] = [
      new MuxProbe(limited.url, await limited.token(mallory)),
      new MuxProbe(limited.url, await limited.token(mallory)),
    ]
    await Promise.all([first.opened, second.opened])
    for (const channel of [0, 1, 2]) first.open(channel, id)
    for (const channel of [0, 1]) second.open(channel, id)
    await second.until(() => (second.frames.get(1) ?? []).length > 0)
    second.open(2, id)
    await second.until(() => second.closes.has(2))
    expect(second.closes.get(2)).toEqual({
      code: 4429,
      reason: expect.stringContaining("connections-per-user"),
    })
    expect([0, 1, 2].filter((channel) => first.closes.has(channel))).toEqual([])
    // Another user is not held to hers.
    const other = new TestClient(limited.url, id, await limited.token(alice))
    open.push({ close: () => other.close() })
    await other.synced()
    // A channel closed frees its place.
    first.ws.send(encodeChannelClose(0, 1000, ""))
    await new Promise((r) => setTimeout(r, 500))
    second.open(3, id)
    await second.until(() => (second.frames.get(3) ?? []).length > 0)
    expect(second.closes.has(3)).toBe(false)
  })

  it("charges a channel's open to the socket's user before verifying its token, so a loop of bad tokens is held to the budget", async () => {
    const limited = await startRelayProcess({ args: ["--user-connection-attempts-per-minute", "20"] })
    const { alice, mallory } = users()
    const mux = new MuxProbe(limited.url, await limited.token(mallory))
    await mux.opened
    // Bad signatures: each costs a verification, paid for like an open.
    const good = await limited.token(mallory)
    const forged = `${good.slice(0, -4)}AAAA`
    for (let channel = 0; channel < 40; channel++) mux.open(channel, inboxDocumentName(alice), forged)
    await mux.until(() => mux.closes.size === 40)
    const codes = [...mux.closes.values()].map((close) => close.code)
    // The socket's own open spent one of 20: 19 verified and refused, the rest refused unverified.
    expect(codes.filter((code) => code === 4401).length).toBeLessThanOrEqual(20)
    expect(
      [...mux.closes.values()].filter((close) => close.reason === "connection-attempts-per-user").length,
    ).toBeGreaterThanOrEqual(20)
  })

  it("closes a channel at its own token's expiry, unless refreshed, and leaves the others open", async () => {
    const { alice } = users()
    const nowS = () => Math.floor(Date.now() / 1000)
    const exp = nowS() + 2
    // The socket's token expires first; channels opened with it ("" token) share its expiry.
    const mux = new MuxProbe(relay.url, await relay.token(alice, { expiresIn: exp }))
    await mux.opened
    mux.open(0, inboxDocumentName(alice))
    mux.open(1, newConversationId(), await relay.token(alice, { expiresIn: exp + 60 }))
    mux.open(2, newConversationId())
    await mux.until(() => [0, 1, 2].every((c) => (mux.frames.get(c)?.length ?? 0) > 0))
    // Channel 2 refreshes before the expiry: it stays.
    mux.ws.send(encodeChannelFrame(2, encodeTokenRefresh(await relay.token(alice, { expiresIn: exp + 60 }))))
    await mux.until(() => mux.closes.has(0), 10_000)
    expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000)
    expect(mux.closes.get(0)).toEqual({ code: 4401, reason: "Token expired" })
    // The typed error first, on the channel.
    const errors = (mux.frames.get(0) ?? []).flatMap((bytes) => {
      const frame = readFrame(bytes)
      return frame.type === "parley" && frame.message?.type === "error" ? [frame.message.error] : []
    })
    expect(errors).toEqual([{ code: ErrorCode.UNAUTHORIZED, message: "the token expired" }])
    await new Promise((r) => setTimeout(r, 500))
    expect(mux.closes.has(1)).toBe(false)
    expect(mux.closes.has(2)).toBe(false)
    expect(mux.ws.readyState).toBe(WebSocket.OPEN)
  })

  it("refuses a channel opened with the socket's token once that token expired, sending no byte of the document", async () => {
    const { alice, bob } = users()
    const id = newConversationId()
    const secrets = await createWithSecrets(bob, alice, id)
    const exp = Math.floor(Date.now() / 1000) + 2
    const mux = new MuxProbe(relay.url, await relay.token(alice, { expiresIn: exp }))
    await mux.opened
    // A channel of its own, longer token keeps the socket past the socket's token.
    mux.open(0, inboxDocumentName(alice), await relay.token(alice, { expiresIn: exp + 60 }))
    await mux.until(() => (mux.frames.get(0)?.length ?? 0) > 0)
    await new Promise((r) => setTimeout(r, exp * 1000 - Date.now() + 200))
    // "" names the socket's token, expired.
    mux.open(1, id)
    await mux.until(() => mux.closes.has(1))
    expect(mux.closes.get(1)).toEqual({ code: 4401, reason: "Token expired" })
    const received = Buffer.concat(mux.frames.get(1) ?? []).toString("latin1")
    for (const secret of secrets) expect(received).not.toContain(secret)
    expect(mux.frames.get(1)?.some((f) => f[0] === MessageType.sync) ?? false).toBe(false)
    expect(mux.ws.readyState).toBe(WebSocket.OPEN)
  })

  it("closes the socket with 4401 once neither its token nor a channel's lease is live, freeing the user's socket slot", async () => {
    const { alice } = users()
    const exp = Math.floor(Date.now() / 1000) + 2
    // Sockets opened with a token about to expire, no channel on them (a leaked token's way to hold the
    // user's every socket slot, which a socket of its own is closed for at expiry).
    const idle = [0, 1, 2].map(async () => {
      const mux = new MuxProbe(relay.url, await relay.token(alice, { expiresIn: exp }))
      await mux.opened
      return mux
    })
    // One kept past its token by a channel whose own token lasts longer, until that channel closes.
    const kept = new MuxProbe(relay.url, await relay.token(alice, { expiresIn: exp }))
    await kept.opened
    kept.open(0, inboxDocumentName(alice), await relay.token(alice, { expiresIn: exp + 60 }))
    await kept.until(() => (kept.frames.get(0)?.length ?? 0) > 0)
    for (const mux of await Promise.all(idle)) {
      expect(await mux.closed).toBe(4401)
      expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000)
    }
    expect(kept.ws.readyState).toBe(WebSocket.OPEN)
    // Its last channel closed and, right after, a channel opened with a fresh token (an honest client moving
    // on): the socket stays for it. Once that one closes too, nothing is live.
    kept.ws.send(encodeChannelClose(0, 1000, ""))
    kept.open(1, inboxDocumentName(alice), await relay.token(alice, { expiresIn: exp + 60 }))
    await kept.until(() => (kept.frames.get(1)?.length ?? 0) > 0)
    await new Promise((r) => setTimeout(r, 1500))
    expect(kept.ws.readyState).toBe(WebSocket.OPEN)
    kept.ws.send(encodeChannelClose(1, 1000, ""))
    expect(await kept.closed).toBe(4401)
  })

  it("closes the socket with 4400 on a frame or a close for a channel never opened, or a reused channel number", async () => {
    const { alice } = users()
    const ahead = new MuxProbe(relay.url, await relay.token(alice))
    await ahead.opened
    ahead.ws.send(encodeChannelFrame(7, encodeSyncStep1(Y.encodeStateVector(new Y.Doc()))))
    expect(await ahead.closed).toBe(4400)
    const closing = new MuxProbe(relay.url, await relay.token(alice))
    await closing.opened
    closing.ws.send(encodeChannelClose(5, 1000, ""))
    expect(await closing.closed).toBe(4400)
    const reused = new MuxProbe(relay.url, await relay.token(alice))
    await reused.opened
    reused.open(3, inboxDocumentName(alice))
    reused.ws.send(encodeChannelOpen(2, inboxDocumentName(alice), ""))
    expect(await reused.closed).toBe(4400)
  })

  it("counts each frame, even one dropped for a closed channel, against the user's receive budget", async () => {
    // A budget of 64 KB: 2,000 frames of a few bytes for a channel already closed are each dropped
    // unread, but handling one costs as much as reading a kilobyte.
    const paced = await startRelayProcess({
      args: ["--user-receive-bytes-per-second", "65536", "--user-receive-burst-bytes", "65536"],
    })
    const { mallory } = users()
    const probe = new MuxProbe(paced.url, await paced.token(mallory))
    await probe.opened
    probe.open(1, inboxDocumentName(mallory))
    await probe.until(() => (probe.frames.get(1)?.length ?? 0) > 0)
    probe.ws.send(encodeChannelClose(1, 1000, ""))
    const limit = `parley_user_limit_total{limit="${UserLimit.receivedBytes}"}`
    const before = await metricLine(paced, limit)
    const dropped = encodeChannelFrame(1, new Uint8Array([MessageType.queryAwareness]))
    expect(dropped.length).toBeLessThan(8)
    for (let i = 0; i < 2_000; i++) probe.ws.send(dropped)
    while (probe.ws.bufferedAmount > 0) await new Promise((r) => setTimeout(r, 10))
    for (let tries = 0; tries < 50 && (await metricLine(paced, limit)) === before; tries++)
      await new Promise((r) => setTimeout(r, 100))
    expect(await metricLine(paced, limit)).toBeGreaterThan(before)
    // Paced, not closed.
    await new Promise((r) => setTimeout(r, 300))
    expect(probe.ws.readyState).toBe(probe.ws.OPEN)
  })

  it("refuses the socket itself with 4401 when its token does not verify", async () => {
    const bad = new MuxProbe(relay.url, "not-a-token")
    expect(await bad.closed).toBe(4401)
  })
})
