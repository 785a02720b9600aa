import {
  CloseCode,
  createConversation,
  ErrorCode,
  listMessages,
  MessageType,
  newConversationId,
  sendMessage,
  type UserId,
  UserLimit,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterEach, describe, expect, it } from "vitest"
import * as awarenessProtocol from "y-protocols/awareness"
import type { WebsocketProvider } from "y-websocket"
import { docUntil, stockProvider, synced, TestClient } from "./helpers/clients.js"
import { awarenessRemovals } from "./helpers/costly-frames.js"
import {
  metricLine,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId
const mallory = "mallory" as UserId

const clients: TestClient[] = []
const providers: WebsocketProvider[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const p of providers.splice(0)) p.destroy()
  await stopRelayProcesses()
})

/** Fails naming `what` when `promise` hangs, instead of a bare test timeout. */
function step<T>(what: string, promise: Promise<T>, ms = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`stuck: ${what}`)), ms)
    }),
  ])
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const madeUp = (n: number, tag: string) => Array.from({ length: n }, (_, i) => `ghost-${tag}-${i}` as UserId)

function client(relay: RelayProcess, name: string, token: string, options: { parley?: boolean } = {}) {
  const c = new TestClient(relay.url, name, token, options)
  clients.push(c)
  return c
}

async function opened(relay: RelayProcess, name: string, user: UserId) {
  const c = client(relay, name, await relay.token(user))
  await c.synced()
  return c
}

const closedWith = (c: TestClient, close: { code: number; reason: string }) =>
  c.closeEvent?.code === close.code && c.closeEvent.reason === close.reason

/**
 * Two users chatting over stock y-websocket providers, one message every
 * 100 ms in turn, each awaited on the other side; records the relay's
 * closes of either provider.
 */
async function honestPair(relay: RelayProcess) {
  const id = newConversationId()
  const a = stockProvider(relay.url, id, await relay.token(alice))
  const b = stockProvider(relay.url, id, await relay.token(bob))
  providers.push(a, b)
  const closes: number[] = []
  for (const p of [a, b])
    p.on("connection-close", (event: CloseEvent | null) => closes.push(event?.code ?? 0))
  await Promise.all([synced(a), synced(b)])
  createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
  await docUntil(b.doc, () => b.doc.getMap("meta").has("createdAt"))
  let running = true
  let delivered = 0
  const done = (async () => {
    for (let i = 0; running; i++) {
      const [from, to, user] = i % 2 === 0 ? [a, b, alice] : [b, a, bob]
      const body = `honest ${i}`
      sendMessage(from.doc, user, { body })
      await docUntil(to.doc, () => listMessages(to.doc, { last: 3 }).some((m) => m.body === body))
      delivered++
      await sleep(100)
    }
  })()
  return {
    closes,
    get delivered() {
      return delivered
    },
    async stop() {
      running = false
      await done
    },
  }
}

describe("per-user limits", () => {
  it("keeps an honest pair chatting while one user pushes at every per-user limit at once, and names each limit it meets", async () => {
    const relay = await startRelayProcess({
      args: [
        "--max-documents",
        "60",
        // Per connection, generous: what stops mallory here is what she does across connections.
        "--max-messages-per-second",
        "2000",
        "--message-burst",
        "2000",
        "--max-sockets-per-user",
        "10",
        "--max-documents-per-user",
        "4",
        "--user-updates-per-second",
        "100",
        "--user-update-burst",
        "1000",
        "--max-queued-bytes-per-user",
        String(1024 * 1024),
        "--user-conversations-per-minute",
        "2",
        "--user-participants-per-minute",
        "50",
        // Two copies of the large conversation and a half: the unread connections' asks overdraw it.
        "--user-answer-burst-bytes",
        String(30 * 1024 * 1024),
        // The whole history in the live document: its initial sync is what pins the relay here.
        "--history-segment-size",
        "0",
      ],
    })
    // A large conversation mallory belongs to: about 12 MB, more than the kernel's socket
    // buffers take, so a connection that asks for it and does not read pins it in the relay.
    const big = newConversationId()
    const builder = await opened(relay, big, carol)
    createConversation(builder.doc, carol, { kind: "group", id: big, participants: [mallory] })
    const body = "x".repeat(15_000)
    for (let frame = 0; frame < 16; frame++) {
      builder.doc.transact(() => {
        for (let i = 0; i < 50; i++) sendMessage(builder.doc, carol, { body })
      })
      await builder.allSaved()
    }

    // Mallory holds the large conversation open through a connection that reads it too: whatever the
    // relay does with her unread ones below, it stays one of her documents.
    const holder = await step("holder", opened(relay, big, mallory))

    const pair = await honestPair(relay)
    const started = performance.now()

    // Unread sync requests: four connections ask for the large conversation and never read.
    const unread: TestClient[] = []
    for (let i = 0; i < 4; i++) {
      const c = client(relay, big, await relay.token(mallory))
      await c.opened
      c.ws.pause()
      unread.push(c)
    }

    // Groups with made-up members: more participants than a minute allows is refused whole...
    const a = newConversationId()
    const ownA = await step("open a", opened(relay, a, mallory))
    createConversation(ownA.doc, mallory, { kind: "group", id: a, participants: madeUp(10, "a") })
    await step("create a", ownA.allSaved())
    const crowd = newConversationId()
    const tooMany = await step("open crowd", opened(relay, crowd, mallory))
    createConversation(tooMany.doc, mallory, { kind: "group", id: crowd, participants: madeUp(60, "c") })
    await step(
      "crowd refused",
      tooMany.until(() => tooMany.errors.length > 0),
    )
    expect(tooMany.errors[0]).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: UserLimit.participants })
    // ...and so is a third conversation in a minute.
    const b = newConversationId()
    const ownB = await step("open b", opened(relay, b, mallory))
    createConversation(ownB.doc, mallory, { kind: "group", id: b, participants: madeUp(10, "b") })
    await step("create b", ownB.allSaved())
    const third = await step("open crowd again", opened(relay, crowd, mallory))
    createConversation(third.doc, mallory, { kind: "group", id: crowd, participants: madeUp(1, "d") })
    await step(
      "third refused",
      third.until(() => third.errors.length > 0),
    )
    expect(third.errors[0]).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: UserLimit.conversations })

    // Holding documents: four are open (the large one, a, crowd, b); a fifth is refused.
    const fifth = client(relay, newConversationId(), await relay.token(mallory))
    expect(await step("fifth closed", fifth.closed)).toEqual(CloseCode.TooManyDocuments)

    // Many connections: at most ten at once, whatever else closed meanwhile.
    const flooders: TestClient[] = [ownA]
    for (let i = 0; i < 8; i++) {
      const c = client(relay, a, await relay.token(mallory))
      await step("socket", Promise.race([c.synced(), c.closed]))
      if (c.closeEvent) expect(c.closeEvent).toEqual(CloseCode.TooManySockets)
      else flooders.push(c)
    }
    expect(clients.filter((c) => closedWith(c, CloseCode.TooManySockets)).length).toBeGreaterThan(0)

    // An update flood spread over her connections: each stays under its own frame limit.
    // She sends far faster than her budget refills, until the relay stops her.
    let sent = 0
    while (!flooders.some((c) => closedWith(c, CloseCode.TooManyUpdates))) {
      const open = flooders.filter((c) => !c.closeEvent)
      if (open.length === 0) break
      for (let round = 0; round < 20; round++) {
        for (const c of open) sendMessage(c.doc, mallory, { body: `flood ${sent++}` })
      }
      await sleep(1)
    }
    expect(flooders.some((c) => closedWith(c, CloseCode.TooManyUpdates))).toBe(true)
    expect(await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.updates}"}`)).toBeGreaterThan(
      0,
    )
    // What was stored of the flood is what her budget allows, not what she sent (2,400+ updates).
    const watcher = client(relay, a, await relay.token("audit", { role: "service" }))
    await step("watcher", watcher.synced())
    const stored = listMessages(watcher.doc, { last: 10_000 }).filter((m) =>
      m.body.startsWith("flood"),
    ).length
    const seconds = (performance.now() - started) / 1000
    expect(stored).toBeLessThanOrEqual(1000 + 100 * seconds)
    expect(stored).toBeLessThan(sent)

    // The unread connections: the relay closed at least one instead of holding their copies. A
    // client that does not read cannot read the close frame either: it is dropped soon after.
    await step(
      "queued log",
      relay.waitForLog((line) => String(line.msg).includes("the user's connections read too slowly")),
    )
    expect(
      await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.queuedBytes}"}`),
    ).toBeGreaterThan(0)
    // She asked for more than her answer budget (each of her connections asks for 12 MB): later answers waited.
    expect(await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.answers}"}`)).toBeGreaterThan(
      0,
    )
    for (const c of unread) c.ws.resume()
    // One download at a time is allowed whatever its size: one may complete.
    // (A close frame follows the data it was queued behind: a round trip after the download shows it.)
    const settled = async (c: TestClient) => {
      await Promise.race([c.closed, c.synced()])
      const seen = c.frames.length
      c.send(new Uint8Array([MessageType.queryAwareness]))
      await c.until(() => c.frames.length > seen || c.closeEvent !== undefined)
    }
    await step("unread settled", Promise.all(unread.map(settled)))
    const dropped = unread.filter((c) => c.closeEvent)
    expect(dropped.length).toBeGreaterThan(0)
    for (const c of dropped) expect([CloseCode.TooManyQueuedBytes.code, 1006]).toContain(c.closeEvent!.code)

    // The honest pair kept talking throughout, and the relay never closed either of them.
    const before = pair.delivered
    await step(
      "honest messages after the attack",
      (async () => {
        while (pair.delivered < before + 3) await sleep(50)
      })(),
    )
    await step("honest pair stops", pair.stop())
    expect(pair.closes).toEqual([])
    expect(holder.closeEvent).toBeUndefined()
    const health = await (await fetch(`${relay.httpUrl}/healthz`)).json()
    expect(health.status).toBe("ok")
  }, 90_000)
})

describe("bytes read per user", () => {
  it("stops reading a user's connection while they send beyond their budget, without closing it, and reads everyone else meanwhile", async () => {
    const relay = await startRelayProcess({
      args: ["--user-receive-bytes-per-second", "1000000", "--user-receive-burst-bytes", "1000000"],
    })
    const id = newConversationId()
    const a = await opened(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob, mallory] })
    await a.allSaved()
    const b = await opened(relay, id, bob)
    const m = await opened(relay, id, mallory)
    // 3 MB of awareness frames (removals of ids nobody set: dropped, but read all the same), then a
    // query whose answer shows when the relay got to it.
    const frame = awarenessRemovals(12_000, 1_000_000)
    expect(frame.length).toBeGreaterThan(100_000)
    const started = performance.now()
    for (let i = 0; i < 30; i++) m.send(frame)
    // The answer to the query is an awareness frame (nobody else sets any in this room).
    const answers = () => m.frames.filter((f) => f[0] === MessageType.awareness).length
    const framesBefore = answers()
    m.send(new Uint8Array([MessageType.queryAwareness]))
    // Meanwhile bob's message goes through at once.
    sendMessage(b.doc, bob, { body: "not held up" })
    await step(
      "bob's message",
      a.until(() => listMessages(a.doc, { last: 10 }).some((x) => x.body === "not held up")),
    )
    expect(answers()).toBe(framesBefore)
    // Mallory's query is read once her budget has let 2 MB more through: after about two seconds.
    await step(
      "mallory's answer",
      m.until(() => answers() > framesBefore),
    )
    expect(performance.now() - started).toBeGreaterThan(1_500)
    expect(m.closeEvent).toBeUndefined()
    expect(
      await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.receivedBytes}"}`),
    ).toBeGreaterThan(0)
  })
})

describe("stored bytes per user per day", () => {
  it("refuses a user's changes beyond the day's bytes, retryably and without closing, while others keep writing", async () => {
    const relay = await startRelayProcess({ args: ["--user-update-bytes-per-day", "20000"] })
    const id = newConversationId()
    const a = await opened(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob, mallory] })
    await a.allSaved()
    const m = await opened(relay, id, mallory)
    const body = (i: number) => `${i}:${"x".repeat(1990)}`
    let sent = 0
    while (m.errors.length === 0 && sent < 40) {
      sendMessage(m.doc, mallory, { body: body(sent++) })
      await step("mallory's message", Promise.race([m.allSaved(), m.until(() => m.errors.length > 0)]))
    }
    expect(m.errors[0]).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: UserLimit.updateBytesPerDay })
    // Each message is about 2 KB: about ten of them fit in 20,000 bytes.
    expect(sent).toBeGreaterThan(5)
    expect(sent).toBeLessThan(15)
    // Refused, not closed: the same connection is still served (the SDK sends its pending work later).
    const b = await opened(relay, id, bob)
    sendMessage(b.doc, bob, { body: "bob is not limited by mallory's bytes" })
    await b.allSaved()
    await step(
      "mallory hears bob",
      m.until(() => listMessages(m.doc, { last: 100 }).some((x) => x.body.startsWith("bob is"))),
    )
    expect(m.closeEvent).toBeUndefined()
    // What is stored of mallory's is what the budget allowed.
    const watcher = await opened(relay, id, alice)
    const stored = listMessages(watcher.doc, { last: 100 }).filter((x) => x.author === mallory)
    expect(stored).toHaveLength(sent - 1)
    expect(
      await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.updateBytesPerDay}"}`),
    ).toBeGreaterThan(0)
  })
})

describe("awareness frames", () => {
  it("does not cut off a stock y-websocket client that sends back every awareness update it receives", async () => {
    // Default per-connection limits: 100 frames a second, bursts of 200.
    const relay = await startRelayProcess()
    const id = newConversationId()
    const speaker = await opened(relay, id, alice)
    createConversation(speaker.doc, alice, { kind: "group", id, participants: [bob] })
    await speaker.allSaved()
    const listener = stockProvider(relay.url, id, await relay.token(bob))
    providers.push(listener)
    const closes: number[] = []
    listener.on("connection-close", (event: CloseEvent | null) => closes.push(event?.code ?? 0))
    await synced(listener)

    // 300 presence changes at once, as a big room produces: the stock client echoes each one.
    for (let i = 1; i <= 300; i++) {
      speaker.awareness.setLocalState({ typing: i })
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MessageType.awareness)
      encoding.writeVarUint8Array(
        encoder,
        awarenessProtocol.encodeAwarenessUpdate(speaker.awareness, [speaker.doc.clientID]),
      )
      speaker.send(encoding.toUint8Array(encoder))
    }
    const seen = () =>
      (listener.awareness.getStates().get(speaker.doc.clientID) as { typing?: number } | undefined)?.typing
    while (seen() !== 300 && !speaker.closeEvent && closes.length === 0) await sleep(20)

    // Both still connected: a message from the speaker reaches the stock client.
    sendMessage(speaker.doc, alice, { body: "after the storm" })
    await docUntil(listener.doc, () =>
      listMessages(listener.doc, { last: 3 }).some((m) => m.body === "after the storm"),
    )
    expect(speaker.closeEvent).toBeUndefined()
    expect(closes).toEqual([])

    // Other frames keep their own per-connection limit.
    const flooder = await opened(relay, id, bob)
    for (let i = 0; i < 300; i++) flooder.send(new Uint8Array([MessageType.queryAwareness]))
    expect((await flooder.closed).code).toBe(CloseCode.RateLimited.code)
  }, 60_000)
})
