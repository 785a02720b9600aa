import { CloseCode, createConversation, newConversationId, typesOf, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { MemoryBackend } from "../src/backend/index.js"
import { type RelayOptions, type RunningRelay, startRelay } from "../src/relay.js"
import { stockProvider, synced } from "./helpers/clients.js"
import { signToken } from "./helpers/relay-process.js"

const SECRET = "stock-limits-test-secret-0123456789abcdef"
const alice = "alice" as UserId
const relays: RunningRelay[] = []
const providers: WebsocketProvider[] = []
afterEach(async () => {
  for (const p of providers.splice(0)) p.destroy()
  for (const r of relays.splice(0)) await r.close()
})

/** A relay in memory with `limits`, stopped after the test. */
async function relayWith(limits: RelayOptions["limits"]): Promise<RunningRelay> {
  const relay = await startRelay({
    backend: new MemoryBackend(),
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    ...(limits ? { limits } : {}),
  })
  relays.push(relay)
  return relay
}

describe("a stock y-websocket provider closed by a limit", () => {
  it("is closed 1013 with the limit's name (not 4429, after which y-websocket stops for good) and gets in once the limit allows", async () => {
    const relay = await relayWith({ maxSocketsPerUser: 1 })
    const id = newConversationId()
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      createConversation(doc, alice, { kind: "group", id, participants: [], title: "two tabs" }),
    )
    const first = stockProvider(relay.url, id, await signToken(SECRET, alice))
    providers.push(first)
    await synced(first)
    // The same user's second provider is one socket too many.
    const doc = new Y.Doc()
    const second = stockProvider(relay.url, id, await signToken(SECRET, alice), doc)
    providers.push(second)
    const closes: { code: number; reason: string }[] = []
    second.on("connection-close", (event: CloseEvent | null) => {
      if (event) closes.push({ code: event.code, reason: event.reason })
    })
    await new Promise<void>((resolve) => {
      const check = () => (closes.length > 0 ? resolve() : setTimeout(check, 20))
      check()
    })
    expect(closes[0]).toEqual({ code: CloseCode.TryAgainLater.code, reason: "sockets-per-user" })
    // It keeps trying, and is in once the first closed its socket.
    first.destroy()
    await synced(second)
    expect(second.shouldConnect).toBe(true)
    expect(typesOf(doc).meta.get("title")).toBe("two tabs")
  })
})

describe("a stock y-websocket provider echoing others' presence", () => {
  it("is not paced for the echoes: others' presence, each within its sender's budget, costs its user nothing", async () => {
    // A small receive budget, so that a few senders' presence is more than it (the default is 4 MiB/s).
    const relay = await relayWith({ userReceiveBytesPerSecond: 50_000, userReceiveBurstBytes: 50_000 })
    const senders = ["s1", "s2", "s3", "s4"] as UserId[]
    const id = newConversationId()
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      createConversation(doc, alice, { kind: "group", id, participants: senders, title: "busy" }),
    )
    const carol = stockProvider(relay.url, id, await signToken(SECRET, alice))
    providers.push(carol)
    await synced(carol)
    const others: WebsocketProvider[] = []
    for (const user of senders) {
      const provider = stockProvider(relay.url, id, await signToken(SECRET, user))
      providers.push(provider)
      others.push(provider)
      await synced(provider)
    }
    const paced = async () => {
      const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
      return Number(/parley_user_limit_total\{limit="received-bytes-per-user"\} (\d+)/.exec(text)?.[1] ?? 0)
    }
    // Each sender 1.5 KB of presence 5 times a second (with the 4 KiB counted per frame, 28 KB/s: within
    // its 50 KB/s); carol, who echoes all of it (y-websocket re-sends every awareness update it applies),
    // would be billed 110 KB/s for it.
    const filler = "x".repeat(1500)
    for (let tick = 0; tick < 15; tick++) {
      others.forEach((p, i) => {
        p.awareness.setLocalState({ user: senders[i], tick, filler })
      })
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    // Carol's own work still goes through at once.
    typesOf(carol.doc).meta.set("title", "still mine to write")
    await new Promise<void>((resolve) => {
      const check = () =>
        typesOf(others[0]!.doc).meta.get("title") === "still mine to write"
          ? resolve()
          : setTimeout(check, 20)
      check()
    })
    // Before: carol's reading was paused for the echoes (the receive budget's limit counted again and again).
    expect(await paced()).toBe(0)
  })
})

describe("a stock y-websocket provider setting its own presence", () => {
  it("pays for each frame: its own presence sent back to it buys it no free frames", async () => {
    const relay = await relayWith({ userReceiveBytesPerSecond: 20_000, userReceiveBurstBytes: 20_000 })
    const id = newConversationId()
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      createConversation(doc, alice, { kind: "group", id, participants: [], title: "alone" }),
    )
    const provider = stockProvider(relay.url, id, await signToken(SECRET, alice))
    providers.push(provider)
    await synced(provider)
    // 1.5 KB ten times a second, with the 4 KiB counted per frame: 56 KB/s against 20.
    const filler = "x".repeat(1500)
    for (let tick = 0; tick < 30; tick++) {
      provider.awareness.setLocalState({ tick, filler })
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
    // Before: the relay's broadcast of each state back to its own socket counted as an echo owed,
    // and the socket's next frame went free (one user read at 60 times the budget: an outside probe);
    // it was paced once, for the first frames' burst, and is now again and again.
    expect(
      Number(/parley_user_limit_total\{limit="received-bytes-per-user"\} (\d+)/.exec(text)?.[1] ?? 0),
    ).toBeGreaterThan(5)
  })
})
