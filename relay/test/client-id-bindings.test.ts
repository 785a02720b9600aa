import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  createConversation,
  deleteConversation,
  directConversationId,
  ErrorCode,
  getConversation,
  listMessages,
  MessageType,
  newConversationId,
  reopenConversation,
  sendMessage,
  type UserId,
  UserLimit,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterEach, describe, expect, it, onTestFinished } from "vitest"
import * as awarenessProtocol from "y-protocols/awareness"
import * as Y from "yjs"
import { PostgresBackend } from "../src/backend/postgres.js"
import { SqliteBackend } from "../src/backend/sqlite.js"
import type { Backend } from "../src/backend/types.js"
import { bindingBytes } from "../src/policy/client-bindings.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import type { CoreLimits } from "../src/relay-core.js"
import { TestClient } from "./helpers/clients.js"
import { postgresUnreachable, scratchSchema } from "./helpers/postgres.js"
import { signToken } from "./helpers/relay-process.js"

const SECRET = "client-id-bindings-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId
const unreachable = await postgresUnreachable()
const skipPostgres = unreachable !== undefined && process.env.PARLEY_REQUIRE_SERVICES !== "1"

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

/** A fresh backend of `kind` (removed when the test ends), and how to open it again over the same data. */
async function freshStorage(kind: "sqlite" | "postgres"): Promise<{ open: () => Promise<Backend> }> {
  if (kind === "sqlite") {
    const dir = mkdtempSync(join(tmpdir(), "parley-bindings-"))
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }))
    return { open: async () => new SqliteBackend(dir) }
  }
  const scratch = await scratchSchema()
  onTestFinished(() => scratch.drop())
  return { open: () => PostgresBackend.open(scratch.url) }
}

async function freshBackend(kind: "sqlite" | "postgres"): Promise<Backend> {
  return (await freshStorage(kind)).open()
}

async function relayOn(backend: Backend, limits?: Partial<CoreLimits>): Promise<RunningRelay> {
  const relay = await startRelay({
    backend,
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    ...(limits ? { limits } : {}),
  })
  relays.push(relay)
  return relay
}

async function joinAs(relay: RunningRelay, user: UserId, id: string, doc?: Y.Doc): Promise<TestClient> {
  const client = new TestClient(relay.url, id, await signToken(SECRET, user), doc ? { doc } : {})
  clients.push(client)
  await client.synced()
  return client
}

/** The users (principal keys other than the relay's) owning a binding of `id`, one entry per binding. */
async function boundUsers(backend: Backend, id: string): Promise<string[]> {
  return [...(await backend.bindings.load(id)).values()].filter((key) => key !== "relay").sort()
}

/** Resolves once the purge the stored deletion of `id` owes has finished (its durable record cleared). */
async function purged(backend: Backend, id: string): Promise<void> {
  while ((await backend.purge!.owed()).includes(id)) await new Promise((resolve) => setTimeout(resolve, 20))
}

/** An awareness frame announcing a state under a client id of its own. */
function presenceFrame(): Uint8Array {
  const awareness = new awarenessProtocol.Awareness(new Y.Doc())
  awareness.setLocalState({ typing: true })
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.awareness)
  encoding.writeVarUint8Array(
    encoder,
    awarenessProtocol.encodeAwarenessUpdate(awareness, [awareness.clientID]),
  )
  awareness.destroy()
  return encoding.toUint8Array(encoder)
}

async function dropped(relay: RunningRelay, reason: string): Promise<number> {
  const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
  const line = new RegExp(`^parley_awareness_dropped_total\\{reason="${reason}"\\} (\\d+)`, "m").exec(text)
  return Number(line?.[1] ?? 0)
}

for (const kind of ["sqlite", "postgres"] as const) {
  describe.skipIf(kind === "postgres" && skipPostgres)(
    `client-id bindings of deleted conversations (${kind})`,
    () => {
      it("are dropped once a deleted group's purge is done, presence claims included", async () => {
        const backend = await freshBackend(kind)
        const relay = await relayOn(backend)
        const id = newConversationId()
        const a = await joinAs(relay, alice, id)
        createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
        sendMessage(a.doc, alice, { body: "from alice's first device" })
        await a.allSaved()
        // Her second device, and bob's, each write under an id of their own; bob claims one more in presence.
        const a2 = await joinAs(relay, alice, id)
        sendMessage(a2.doc, alice, { body: "from alice's second device" })
        await a2.allSaved()
        const b = await joinAs(relay, bob, id)
        sendMessage(b.doc, bob, { body: "from bob" })
        await b.allSaved()
        b.send(presenceFrame())
        await a.until(() => a.awareness.getStates().size > 0)
        expect(await boundUsers(backend, id)).toEqual(["user:alice", "user:alice", "user:bob", "user:bob"])

        deleteConversation(a.doc, alice)
        await a.allSaved()
        await purged(backend, id)
        expect(await boundUsers(backend, id)).toEqual([])
        // A claim in the deleted group (a member still connected) holds in memory only.
        b.send(presenceFrame())
        await a.until(() => a.awareness.getStates().size > 1)
        expect(await boundUsers(backend, id)).toEqual([])
      })

      it("are kept for a deleted direct conversation, which its pair writes in again after a reopen, also after a reload", async () => {
        const storage = await freshStorage(kind)
        const backend = await storage.open()
        const relay = await relayOn(backend)
        const id = directConversationId([alice, bob])
        const a = await joinAs(relay, alice, id)
        createConversation(a.doc, alice, { kind: "direct", participants: [bob] })
        sendMessage(a.doc, alice, { body: "before" })
        await a.allSaved()
        const b = await joinAs(relay, bob, id)
        sendMessage(b.doc, bob, { body: "before too" })
        await b.allSaved()
        deleteConversation(a.doc, alice)
        await a.allSaved()
        await purged(backend, id)
        // Either may reopen it, and their devices write on under the ids they had: still theirs.
        expect(await boundUsers(backend, id)).toEqual(["user:alice", "user:bob"])

        await b.until(() => getConversation(b.doc)?.deletedAt !== undefined)
        reopenConversation(b.doc, bob)
        sendMessage(b.doc, bob, { body: "after the reopen" })
        await b.allSaved()
        await a.until(() => listMessages(a.doc, { last: 10 }).some((m) => m.body === "after the reopen"))
        sendMessage(a.doc, alice, { body: "alice answers" })
        await a.allSaved()
        expect(a.errors).toEqual([])
        expect(b.errors).toEqual([])

        // Loaded again by a new relay: bob's id is still his, not alice's to write under.
        for (const c of clients.splice(0)) c.close()
        await relays.splice(0)[0]!.close()
        const next = await relayOn(await storage.open())
        const b2 = await joinAs(next, bob, id, b.doc)
        sendMessage(b2.doc, bob, { body: "bob, reloaded" })
        await b2.allSaved()
        const forged = new Y.Doc()
        Y.applyUpdate(forged, Y.encodeStateAsUpdate(b2.doc))
        forged.clientID = b2.doc.clientID
        sendMessage(forged, alice, { body: "alice as bob's device" })
        const m = await joinAs(next, alice, id)
        m.sendUpdate(Y.encodeStateAsUpdate(forged, Y.encodeStateVector(b2.doc)))
        await m.until(() => m.errors.length > 0)
        expect(m.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: "client-id-owner" })
      })
    },
  )
}

describe("client-id bindings and the daily budget of stored bytes", () => {
  it("charges each new client id's binding to its user: new groups of many new ids each are refused once their rows spent the day's bytes, a device's usual writes are not", async () => {
    const backend = await freshBackend("sqlite")
    const relay = await relayOn(backend, { userUpdateBytesPerDay: 100_000 })
    /** Mallory's new group, created under 201 client ids (its creation, then a short message under each new one). */
    const manyIds = async () => {
      const id = newConversationId()
      const m = await joinAs(relay, mallory, id)
      const replica = new Y.Doc()
      createConversation(replica, mallory, { kind: "group", id, participants: [alice] })
      for (let i = 0; i < 200; i++) {
        replica.clientID = 1_000_000 + i
        sendMessage(replica, mallory, { body: `${i}` })
      }
      const update = Y.encodeStateAsUpdate(replica)
      m.sendUpdate(update)
      await m.until(() => m.errors.length > 0 || m.saves.some((v) => Y.decodeStateVector(v).size > 100))
      return { id, m, bytes: update.length, rows: 201 * bindingBytes(id, "user:mallory") }
    }
    // ~13 KB of update, ~42 KB of rows: the first fits the day's 100,000 bytes, the second no longer does
    // (charged their update bytes alone, seven would).
    const first = await manyIds()
    expect(first.bytes * 7).toBeLessThan(100_000)
    expect(first.bytes + first.rows).toBeGreaterThan(50_000)
    expect(first.m.errors).toEqual([])
    expect(await boundUsers(backend, first.id)).toHaveLength(201)
    const second = await manyIds()
    expect(second.m.errors[0]).toMatchObject({
      code: ErrorCode.RATE_LIMITED,
      rule: UserLimit.updateBytesPerDay,
    })
    expect(await boundUsers(backend, second.id)).toEqual([])

    // Her device's own writes (one more id) still go through, and alice's are not hers to pay for.
    const m = await joinAs(relay, mallory, first.id)
    sendMessage(m.doc, mallory, { body: "an ordinary message" })
    await m.allSaved()
    const a = await joinAs(relay, alice, first.id)
    sendMessage(a.doc, alice, { body: "alice too" })
    await a.allSaved()
    expect(m.closeEvent).toBeUndefined()
    expect(await boundUsers(backend, first.id)).toHaveLength(203)
  })

  it("charges ids claimed through presence too: once the day's bytes are spent, a claim is dropped and binds nothing", async () => {
    const backend = await freshBackend("sqlite")
    // Four bindings' worth.
    const id = newConversationId()
    const perRow = bindingBytes(id, "user:mallory")
    const relay = await relayOn(backend, { userUpdateBytesPerDay: 4 * perRow + perRow / 2 })
    const a = await joinAs(relay, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [mallory] })
    await a.allSaved()
    const m = await joinAs(relay, mallory, id)
    // Ten claims: the relay's default lets ten a minute through.
    for (let i = 0; i < 10; i++) m.send(presenceFrame())
    const settled = async () =>
      (await boundUsers(backend, id)).filter((k) => k === "user:mallory").length +
      (await dropped(relay, "claims"))
    while ((await settled()) < 10) await new Promise((resolve) => setTimeout(resolve, 20))
    const claimed = (await boundUsers(backend, id)).filter((k) => k === "user:mallory").length
    expect(claimed).toBe(4)
    expect(await dropped(relay, "claims")).toBe(6)
  })
})
