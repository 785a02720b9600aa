import { CloseCode, type ConversationId, createConversation, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { MemoryBackend } from "../src/backend/memory.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { TestClient } from "./helpers/clients.js"
import { signToken } from "./helpers/relay-process.js"

// A connect a non-member makes loads the document before access refuses it (issue #13: how much memory
// can one frame buy?). What it loaded stays resident until it idles out: counted against whoever made
// it load, so a loop of refused connects cannot hold more documents than the user could open.

const SECRET = "refused-connect-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId
const PER_USER = 3

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

async function relayWith(idleUnloadMs: number): Promise<RunningRelay> {
  const relay = await startRelay({
    backend: new MemoryBackend(),
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    limits: { idleUnloadMs, maxDocumentsPerUser: PER_USER },
  })
  relays.push(relay)
  return relay
}

async function client(relay: RunningRelay, name: string, user: UserId): Promise<TestClient> {
  const c = new TestClient(relay.url, name, await signToken(SECRET, user))
  clients.push(c)
  await c.opened
  return c
}

async function conversation(relay: RunningRelay, id: string): Promise<ConversationId> {
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id: id as ConversationId, participants: [bob] })
    sendMessage(doc, alice, { body: `secret of ${id}` })
  })
  return id as ConversationId
}

describe("refused connects", () => {
  it("count what they loaded against the refused user until it unloads, and never serve it", async () => {
    const relay = await relayWith(60_000)
    const ids: ConversationId[] = []
    for (let i = 0; i < PER_USER + 2; i++) ids.push(await conversation(relay, `g~theirs${i}`))

    // Each refused connect held one more document; once she holds as many as a user may open,
    // the next is refused before anything is loaded (before: released at once, so a loop of them
    // kept hundreds of documents per user resident for the idle delay).
    const codes: number[] = []
    for (const id of ids) {
      const m = await client(relay, id, mallory)
      codes.push((await m.closed).code)
      expect(m.doc.share.size).toBe(0)
    }
    expect(codes).toEqual([
      ...Array(PER_USER).fill(CloseCode.Forbidden.code),
      CloseCode.TooManyDocuments.code,
      CloseCode.TooManyDocuments.code,
    ])
    // Refused again on a document she already holds: counted once, not once per attempt.
    const again = await client(relay, ids[0]!, mallory)
    expect((await again.closed).code).toBe(CloseCode.Forbidden.code)

    // Members are not affected: bob opens every one of them and reads alice's message.
    for (const id of ids) {
      const b = await client(relay, id, bob)
      await b.synced()
      const first = b.doc.getArray("messages").length
      expect(first).toBeGreaterThan(0)
      b.close()
    }
  })

  it("release what they held once it unloads", async () => {
    const relay = await relayWith(300)
    const ids: ConversationId[] = []
    for (let i = 0; i < PER_USER + 1; i++) ids.push(await conversation(relay, `g~held${i}`))
    for (const id of ids.slice(0, PER_USER)) await (await client(relay, id, mallory)).closed
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    const later = await client(relay, ids[PER_USER]!, mallory)
    expect((await later.closed).code).toBe(CloseCode.Forbidden.code)
    // Her own conversation opens as well.
    const own = await client(relay, "g~mine", mallory)
    await own.synced()
    expect(own.closeEvent).toBeUndefined()
  })
})
