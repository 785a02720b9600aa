import {
  type ConversationId,
  createConversation,
  listMessages,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { MemoryBackend } from "../src/backend/memory.js"
import { notOwner } from "../src/cluster/fenced-storage.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { TestClient } from "./helpers/clients.js"

const alice = "alice" as UserId
const id = "g~leasemoved" as ConversationId

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

const internalErrors = async (relay: RunningRelay) =>
  (await relay.metrics.registry.getMetricsAsJSON())
    .find((m) => m.name === "parley_errors_total")
    ?.values.find((v) => v.labels.code === "INTERNAL")?.value ?? 0

describe("a change whose append is refused as retryable (in a cluster: the document's lease moved)", () => {
  it("closes the document's clients with 4503 to reconnect, not as the relay's failure, and serves the stored document again", async () => {
    // What a clustered relay's fenced storage does once another relay took the lease (a Redis restart
    // loses every lease; an outside probe saw one FLUSHALL close a conversation's clients with 4500).
    const backend = new MemoryBackend()
    const append = backend.documents.append.bind(backend.documents)
    let refuse = false
    backend.documents.append = async (name, updates) => {
      if (refuse && name === id) throw notOwner(name)
      return append(name, updates)
    }
    const relay = await startRelay({ backend, port: 0, warmUp: false, log: "silent", dev: true })
    relays.push(relay)
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id, participants: [] })
      sendMessage(doc, alice, { body: "stored before" })
    })
    const client = new TestClient(relay.url, id, await relay.auth.mintDev(alice, {}))
    clients.push(client)
    await client.synced()
    const before = await internalErrors(relay)

    refuse = true
    sendMessage(client.doc, alice, { body: "refused by the fence" })
    const closed = await client.closed
    expect(closed.code).toBe(4503)
    expect(await internalErrors(relay)).toBe(before)

    // The next connection loads what storage holds, and a write goes through again.
    refuse = false
    const again = new TestClient(relay.url, id, await relay.auth.mintDev(alice, {}))
    clients.push(again)
    await again.synced()
    const bodies = () => listMessages(again.doc, { last: 10 }).map((m) => m.body)
    expect(bodies()).toEqual(["stored before"])
    sendMessage(again.doc, alice, { body: "stored after" })
    await again.allSaved()
    expect(bodies()).toEqual(["stored before", "stored after"])
  })
})
