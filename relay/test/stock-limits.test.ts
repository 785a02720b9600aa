import { CloseCode, createConversation, newConversationId, typesOf, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { MemoryBackend } from "../src/backend/index.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
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

describe("a stock y-websocket provider closed by a limit", () => {
  it("is closed 1013 with the limit's name (not 4429, after which y-websocket stops for good) and gets in once the limit allows", async () => {
    const relay = await startRelay({
      backend: new MemoryBackend(),
      port: 0,
      warmUp: false,
      log: "silent",
      auth: { kind: "secret", secret: SECRET },
      limits: { maxSocketsPerUser: 1 },
    })
    relays.push(relay)
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
