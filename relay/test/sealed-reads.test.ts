import {
  type ConversationId,
  createConversation,
  decodeSegment,
  deleteMessage,
  ErrorCode,
  editMessage,
  getMessage,
  listMessages,
  newConversationId,
  newMessageId,
  Rule,
  react,
  type SealedEntry,
  type Segment,
  sealedHistory,
  sealedSegments,
  sendMessage,
  type UserId,
  UserLimit,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { newApiKey } from "../src/api/keys.js"
import { MemoryBackend } from "../src/backend/index.js"
import type { SealedReadLimits } from "../src/history/keeper.js"
import { SEALED_READS_PER_UPDATE } from "../src/history/sealed-reads.js"
import {
  type HistoryStore,
  MemoryHistoryStore,
  type SealedRows,
  type StoredSegment,
} from "../src/history/store.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { apiClient } from "./api/helpers.js"
import { TestClient } from "./helpers/clients.js"
import { signToken } from "./helpers/relay-process.js"

const SECRET = "sealed-reads-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId
/** Segments of 10 messages, never folded: a conversation of 600 messages has 60. */
const SEGMENTS = 60
const HISTORY = { segmentSize: 10, keepLive: 5, epochClientIds: 1000, keepSummaries: 1000, foldSize: 0 }

/** A history store that counts the segments read from it (directory pages and id filters aside). */
class CountingStore implements HistoryStore {
  readonly inner = new MemoryHistoryStore()
  /** Segments returned by `get` and `all`. */
  reads = 0

  put(doc: string, segment: StoredSegment): Promise<void> {
    return this.inner.put(doc, segment)
  }
  async get(doc: string, index: number): Promise<StoredSegment | null> {
    const found = await this.inner.get(doc, index)
    if (found && index >= 0) this.reads++
    return found
  }
  async all(doc: string): Promise<StoredSegment[]> {
    const found = await this.inner.all(doc)
    this.reads += found.length
    return found
  }
  putIdFilter(doc: string, index: number, bytes: Uint8Array): Promise<void> {
    return this.inner.putIdFilter(doc, index, bytes)
  }
  putSealed(doc: string, sealed: SealedRows): Promise<void> {
    return this.inner.putSealed(doc, sealed)
  }
  idFilters(doc: string, from: number) {
    return this.inner.idFilters(doc, from)
  }
  close(): Promise<void> {
    return this.inner.close()
  }
}

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

interface Setup {
  readonly relay: RunningRelay
  readonly store: CountingStore
  readonly backend: MemoryBackend
}

async function relayWith(
  reads: Partial<SealedReadLimits> = {},
  userSealedReadsPerMinute?: number,
): Promise<Setup> {
  const backend = new MemoryBackend()
  const store = new CountingStore()
  Object.defineProperty(backend, "history", { value: store })
  const relay = await startRelay({
    backend,
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    history: { ...HISTORY, ...reads },
    // Unloaded once idle, so that a test's connections load the conversation afresh: holding no segment.
    limits: {
      idleUnloadMs: 50,
      ...(userSealedReadsPerMinute !== undefined ? { userSealedReadsPerMinute } : {}),
    },
  })
  relays.push(relay)
  return { relay, store, backend }
}

/**
 * A group of alice (owner), bob and mallory with `SEGMENTS` sealed segments,
 * each holding messages of both alice and bob (runs of 5), then unloaded: the
 * next connection loads it holding no segment.
 */
async function conversationWith(relay: RunningRelay): Promise<ConversationId> {
  const id = newConversationId()
  await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
    createConversation(doc, alice, { kind: "group", id, participants: [bob, mallory] }),
  )
  const total = SEGMENTS * HISTORY.segmentSize + 2 * HISTORY.keepLive
  for (let i = 0; i < total; i += 5) {
    const author = (i / 5) % 2 === 0 ? alice : bob
    await relay.core.write(id, { kind: "user", user: author }, (doc) => {
      for (let k = 0; k < 5; k++) sendMessage(doc, author, { body: `message ${i + k} by ${author}` })
    })
  }
  while ((await relay.core.read(id, (doc) => sealedSegments(doc).length)) < SEGMENTS)
    await new Promise((resolve) => setTimeout(resolve, 10))
  while (relay.core.loadedDocuments > 0) await new Promise((resolve) => setTimeout(resolve, 10))
  return id
}

/** Segment `index` of `id` as stored (not counted). */
async function segment(setup: Setup, id: ConversationId, index: number): Promise<Segment> {
  return decodeSegment((await setup.store.inner.get(id, index))!.bytes)
}

/** The first message by `author` in segment `index`. */
async function sealedBy(
  setup: Setup,
  id: ConversationId,
  index: number,
  author: UserId,
): Promise<SealedEntry> {
  return (await segment(setup, id, index)).entries.find((e) => e.record.author === author)!
}

async function connect(relay: RunningRelay, id: string, user: UserId): Promise<TestClient> {
  const c = new TestClient(relay.url, id, await signToken(SECRET, user))
  clients.push(c)
  await c.synced()
  return c
}

/**
 * Writes on a copy of `c`'s replica holding the segments `held` (as an
 * offline device that paged back would), sends the change as one update and
 * waits for its "saved" or its refusal (returned).
 */
async function sendOffline(
  c: TestClient,
  held: readonly Segment[],
  write: (doc: Y.Doc) => void,
): Promise<{ code: string; rule?: string } | undefined> {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(c.doc))
  for (const s of held) sealedHistory(copy).add(s)
  const before = Y.encodeStateVector(copy)
  write(copy)
  const errors = c.errors.length
  c.sendUpdate(Y.encodeStateAsUpdate(copy, before))
  const own = Y.getState(copy.store, copy.clientID)
  await c.until(
    () =>
      c.errors.length > errors ||
      c.saves.some((vector) => (Y.decodeStateVector(vector).get(copy.clientID) ?? 0) >= own),
  )
  return c.errors[errors]
}

/** Segments the relay holds for `id` now. */
const heldBy = (relay: RunningRelay, id: ConversationId) =>
  relay.core.read(id, (doc) => sealedHistory(doc).held())

describe("what one update makes the relay read of sealed history", () => {
  it("a refused update that names no sealed message reads no segment (it read all of them before)", async () => {
    const setup = await relayWith()
    const id = await conversationWith(setup.relay)
    const m = await connect(setup.relay, id, mallory)
    expect(await heldBy(setup.relay, id)).toEqual([])
    const reads = setup.store.reads
    // Refused by the rules: an edit of a live message of bob's, then an edit of a message nobody wrote.
    const bobs = listMessages(m.doc, { last: 20 }).find((v) => v.author === bob)!.id
    for (const target of [bobs, newMessageId()]) {
      const refused = await sendOffline(m, [], (doc) =>
        doc.getMap("edits").set(target, { body: "mallory's", editedAt: Date.now() }),
      )
      expect(refused?.code).toBe(ErrorCode.FORBIDDEN)
    }
    // At most a false positive of an id filter (about one in 1,400 at 60 segments), never the history.
    expect(setup.store.reads - reads).toBeLessThanOrEqual(1)
  })

  it("a frame of many sealed ids over many segments reads at most the bound, and is refused as retryable", async () => {
    const setup = await relayWith({ maxSealedReadsPerUpdate: 8 })
    const id = await conversationWith(setup.relay)
    const m = await connect(setup.relay, id, mallory)
    const sealed = await Promise.all(
      Array.from({ length: 40 }, (_, i) => sealedBy(setup, id, i, i % 2 === 0 ? alice : bob)),
    )
    // New messages under 40 sealed ids (the id filters name their segments): the settling is bounded.
    let reads = setup.store.reads
    const under = await sendOffline(m, [], (doc) => {
      for (const { record } of sealed) sendMessage(doc, mallory, { id: record.id, body: "mallory's" })
    })
    expect(under).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: SEALED_READS_PER_UPDATE })
    expect(setup.store.reads - reads).toBeLessThanOrEqual(8)
    // Reactions to 40 sealed messages in 40 other segments: allowed one by one, but one frame of them
    // makes the relay read at most the bound, then refuses the rest (retryable: nothing is stored).
    const others = await Promise.all(Array.from({ length: 20 }, (_, i) => segment(setup, id, 40 + i)))
    reads = setup.store.reads
    const reactions = await sendOffline(m, others, (doc) => {
      for (const s of others) react(doc, mallory, s.entries[0]!.record.id, "👀")
    })
    expect(reactions).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: SEALED_READS_PER_UPDATE })
    expect(setup.store.reads - reads).toBeLessThanOrEqual(8)
    // An id that is really taken is still refused as such once its segment is read.
    const one = sealed[39]!
    expect(
      await sendOffline(m, [], (doc) => sendMessage(doc, mallory, { id: one.record.id, body: "x" })),
    ).toMatchObject({
      code: ErrorCode.FORBIDDEN,
      rule: Rule.messageIdTaken,
    })
  })

  it("edits, reactions and deletions of sealed messages in different segments still work, by socket and HTTP API, reading only their segments", async () => {
    const setup = await relayWith()
    const made = newApiKey("backend", ["messages:read", "messages:write", "act-as-user"])
    await setup.backend.keys.create(made.record)
    const id = await conversationWith(setup.relay)
    const a = await connect(setup.relay, id, alice)
    const b = await connect(setup.relay, id, bob)
    const [s3, s20, s41, s55] = (await Promise.all([3, 20, 41, 55].map((i) => segment(setup, id, i)))) as [
      Segment,
      Segment,
      Segment,
      Segment,
    ]
    const mine = (s: Segment, user: UserId) => s.entries.find((e) => e.record.author === user)!.record.id
    let reads = setup.store.reads
    for (const s of [s3, s20]) sealedHistory(a.doc).add(s)
    sealedHistory(b.doc).add(s41)
    editMessage(a.doc, alice, mine(s3, alice), "alice's edit")
    deleteMessage(a.doc, alice, mine(s20, alice))
    react(b.doc, bob, mine(s41, alice), "👍")
    await Promise.all([a.allSaved(), b.allSaved()])
    expect(a.errors).toEqual([])
    expect(b.errors).toEqual([])
    // Each segment read once (and a false positive at most), not the 60 of the conversation.
    expect(setup.store.reads - reads).toBeGreaterThanOrEqual(3)
    expect(setup.store.reads - reads).toBeLessThanOrEqual(4)
    reads = setup.store.reads
    const api = apiClient(() => setup.relay.httpUrl, made.key)
    const target = mine(s55, bob)
    const edited = await api("PATCH", `/v1/conversations/${id}/messages/${target}`, {
      body: "bob's edit, by the API",
      asUser: "bob",
    })
    expect(edited.status).toBe(200)
    const reacted = await api("POST", `/v1/conversations/${id}/messages/${mine(s55, alice)}/reactions`, {
      emoji: "🎉",
      asUser: "alice",
    })
    expect(reacted.status).toBeLessThan(300)
    expect(setup.store.reads - reads).toBeLessThanOrEqual(2)
    // A message nobody wrote: not found, and nothing of the history read for it.
    reads = setup.store.reads
    const missing = await api("PATCH", `/v1/conversations/${id}/messages/${newMessageId()}`, {
      body: "nobody's",
      asUser: "bob",
    })
    expect(missing.status).toBe(404)
    expect(setup.store.reads - reads).toBeLessThanOrEqual(1)
    await setup.relay.core.read(id, (doc) => {
      // Deleted (a tombstone, or once purged a placeholder in its re-sealed segment).
      expect(getMessage(doc, mine(s20, alice))?.deleted).toMatchObject({ by: alice })
      expect(getMessage(doc, mine(s3, alice))?.body).toBe("alice's edit")
      expect(getMessage(doc, mine(s41, alice))?.reactions).toEqual({ "👍": [bob] })
      expect(getMessage(doc, target)?.body).toBe("bob's edit, by the API")
      expect(getMessage(doc, mine(s55, alice))?.reactions).toEqual({ "🎉": [alice] })
    })
  })

  it("an offline device's few dozen operations on sealed messages across many segments go through in one update", async () => {
    const setup = await relayWith()
    const id = await conversationWith(setup.relay)
    const a = await connect(setup.relay, id, alice)
    const segments = await Promise.all(Array.from({ length: 30 }, (_, i) => segment(setup, id, 2 * i)))
    const reads = setup.store.reads
    const refused = await sendOffline(a, segments, (doc) => {
      segments.forEach((s, i) => {
        const own = s.entries.filter((e) => e.record.author === alice).map((e) => e.record.id)
        const bobs = s.entries.find((e) => e.record.author === bob)!.record.id
        editMessage(doc, alice, own[0]!, `edited offline ${i}`)
        react(doc, alice, bobs, "👍")
        if (i % 3 === 0) deleteMessage(doc, alice, own[1]!)
      })
      // And a few new messages, under fresh ids.
      for (let k = 0; k < 5; k++) sendMessage(doc, alice, { body: `written offline ${k}` })
    })
    expect(refused).toBeUndefined()
    // 30 segments named, each read once; a false positive or two of the new ids at most.
    expect(setup.store.reads - reads).toBeGreaterThanOrEqual(30)
    expect(setup.store.reads - reads).toBeLessThanOrEqual(33)
    await setup.relay.core.read(id, (doc) => {
      expect(
        getMessage(doc, segments[7]!.entries.find((e) => e.record.author === alice)!.record.id)?.body,
      ).toBe("edited offline 7")
    })
  })

  it("charges the sender's budget per user: spent, further reads are refused as retryable; another user is unaffected", async () => {
    const setup = await relayWith({ maxSealedReadsPerUpdate: 8 }, 12)
    const id = await conversationWith(setup.relay)
    // Two sockets of mallory's share one budget.
    const m1 = await connect(setup.relay, id, mallory)
    const m2 = await connect(setup.relay, id, mallory)
    const b = await connect(setup.relay, id, bob)
    const reads = setup.store.reads
    const react1 = await Promise.all(Array.from({ length: 6 }, (_, i) => segment(setup, id, i)))
    const react2 = await Promise.all(Array.from({ length: 8 }, (_, i) => segment(setup, id, 10 + i)))
    const reactAll = (held: readonly Segment[]) => (doc: Y.Doc) => {
      for (const s of held) react(doc, mallory, s.entries[0]!.record.id, "👀")
    }
    expect(await sendOffline(m1, react1, reactAll(react1))).toBeUndefined()
    // 6 of 12 spent: the second frame, within the per-update bound, gets what is left and is refused.
    expect(await sendOffline(m2, react2, reactAll(react2))).toMatchObject({
      code: ErrorCode.RATE_LIMITED,
      rule: UserLimit.sealedReads,
    })
    const spent = setup.store.reads - reads
    expect(spent).toBeLessThanOrEqual(6 + 8)
    // Bob's own reaction to a sealed message in a segment nobody read is his to pay for.
    const s30 = await segment(setup, id, 30)
    expect(
      await sendOffline(b, [s30], (doc) => react(doc, bob, s30.entries[0]!.record.id, "👍")),
    ).toBeUndefined()
    expect(setup.store.reads - reads - spent).toBeGreaterThanOrEqual(1)
    expect(setup.store.reads - reads - spent).toBeLessThanOrEqual(2)
  })

  it("keeps a bounded number of the segments it read per document, and reads one again when needed", async () => {
    const setup = await relayWith({ maxSealedReadsPerUpdate: 4, heldSegmentsPerDocument: 6 })
    const id = await conversationWith(setup.relay)
    const a = await connect(setup.relay, id, alice)
    const read = async () => await heldBy(setup.relay, id)
    for (let i = 0; i < 20; i++) {
      const s = await segment(setup, id, i)
      expect(
        await sendOffline(a, [s], (doc) =>
          react(doc, alice, s.entries.find((e) => e.record.author === bob)!.record.id, "👍"),
        ),
      ).toBeUndefined()
      expect((await read()).length).toBeLessThanOrEqual(6)
    }
    // Segment 0 was let go: an edit of a message in it reads it again, and is allowed.
    const s0 = await segment(setup, id, 0)
    const reads = setup.store.reads
    const own = s0.entries.find((e) => e.record.author === alice)!.record.id
    expect(await sendOffline(a, [s0], (doc) => editMessage(doc, alice, own, "again"))).toBeUndefined()
    expect(setup.store.reads - reads).toBeGreaterThanOrEqual(1)
    expect(setup.store.reads - reads).toBeLessThanOrEqual(2)
    expect((await read()).length).toBeLessThanOrEqual(6)
  })
})
