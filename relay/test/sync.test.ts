import { createConversation, listMessages, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { WebSocket } from "ws"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { docUntil, stockProvider, synced, TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const providers: WebsocketProvider[] = []
const clients: TestClient[] = []
let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelayProcess()
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const p of providers.splice(0)) p.destroy()
  for (const c of clients.splice(0)) c.close()
})

async function provider(relay: RelayProcess, name: string, user: string, doc = new Y.Doc()) {
  const p = stockProvider(relay.url, name, await relay.token(user), doc)
  providers.push(p)
  await synced(p)
  return p
}

const bodies = (doc: Y.Doc) => listMessages(doc, { last: 100 }).map((m) => m.body)
const sequences = (doc: Y.Doc) => listMessages(doc, { last: 100 }).map((m) => [m.body, m.seq])

describe("sync with the stock y-websocket provider", () => {
  it("lets two users of a conversation converge", async () => {
    const id = newConversationId()
    const a = await provider(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob], title: "plans" })
    sendMessage(a.doc, alice, { body: "hello bob" })
    const b = await provider(relay, id, bob)
    await docUntil(b.doc, () => bodies(b.doc).includes("hello bob"))
    sendMessage(b.doc, bob, { body: "hi alice" })
    await docUntil(a.doc, () => bodies(a.doc).includes("hi alice"))
    await docUntil(b.doc, () => sequences(b.doc).every(([, seq]) => seq !== undefined))
    await docUntil(a.doc, () => sequences(a.doc).every(([, seq]) => seq !== undefined))
    expect(sequences(a.doc)).toEqual([
      ["hello bob", 1],
      ["hi alice", 2],
    ])
    expect(Y.encodeStateVector(a.doc)).toEqual(Y.encodeStateVector(b.doc))
  })

  it("relays awareness and removes it when the connection closes", async () => {
    const id = newConversationId()
    const a = await provider(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    const b = await provider(relay, id, bob)
    a.awareness.setLocalStateField("user", { name: "alice", typing: true })
    const aliceClient = a.awareness.clientID
    await new Promise<void>((resolve) => {
      const check = () => {
        if (b.awareness.getStates().get(aliceClient)?.user?.typing) {
          b.awareness.off("change", check)
          resolve()
        }
      }
      b.awareness.on("change", check)
      check()
    })
    // A hard close: alice never says goodbye in awareness, so the relay must remove her state.
    a.shouldConnect = false
    ;(a.ws as unknown as WebSocket).terminate()
    await new Promise<void>((resolve) => {
      const check = () => {
        if (!b.awareness.getStates().has(aliceClient)) {
          b.awareness.off("change", check)
          resolve()
        }
      }
      b.awareness.on("change", check)
      check()
    })
    expect(b.awareness.getStates().has(aliceClient)).toBe(false)
  })
})

describe("sequencing", () => {
  it("numbers messages 1, 2, 3 in the order the relay accepts them, including messages written offline", async () => {
    const id = newConversationId()
    // Bob's device writes two messages while offline (before connecting at all).
    const offline = new Y.Doc()
    const a = await provider(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { body: "first" })
    await docUntil(a.doc, () => sequences(a.doc)[0]?.[1] === 1)
    Y.applyUpdate(offline, Y.encodeStateAsUpdate(a.doc))
    sendMessage(offline, bob, { body: "offline one" })
    sendMessage(offline, bob, { body: "offline two" })
    sendMessage(a.doc, alice, { body: "second" })
    await docUntil(a.doc, () => sequences(a.doc).find(([b]) => b === "second")?.[1] === 2)
    const b = new TestClient(relay.url, id, await relay.token(bob))
    clients.push(b)
    Y.applyUpdate(b.doc, Y.encodeStateAsUpdate(offline), "offline")
    await b.synced()
    await docUntil(
      a.doc,
      () => bodies(a.doc).length === 4 && sequences(a.doc).every(([, s]) => s !== undefined),
    )
    const numbers = Object.fromEntries(sequences(a.doc))
    expect(numbers.first).toBe(1)
    expect(numbers.second).toBe(2)
    expect([numbers["offline one"], numbers["offline two"]]).toEqual([3, 4])
  })
})
