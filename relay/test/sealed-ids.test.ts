import {
  type ConversationId,
  createConversation,
  decodeSegment,
  deleteMessage,
  ErrorCode,
  editMessage,
  encodeStoredRecord,
  getMessage,
  listMessages,
  listSealedMessages,
  type MessageId,
  newConversationId,
  Rule,
  react,
  sealedHistory,
  sendMessage,
  tombstoneOf,
  typesOf,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { newApiKey } from "../src/api/keys.js"
import { type Backend, MemoryBackend, SqliteBackend } from "../src/backend/index.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { apiClient, freshDataDir } from "./api/helpers.js"
import { stockProvider, synced, TestClient } from "./helpers/clients.js"
import { requestSegment } from "./helpers/history-requests.js"
import { signToken } from "./helpers/relay-process.js"

const SECRET = "sealed-ids-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId
/** Segments of 10 with 5 kept live; summaries folded into directory pages two at a time past one. */
const HISTORY = { segmentSize: 10, keepLive: 5, epochClientIds: 1000, keepSummaries: 1, foldSize: 2 }

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

async function relayOn(backend: Backend): Promise<RunningRelay> {
  const relay = await startRelay({
    backend,
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    history: HISTORY,
  })
  relays.push(relay)
  return relay
}

async function connect(relay: RunningRelay, id: string, user: UserId, parley = true): Promise<TestClient> {
  const c = new TestClient(relay.url, id, await signToken(SECRET, user), { parley })
  clients.push(c)
  await c.synced()
  return c
}

/** A group of alice, bob and mallory with `count` messages by alice and bob in turn, through the relay. */
async function conversationWith(relay: RunningRelay, count: number): Promise<ConversationId> {
  const id = newConversationId()
  await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
    createConversation(doc, alice, { kind: "group", id, participants: [bob, mallory] }),
  )
  for (let i = 0; i < count; i++) {
    const author = i % 2 === 0 ? alice : bob
    await relay.core.write(id, { kind: "user", user: author }, (doc) =>
      sendMessage(doc, author, { body: `message ${i}` }),
    )
  }
  return id
}

/** Segment `index` as the relay serves it to `c`. */
async function segment(c: TestClient, index: number, request = 500 + index) {
  const page = await requestSegment(c, index, request)
  if (page.error !== undefined) throw new Error(`segment ${index} refused: ${page.error}`)
  return decodeSegment(page.bytes)
}

/** Writes on a copy of `c`'s replica and sends the change as one update (as an offline device would). */
function sendWritten(c: TestClient, write: (doc: Y.Doc) => void): void {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(c.doc))
  const before = Y.encodeStateVector(copy)
  write(copy)
  c.sendUpdate(Y.encodeStateAsUpdate(copy, before))
}

describe("a new message under a sealed message's id", () => {
  it("is refused (message-id-taken) from a stock y-websocket client, also by a relay that holds no segment", async () => {
    const dataDir = freshDataDir()
    let relay = await relayOn(new SqliteBackend(dataDir))
    const id = await conversationWith(relay, 40)
    const reader = await connect(relay, id, bob)
    // Alice's first message, sealed into segment 0 (folded into a directory page since).
    const sealed = (await segment(reader, 0)).entries[0]!.record
    const latest = (await segment(reader, 2)).entries.at(-1)!.record
    for (const restarted of [false, true]) {
      if (restarted) {
        await relay.close()
        relay = await relayOn(new SqliteBackend(dataDir))
      }
      for (const target of [sealed, latest]) {
        const doc = new Y.Doc()
        const provider = stockProvider(relay.url, id, await signToken(SECRET, mallory), doc)
        const closed = new Promise<{ code: number; reason: string }>((resolve) =>
          provider.once("connection-close", (event) => resolve({ code: event!.code, reason: event!.reason })),
        )
        try {
          await synced(provider)
          sendMessage(doc, mallory, { id: target.id, body: "mallory's, under alice's id" })
          expect(await closed).toEqual({ code: 4403, reason: Rule.messageIdTaken })
        } finally {
          provider.destroy()
        }
      }
      // Nothing of it was stored: the conversation has alice's message under that id, and only hers.
      const check = await connect(relay, id, bob)
      expect(listMessages(check.doc, { last: 100 }).filter((m) => m.body.includes("alice's id"))).toEqual([])
      // Honest writers are unaffected, stock ones included.
      const doc = new Y.Doc()
      const provider = stockProvider(relay.url, id, await signToken(SECRET, mallory), doc)
      try {
        await synced(provider)
        const mine = sendMessage(doc, mallory, { body: `mallory's own${restarted ? " again" : ""}` })
        await check.until(() => getMessage(check.doc, mine.id)?.seq !== undefined)
      } finally {
        provider.destroy()
      }
    }
  })

  it("is refused as a typed error to a raw client, with everything it came with; a deletion of a sealed message keeps its author", async () => {
    const dataDir = freshDataDir()
    let relay = await relayOn(new SqliteBackend(dataDir))
    const id = await conversationWith(relay, 40)
    await relay.close()
    // Restarted: the relay reads no segment until a change needs one.
    relay = await relayOn(new SqliteBackend(dataDir))
    const m = await connect(relay, id, mallory)
    const b = await connect(relay, id, bob)
    const target = (await segment(b, 1)).entries[2]!.record // alice's
    sendWritten(m, (doc) => {
      sendMessage(doc, mallory, { body: "an honest one, bundled" })
      sendMessage(doc, mallory, { id: target.id, body: "mallory's, under alice's id" })
    })
    await m.until(() => m.errors.length > 0)
    expect(m.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.messageIdTaken })
    // A bare placeholder naming herself as author of alice's sealed message: refused too (before, the
    // relay turned it into a tombstone of alice's message, deleted by mallory).
    const m2 = await connect(relay, id, mallory)
    m2.doc.transact(() =>
      typesOf(m2.doc).messages.push([
        encodeStoredRecord({
          id: target.id,
          author: mallory,
          createdAt: target.createdAt,
          deletedAt: Date.now(),
          deletedBy: mallory,
        }),
      ]),
    )
    await m2.until(() => m2.errors.length > 0)
    expect(m2.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.immutable })
    await b.synced()
    expect(tombstoneOf(b.doc, target.id)).toBeUndefined()
    expect(listMessages(b.doc, { last: 100 }).filter((v) => v.author === mallory)).toEqual([])
  })

  it("leaves alice's sealed message alone: no one else's message, edit or deletion reaches it under its id", async () => {
    const relay = await relayOn(new MemoryBackend())
    const id = await conversationWith(relay, 40)
    const a = await connect(relay, id, alice)
    const b = await connect(relay, id, bob)
    const m = await connect(relay, id, mallory)
    const x = (await segment(a, 0)).entries[0]!.record as { id: MessageId }
    for (const c of [a, b]) sealedHistory(c.doc).add(await segment(c, 0, 900))
    editMessage(a.doc, alice, x.id, "alice's edit")
    react(b.doc, bob, x.id, "👍")
    await Promise.all([a.allSaved(), b.allSaved()])

    // Mallory's replica does not hold the segment: her SDK writes a new message under the id.
    sendMessage(m.doc, mallory, { id: x.id, body: "mallory's impostor" })
    await m.until(() => m.errors.length > 0)
    expect(m.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.messageIdTaken })
    // So she cannot edit or delete "that id" either: it is alice's message.
    const other = await connect(relay, id, mallory)
    sealedHistory(other.doc).add(await segment(other, 0, 901))
    expect(() => editMessage(other.doc, mallory, x.id, "mallory's edit")).toThrow()
    typesOf(other.doc).edits.set(x.id, { body: "mallory's edit", editedAt: Date.now() })
    await other.until(() => other.errors.length > 0)
    expect(other.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.authorOnly })
    expect(() => deleteMessage(other.doc, mallory, x.id)).toThrow()

    await b.synced()
    expect(getMessage(b.doc, x.id)).toMatchObject({
      author: alice,
      body: "alice's edit",
      seq: 1,
      reactions: { "👍": [bob] },
    })
    expect(listSealedMessages(b.doc, 100, 100).filter((v) => v.id === x.id)).toHaveLength(1)
    expect(listMessages(b.doc, { last: 100 }).filter((v) => v.id === x.id)).toEqual([])
  })

  it("leaves a sealed message alone when a message written under its id before the rule is deleted, and lists it once", async () => {
    const dataDir = freshDataDir()
    const made = newApiKey("backend", ["conversations:read", "messages:read"])
    let backend = new SqliteBackend(dataDir)
    await backend.keys.create(made.record)
    let relay = await relayOn(backend)
    const id = await conversationWith(relay, 40)
    const reader = await connect(relay, id, bob)
    const [x, y] = (await segment(reader, 0)).entries.map((e) => e.record)
    await relay.close()
    backend = new SqliteBackend(dataDir)
    relay = await relayOn(backend)
    // What the relay accepted before it refused sealed ids, as trusted writes that are not checked:
    // one numbered message under y's id (the relay held no segment), then one never numbered under
    // x's (the relay holds the segment by then), which its writer deletes.
    const asMallory = { kind: "user", user: mallory } as const
    await relay.core.write(id, asMallory, (doc) => sendMessage(doc, mallory, { id: y!.id, body: "numbered" }))
    await relay.core.settleSealedIds(id, [x!.id])
    await relay.core.write(id, asMallory, (doc) =>
      typesOf(doc).messages.push([
        encodeStoredRecord({ id: x!.id, author: mallory, body: "never numbered", createdAt: Date.now() }),
      ]),
    )
    await relay.core.write(id, asMallory, (doc) => deleteMessage(doc, mallory, x!.id))
    // The deletion was mallory's message's: alice's sealed one is neither deleted nor purged.
    expect(await relay.core.read(id, (doc) => tombstoneOf(doc, x!.id))).toBeUndefined()
    const check = await connect(relay, id, bob)
    sealedHistory(check.doc).add(await segment(check, 0, 700))
    expect(getMessage(check.doc, x!.id)).toMatchObject({ author: alice, body: "message 0" })
    expect(getMessage(check.doc, y!.id)).toMatchObject({ author: bob, body: "message 1", seq: 2 })
    expect(listMessages(check.doc, { last: 100 }).filter((m) => m.author === mallory)).toEqual([])
    // The API, reading through the relay that holds the segment, lists each id once: the sealed message.
    const api = apiClient(() => relay.httpUrl, made.key)
    const listed = await api("GET", `/v1/conversations/${id}/messages?after=0&limit=100`)
    const under = (messageId: string) =>
      listed.body.messages
        .filter((m: { id: string }) => m.id === messageId)
        .map((m: { seq: number; author: string }) => [m.seq, m.author])
    expect(under(x!.id)).toEqual([[1, "alice"]])
    expect(under(y!.id)).toEqual([[2, "bob"]])
  })

  it("is found by the HTTP API (a replay, or CONFLICT), never written a second time, after a restart too", async () => {
    const dataDir = freshDataDir()
    const made = newApiKey("backend", [
      "conversations:write",
      "messages:read",
      "messages:write",
      "act-as-user",
    ])
    let backend = new SqliteBackend(dataDir)
    await backend.keys.create(made.record)
    let relay = await relayOn(backend)
    const id = await conversationWith(relay, 40)
    const reader = await connect(relay, id, bob)
    const target = (await segment(reader, 0)).entries[0]!.record as { id: MessageId; body: string }
    await relay.close()
    backend = new SqliteBackend(dataDir)
    relay = await relayOn(backend)
    const api = apiClient(() => relay.httpUrl, made.key)
    const sent = await api("POST", `/v1/conversations/${id}/messages`, {
      id: target.id,
      body: "the backend's, under alice's id",
      asUser: "mallory",
    })
    expect(sent.status).toBe(409)
    const listed = await api("GET", `/v1/conversations/${id}/messages?after=0&limit=100`)
    expect(listed.body.messages.filter((m: { id: string }) => m.id === target.id)).toHaveLength(1)
  })
})
