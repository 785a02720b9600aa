import {
  baselineSource,
  type ConversationId,
  checkEpochRecord,
  createConversation,
  decodeDirectoryPage,
  decodeEpochRecord,
  decodeSegment,
  deleteMessage,
  ErrorCode,
  editMessage,
  encodeHistoryRequest,
  encodeSyncUpdate,
  epochBaseline,
  epochCount,
  foldedHistory,
  getMessage,
  type HistoryPage,
  listMessages,
  type MessageId,
  MessageType,
  markRead,
  newConversationId,
  newMessageId,
  Rule,
  react,
  reactionKey,
  rebasePendingWork,
  refoldSegment,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  sealedUnread,
  segmentHash,
  sendMessage,
  typesOf,
  type UserId,
  unreact,
  unreadCount,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { MemoryBackend } from "../src/backend/memory.js"
import { epochValueBytes } from "../src/history/epoch.js"
import { foldedReactionsIndex } from "../src/history/store.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { docUntil, stockProvider, synced, TestClient } from "./helpers/clients.js"
import { requestDirectory, requestEpochRecord, requestSegment } from "./helpers/history-requests.js"
import { signToken } from "./helpers/relay-process.js"

const SECRET = "history-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

async function relayWith(
  backend = new MemoryBackend(),
  segmentSize = 10,
  keepLive = 5,
  epochClientIds = 1000,
  fold: { keepSummaries: number; foldSize: number; refoldMessages?: number } = {
    keepSummaries: 4,
    foldSize: 16,
  },
  limits: NonNullable<Parameters<typeof startRelay>[0]>["limits"] = {},
) {
  const relay = await startRelay({
    backend,
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    history: { segmentSize, keepLive, epochClientIds, ...fold },
    limits,
  })
  relays.push(relay)
  return relay
}

async function connect(relay: RunningRelay, id: string, user: UserId): Promise<TestClient> {
  const c = new TestClient(relay.url, id, await signToken(SECRET, user))
  clients.push(c)
  await c.synced()
  return c
}

/** A conversation of alice and bob with `count` messages alternating authors, written through the relay. */
async function conversationWith(relay: RunningRelay, count: number): Promise<ConversationId> {
  const id = newConversationId()
  await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
    createConversation(doc, alice, { kind: "group", id, participants: [bob] }),
  )
  for (let i = 0; i < count; i++) {
    const author = i % 2 === 0 ? alice : bob
    await relay.core.write(id, { kind: "user", user: author }, (doc) =>
      sendMessage(doc, author, { body: `message ${i}` }),
    )
  }
  return id
}

/** The bytes of a page that was served (fails the test when it was refused). */
function segmentBytes(page: HistoryPage): number {
  if (page.error !== undefined) throw new Error(`page refused: ${page.error}`)
  return page.bytes.length
}

/** The decoded segment of a page that was served (fails the test when it was refused). */
function segmentOf(page: HistoryPage) {
  if (page.error !== undefined) throw new Error(`page refused: ${page.error}`)
  return decodeSegment(page.bytes)
}

describe("a sealed page rewritten while it is read", () => {
  it("is read again and served as the document names it now, not refused as missing", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 40)
    const c = await connect(relay, id, bob)
    // Alice's first message, in segment 0.
    const first = segmentOf(await requestSegment(c, 0, 99)).entries[0]!.record.id as MessageId
    const keeper = (
      relay.core as unknown as { options: { history: { page: (...args: unknown[]) => Promise<unknown> } } }
    ).options.history
    const page = keeper.page.bind(keeper)
    let release!: () => void
    const held = new Promise<void>((resolve) => {
      release = resolve
    })
    let reads = 0
    keeper.page = async (...args: unknown[]) => {
      // The first read waits until the segment was re-sealed; it then reads what storage holds by then.
      if (reads++ === 0) await held
      return page(...args)
    }
    const before = sealedSegments(c.doc)[0]!.hash
    const answer = requestSegment(c, 0)
    // Alice deletes it; the purge re-seals the segment meanwhile.
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => deleteMessage(doc, alice, first))
    await c.until(() => sealedSegments(c.doc)[0]!.hash !== before)
    release()
    const served = await answer
    expect(served.error).toBeUndefined()
    if (served.error !== undefined) throw new Error(`page refused: ${served.error}`)
    expect(segmentHash(served.bytes)).toBe(sealedSegments(c.doc)[0]!.hash)
  })
})

describe("sealed history", () => {
  it("moves old messages into segments: the live document keeps the latest, a joiner sees them and can page back", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 40)
    const c = await connect(relay, id, bob)
    // 40 messages, segments of 10 once 15 are live: three sealed, the latest ten live.
    expect(sealedSegments(c.doc).map((s) => [s.from, s.to])).toEqual([
      [1, 10],
      [11, 20],
      [21, 30],
    ])
    const live = listMessages(c.doc, { last: 100 })
    expect(live.map((m) => m.body)).toEqual(Array.from({ length: 10 }, (_, i) => `message ${30 + i}`))
    expect(typesOf(c.doc).messages.length).toBe(10)

    const page = await requestSegment(c, 1)
    expect(page.error).toBeUndefined()
    const segment = segmentOf(page)
    expect(segment.entries.map((e) => e.record.id)).toHaveLength(10)
    expect(segment.entries.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => 11 + i))
    sealedHistory(c.doc).add(segment)
    expect(getMessage(c.doc, segment.entries[0]!.record.id)?.body).toBe("message 10")
  })

  it("seals a burst larger than a segment down to the kept size without waiting for another change", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 0)
    // One change of 70 messages (an offline backlog arriving at once): seven segments' worth.
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      for (let i = 0; i < 70; i++) sendMessage(doc, alice, { body: `burst ${i}` })
    })
    const live = () => relay.core.read(id, (doc) => listMessages(doc, { last: 1_000 }).length)
    const deadline = Date.now() + 10_000
    while ((await live()) >= 15 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    // keepLive 5 + segmentSize 10: fewer than 15 left live, the rest sealed in segments of 10.
    expect(await live()).toBeLessThan(15)
    expect(await relay.core.read(id, (doc) => sealedThrough(doc))).toBeGreaterThanOrEqual(60)
  })

  it("seals long messages by their characters: 100 messages at the body's limit leave a live document under 1 MB", async () => {
    // The default bounds: 500 per segment and 250 kept, or 256 Ki characters each.
    const relay = await relayWith(new MemoryBackend(), 500, 250)
    const id = await conversationWith(relay, 0)
    const body = (i: number) => `long ${i} `.padEnd(16_000, "x")
    for (let i = 0; i < 100; i++) {
      const author = i % 2 === 0 ? alice : bob
      await relay.core.write(id, { kind: "user", user: author }, (doc) =>
        sendMessage(doc, author, { body: body(i) }),
      )
    }
    const size = () => relay.core.read(id, (doc) => Y.encodeStateAsUpdate(doc).length)
    const deadline = Date.now() + 10_000
    while ((await size()) >= 1_000_000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    // 1.6 million characters written; what stays live is at most keep + one segment's worth (512 Ki).
    expect(await size()).toBeLessThan(1_000_000)
    const c = await connect(relay, id, bob)
    const live = listMessages(c.doc, { last: 1_000 })
    expect(live.at(-1)!.body).toBe(body(99))
    // Every earlier message is in a segment the member can page back to.
    const segments = sealedSegments(c.doc)
    expect(segments[0]!.from).toBe(1)
    expect(segments.at(-1)!.to + live.length).toBe(100)
    let found = 0
    for (const summary of segments) {
      const segment = segmentOf(await requestSegment(c, summary.index))
      expect(segment.entries.map((e) => (e.record as { body: string }).body)).toEqual(
        Array.from({ length: summary.to - summary.from + 1 }, (_, i) => body(summary.from - 1 + i)),
      )
      found += segment.entries.length
    }
    expect(found + live.length).toBe(100)
  })

  it("stores the seals one change makes due as one change, each message sealed once and only once", async () => {
    const backend = new MemoryBackend()
    let id = "" as ConversationId
    // The order of durable writes: segments (history) and live-document changes (the log).
    const writes: string[] = []
    const append = backend.documents.append.bind(backend.documents)
    backend.documents.append = (name, updates) => {
      // Only the conversation's own log (its participants' inbox documents are written too).
      if (name.includes(id)) writes.push("change")
      return append(name, updates)
    }
    const putSealed = backend.history.putSealed.bind(backend.history)
    backend.history.putSealed = (doc, sealed) => {
      writes.push(
        `segments ${sealed.segments.map((s) => s.index).join(",")}, filters ${sealed.idFilters.map((f) => f.index).join(",")}`,
      )
      return putSealed(doc, sealed)
    }
    const relay = await relayWith(backend)
    id = await conversationWith(relay, 0)
    // 45 messages at once: keepLive 5 + segmentSize 10, so four segments are due (45 → 35 → 25 → 15 → 5).
    const sent = Array.from({ length: 45 }, () => newMessageId())
    writes.length = 0
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      for (const [i, message] of sent.entries()) sendMessage(doc, alice, { id: message, body: `burst ${i}` })
    })
    const deadline = Date.now() + 10_000
    while ((await relay.core.read(id, (doc) => sealedThrough(doc))) < 40 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20))
    await relay.core.read(id, () => undefined)
    // The burst, then every segment stored with its id filter in one write before the one change
    // that names them all.
    expect(writes).toEqual(["change", "segments 0,1,2,3, filters 0,1,2,3", "change"])
    const key = [...(await backend.documents.list())].find((name) => name.includes(id))!
    const sealed = (await backend.history.all(key)).flatMap((s) => decodeSegment(s.bytes).entries)
    expect(sealed.map((e) => e.seq)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1))
    const live = await relay.core.read(id, (doc) => listMessages(doc, { last: 1_000 }).map((m) => m.id))
    expect([...sealed.map((e) => e.record.id), ...live]).toEqual(sent)
  })

  it("keeps unread counts exact across segments", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 40)
    const c = await connect(relay, id, bob)
    // Bob read nothing: alice wrote 20 of the 40.
    expect(unreadCount(c.doc, bob)).toBe(20)
    // A marker inside a sealed segment the replica does not hold counts that whole segment...
    markRead(c.doc, bob, 14)
    await c.allSaved()
    // ...and exactly once it is held: alice wrote 16, 18, 20 in 15..20, then 10 more above 20.
    sealedHistory(c.doc).add(segmentOf(await requestSegment(c, 1)))
    expect(unreadCount(c.doc, bob)).toBe(3 + 5 + 5)
  })

  it("counts the relay's unread exactly after a load too, holding the segment a read marker falls inside", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 1000, undefined, { idleUnloadMs: 50 })
    const id = await conversationWith(relay, 40)
    await relay.core.write(id, { kind: "user", user: bob }, (doc) => markRead(doc, bob, 14))
    const unread = () => relay.core.read(id, (doc) => unreadCount(doc, bob))
    expect(await unread()).toBe(3 + 5 + 5)
    // Dropped from memory and loaded again (an idle unload, a restart): before, the marker's segment was
    // counted whole (alice's 5 in 11..20), in the inbox, the API and pushes, until something read it.
    while (relay.core.isLoaded(id)) await new Promise((r) => setTimeout(r, 20))
    expect(await unread()).toBe(3 + 5 + 5)
  })

  it("edits, reacts to, replies to and deletes a sealed message; the relay checks the author and tells everyone", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 40)
    const a = await connect(relay, id, alice)
    const b = await connect(relay, id, bob)
    for (const c of [a, b]) sealedHistory(c.doc).add(segmentOf(await requestSegment(c, 0)))
    const first = segmentOf(await requestSegment(a, 0, 99)).entries[0]!.record // alice's
    editMessage(a.doc, alice, first.id, "edited long after")
    react(b.doc, bob, first.id, "👍")
    sendMessage(b.doc, bob, { body: "replying to an old one", replyTo: first.id })
    await Promise.all([a.allSaved(), b.allSaved()])
    await b.until(() => getMessage(b.doc, first.id)?.body === "edited long after")
    await a.until(() => getMessage(a.doc, first.id)?.reactions["👍"]?.length === 1)
    expect(b.errors).toEqual([])

    // Only the author edits, sealed or not: the relay refuses bob's edit of alice's message.
    typesOf(b.doc).edits.set(first.id, { body: "forged", editedAt: 1 })
    await b.until(() => b.errors.length > 0)
    expect(b.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.authorOnly })

    deleteMessage(a.doc, alice, first.id)
    await a.allSaved()
    await b.until(() => getMessage(b.doc, first.id)?.deleted !== undefined)
    expect(getMessage(b.doc, first.id)).toMatchObject({ body: "", deleted: { by: alice } })
  })

  it("folds reactions and edits into the segment when it seals; a folded reaction is removed and added back over the wire", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 12)
    const first = await relay.core.read(id, (doc) => listMessages(doc, { last: 12 }).map((m) => m.id))
    // While live: bob reacts to the first three, alice edits her first.
    await relay.core.write(id, { kind: "user", user: bob }, (doc) => {
      for (const m of first.slice(0, 3)) react(doc, bob, m, "👍")
    })
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      editMessage(doc, alice, first[0]!, "edited"),
    )
    // Enough messages after them to seal the first ten.
    for (let i = 0; i < 8; i++)
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        sendMessage(doc, alice, { body: `later ${i}` }),
      )
    const a = await connect(relay, id, alice)
    const b = await connect(relay, id, bob)
    expect(sealedThrough(a.doc)).toBeGreaterThanOrEqual(10)
    // The live document keeps none of the sealed messages' overlays; the segment holds them.
    expect([...typesOf(a.doc).reactions.keys()]).toEqual([])
    expect(typesOf(a.doc).edits.has(first[0]!)).toBe(false)
    for (const c of [a, b]) sealedHistory(c.doc).add(segmentOf(await requestSegment(c, 0)))
    expect(getMessage(a.doc, first[0]!)).toMatchObject({ body: "edited", reactions: { "👍": [bob] } })
    expect(getMessage(a.doc, first[2]!)?.reactions).toEqual({ "👍": [bob] })

    // Bob takes back a folded reaction: alice sees it gone; he adds it back: she sees it again.
    unreact(b.doc, bob, first[1]!, "👍")
    await b.allSaved()
    await a.until(() => getMessage(a.doc, first[1]!)?.reactions["👍"] === undefined)
    react(b.doc, bob, first[1]!, "👍")
    await b.allSaved()
    await a.until(() => getMessage(a.doc, first[1]!)?.reactions["👍"]?.length === 1)
    expect(b.errors).toEqual([])

    // A removal of a reaction that was never folded is refused.
    typesOf(a.doc).reactions.set(reactionKey(first[3]!, alice, "🎉"), -5)
    await a.until(() => a.errors.length > 0)
    expect(a.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.schema })
  })

  it("takes back a folded reaction from the server side (hooks, HTTP API), reading the segment on demand", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 1000, undefined, { idleUnloadMs: 50 })
    const id = await conversationWith(relay, 3)
    const target = await relay.core.read(id, (doc) => listMessages(doc, { last: 1 })[0]!.id)
    await relay.core.write(id, { kind: "user", user: bob }, (doc) => react(doc, bob, target, "👍"))
    for (let i = 0; i < 20; i++)
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        sendMessage(doc, alice, { body: `m${i}` }),
      )
    // Unloaded, then loaded again by the change: the segment holding the folded reaction is read for it.
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    await relay.core.write(id, { kind: "user", user: bob }, (doc) => unreact(doc, bob, target, "👍"))
    const c = await connect(relay, id, alice)
    sealedHistory(c.doc).add(segmentOf(await requestSegment(c, 0)))
    expect(
      segmentOf(await requestSegment(c, 0)).entries.find((e) => e.record.id === target)?.overlays,
    ).toEqual({
      reactions: [["👍", bob]],
    })
    expect(getMessage(c.doc, target)?.reactions).toEqual({})
  })

  it("edits a sealed message and marks read up to one from the server side (HTTP API, hooks), reading the segment on demand", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 1000, undefined, { idleUnloadMs: 50 })
    const id = await conversationWith(relay, 40)
    const c = await connect(relay, id, bob)
    const sealed = segmentOf(await requestSegment(c, 0)).entries
    const first = sealed[0]!.record // alice's
    const target = sealed[3]!
    c.close()
    // Unloaded, then loaded again by the change: nothing sealed is in memory until a change names it.
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      editMessage(doc, alice, first.id, "edited from the API"),
    )
    await relay.core.write(id, { kind: "user", user: bob }, (doc) => {
      markRead(doc, bob, target.record.id)
    })
    const markers = await relay.core.read(id, (doc) => typesOf(doc).read.get(bob))
    // Exactly up to that message, not everything (the live messages stay unread).
    expect(markers).toBe(target.seq)
    const again = await connect(relay, id, bob)
    sealedHistory(again.doc).add(segmentOf(await requestSegment(again, 0)))
    expect(getMessage(again.doc, first.id)?.body).toBe("edited from the API")
    await expect(
      relay.core.write(id, { kind: "user", user: bob }, (doc) => {
        markRead(doc, bob, newMessageId())
      }),
    ).rejects.toMatchObject({ code: ErrorCode.NOT_FOUND })
  })

  it("holds pages asked for on many sockets at once to the user's answer budget, not each socket to it", async () => {
    const relay = await relayWith(
      new MemoryBackend(),
      10,
      5,
      1000,
      { keepSummaries: 4, foldSize: 16 },
      // A second's refill as large as the burst: the ten initial syncs (about 4.5 kB each) wait on
      // the budget for about 5 s, and it fills up again in 1 s (at 2 kB a second: 22 s and 4 s, most
      // of this file's time). Forty pages (about 23 kB) are still well over the burst and a second's
      // refill (16 kB), which one budget per socket would not hold them to.
      {
        userAnswerBytesPerSecond: 8_000,
        userAnswerBurstBytes: 8_000,
      },
    )
    const id = await conversationWith(relay, 45)
    const sockets = await Promise.all(Array.from({ length: 10 }, () => connect(relay, id, bob)))
    // The initial syncs spent some of the budget: let it fill up again.
    await new Promise((r) => setTimeout(r, 1_500))
    const started = performance.now()
    const sent: { at: number; bytes: number }[] = []
    const pages = sockets.flatMap((c, i) =>
      [0, 1, 2, 3].map((segment) =>
        requestSegment(c, segment, 100 * i + segment + 1).then((page) => {
          sent.push({ at: performance.now() - started, bytes: segmentBytes(page) })
        }),
      ),
    )
    await new Promise((r) => setTimeout(r, 1_000))
    const page = Math.max(...sent.map((s) => s.bytes))
    const early = sent.filter((s) => s.at < 1_000).reduce((sum, s) => sum + s.bytes, 0)
    // Within the first second: the burst and a second's refill, give or take one page; not 40 pages.
    expect(early).toBeLessThanOrEqual(8_000 + 8_000 + page)
    expect(sent.length).toBeLessThan(40)
    for (const c of sockets) c.close()
    void Promise.allSettled(pages)
  }, 30_000)

  it("serves nothing of a segment to a connection whose access is not known, nor to a non-member", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 40)
    // A non-member is closed before anything of the document reaches it.
    const m = new TestClient(relay.url, id, await signToken(SECRET, mallory))
    clients.push(m)
    await m.opened
    m.send(encodeHistoryRequest(1, 0))
    await m.closed
    expect(m.closeEvent?.code).toBe(4403)
    expect(m.frames.some((f) => f[0] === MessageType.parley && f[1] === 5 && f.length > 20)).toBe(false)

    // On a conversation that does not exist yet, access is pending: the answer carries no bytes.
    const p = new TestClient(relay.url, newConversationId(), await signToken(SECRET, mallory))
    clients.push(p)
    await p.opened
    const page = await requestSegment(p, 0)
    expect(page).toMatchObject({ error: ErrorCode.FORBIDDEN })

    // A segment the document does not name is not found.
    const b = await connect(relay, id, bob)
    expect(await requestSegment(b, 7)).toMatchObject({ error: ErrorCode.NOT_FOUND })
  })

  it("a device offline across a sealing syncs its pending edit, reaction, deletion and messages exactly once", async () => {
    const backend = new MemoryBackend()
    const relay = await relayWith(backend)
    const id = await conversationWith(relay, 12)
    const a = await connect(relay, id, alice)
    const target = listMessages(a.doc, { last: 100 })[0]! // alice's first message, live for now
    const other = listMessages(a.doc, { last: 100 })[2]!
    a.close()
    // Offline: alice edits one old message, deletes another, reacts, writes two new ones.
    editMessage(a.doc, alice, target.id, "edited offline")
    deleteMessage(a.doc, alice, other.id)
    react(a.doc, alice, target.id, "🎉")
    sendMessage(a.doc, alice, { body: "offline 1" })
    sendMessage(a.doc, alice, { body: "offline 2" })
    // Meanwhile bob's messages make the relay seal both of them away.
    for (let i = 0; i < 10; i++)
      await relay.core.write(id, { kind: "user", user: bob }, (doc) =>
        sendMessage(doc, bob, { body: `b${i}` }),
      )
    const check = await connect(relay, id, bob)
    expect(sealedThrough(check.doc)).toBeGreaterThanOrEqual(10)

    // Alice reconnects with the same replica: her pending work is sent and accepted once.
    const back = new TestClient(relay.url, id, await signToken(SECRET, alice))
    clients.push(back)
    restoreReplica(back, a)
    await back.synced()
    await back.allSaved()
    await check.until(() => listMessages(check.doc, { last: 100 }).some((m) => m.body === "offline 2"))
    await check.until(() => typesOf(check.doc).tombstones.has(other.id))
    expect(back.errors).toEqual([])
    sealedHistory(check.doc).add(segmentOf(await requestSegment(check, 0)))
    expect(getMessage(check.doc, target.id)).toMatchObject({
      body: "edited offline",
      reactions: { "🎉": [alice] },
    })
    expect(getMessage(check.doc, other.id)?.deleted).toMatchObject({ by: alice })
    const bodies = listMessages(check.doc, { last: 100 }).map((m) => m.body)
    expect(bodies.filter((b) => b.startsWith("offline"))).toEqual(["offline 1", "offline 2"])
    // The deletion left no placeholder to be numbered as a new message.
    expect(listMessages(check.doc, { last: 100 }).every((m) => m.id !== other.id)).toBe(true)
  })

  it("removes a folded reaction a device removed while offline across its seal; a device that knew of the seal removes nothing", async () => {
    const relay = await relayWith()
    const { id, b, first, second } = await sealedWhileOffline(relay)
    const a = await connect(relay, id, alice)
    expect(sealedThrough(a.doc)).toBeGreaterThanOrEqual(10)
    // Another device of bob's that knew of the seal sends its whole state (as any reconnect does).
    const knew = await connect(relay, id, bob)
    knew.ws.send(encodeSyncUpdate(Y.encodeStateAsUpdate(knew.doc)))
    // Bob's offline device reconnects with its replica: its deletion of the 👍 is a removal, nothing else is.
    await backWithoutThumbsUp(relay, id, b, a, first, second)
    expect(knew.errors).toEqual([])
  })

  it("removes a folded reaction a device removed while offline across its seal, after the conversation was unloaded (as after a restart)", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 1000, undefined, { idleUnloadMs: 50 })
    const { id, b, first, second } = await sealedWhileOffline(relay)
    expect(await relay.core.read(id, (doc) => sealedThrough(doc))).toBeGreaterThanOrEqual(10)
    // Unloaded: nothing of what the relay held in memory about the seal is left.
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    const a = await connect(relay, id, alice)
    await backWithoutThumbsUp(relay, id, b, a, first, second)
  })

  it("removes a folded reaction a device removed while offline, however many segments were sealed before it came back after an unload", async () => {
    // No garbage epochs: a device of an earlier epoch rebases its work instead (the SDK), which is not this path.
    const backend = new MemoryBackend()
    const relay = await relayWith(backend, 10, 5, 1000, undefined, { idleUnloadMs: 50, epochGarbageBytes: 0 })
    // Counts the folded-reaction rows the relay reads.
    let foldReads = 0
    const get = backend.history.get.bind(backend.history)
    backend.history.get = (doc, index) => {
      if (index <= foldedReactionsIndex(0)) foldReads++
      return get(doc, index)
    }
    const { id, b, first, second } = await sealedWhileOffline(relay)
    // Far more segments sealed than a loaded document reads the folds of (16): the 👍 is folded in the first.
    for (let i = 0; i < 250; i++)
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        sendMessage(doc, alice, { body: `later ${i}` }),
      )
    expect(await relay.core.read(id, (doc) => sealedThrough(doc))).toBeGreaterThanOrEqual(250)
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    // Alice's whole state deletes bob's folded items too (she learned of the seals): it reads the latest
    // segments' folds once the document is loaded again, and none of bob's older ones.
    const a = await connect(relay, id, alice)
    a.ws.send(encodeSyncUpdate(Y.encodeStateAsUpdate(a.doc)))
    await a.allSaved()
    await new Promise((r) => setTimeout(r, 100))
    const latestOnly = foldReads
    expect(latestOnly).toBeLessThanOrEqual(16)
    await backWithoutThumbsUp(relay, id, b, a, first, second)
    expect(foldReads).toBeGreaterThan(latestOnly)
  })

  it("folds reactions and edits written after a seal into the segment at a compaction; the live document drops them", async () => {
    const relay = await relayWith(
      new MemoryBackend(),
      10,
      5,
      1000,
      { keepSummaries: 4, foldSize: 16, refoldMessages: 7 },
      { compactAfterUpdates: 5 },
    )
    const { id, b, targets, mine } = await refoldedWhileOffline(relay)
    expect(
      await relay.core.read(id, (doc) => [
        ...typesOf(doc).reactions.entries(),
        ...typesOf(doc).edits.entries(),
      ]),
    ).toEqual([])
    // The re-sealed segment holds them; a member fetching it sees them.
    const c = await connect(relay, id, alice)
    const refolded = segmentOf(await requestSegment(c, 0))
    sealedHistory(c.doc).add(refolded)
    for (const m of targets) expect(getMessage(c.doc, m)?.reactions["👀"]).toEqual([bob])
    expect(getMessage(c.doc, mine)).toMatchObject({ body: "edited late", editedAt: expect.any(Number) })
    // Bob's device reconnects: the reaction it took back while offline goes.
    const back = new TestClient(relay.url, id, await signToken(SECRET, bob), { doc: b.doc })
    clients.push(back)
    await back.synced()
    await back.allSaved()
    await c.until(() => getMessage(c.doc, targets[1]!)?.reactions["👀"] === undefined)
    expect(getMessage(c.doc, targets[2]!)?.reactions["👀"]).toEqual([bob])
    // And takes another back online: a removal of the folded reaction, as for any folded one.
    sealedHistory(back.doc).replace(refolded)
    unreact(back.doc, bob, targets[0]!, "👀")
    await back.allSaved()
    await c.until(() => getMessage(c.doc, targets[0]!)?.reactions["👀"] === undefined)
    expect(back.errors).toEqual([])
  })

  it("removes a reaction a refold folded that a device took back offline, after the conversation was unloaded", async () => {
    const relay = await relayWith(
      new MemoryBackend(),
      10,
      5,
      1000,
      { keepSummaries: 4, foldSize: 16, refoldMessages: 7 },
      { compactAfterUpdates: 5, idleUnloadMs: 50 },
    )
    const { id, b, targets } = await refoldedWhileOffline(relay)
    expect(await relay.core.read(id, (doc) => typesOf(doc).reactions.size + typesOf(doc).edits.size)).toBe(0)
    // Unloaded before bob's device comes back: the relay reads the refold's reactions from the store.
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    const back = new TestClient(relay.url, id, await signToken(SECRET, bob), { doc: b.doc })
    clients.push(back)
    await back.synced()
    await back.allSaved()
    const c = await connect(relay, id, alice)
    sealedHistory(c.doc).add(segmentOf(await requestSegment(c, 0)))
    await c.until(() => getMessage(c.doc, targets[1]!)?.reactions["👀"] === undefined)
    expect(getMessage(c.doc, targets[2]!)?.reactions["👀"]).toEqual([bob])
    expect(back.errors).toEqual([])
  })

  it("heals a refold cut short by a crash: the segment stored but never named is named by the next refold", async () => {
    const backend = new MemoryBackend()
    const history = { keepSummaries: 4, foldSize: 16, refoldMessages: 3 }
    const relay = await relayWith(backend, 10, 5, 1000, history, { compactAfterUpdates: 5, idleUnloadMs: 50 })
    const id = await conversationWith(relay, 40)
    const sealed = await relay.core.read(id, (doc) => sealedSegments(doc)[0]!)
    const c = await connect(relay, id, bob)
    const held = segmentOf(await requestSegment(c, 0))
    sealedHistory(c.doc).add(held)
    // Two reactions to sealed messages: fewer than a refold waits for.
    react(c.doc, bob, held.entries[0]!.record.id, "👍")
    react(c.doc, bob, held.entries[1]!.record.id, "👍")
    await c.allSaved()
    // The crash: the re-sealed segment is stored, the change naming it never is.
    const refolded = await relay.core.read(id, (doc) => {
      sealedHistory(doc).add(held)
      return refoldSegment(doc, held, sealed)!
    })
    await backend.history.put(id, {
      index: 0,
      from: refolded.segment.from,
      to: refolded.segment.to,
      hash: refolded.summary.hash,
      bytes: refolded.bytes,
    })
    c.close()
    // Unloaded, as after a restart: what the relay held of it is gone. Segment 0 is not what the live
    // document names until a refold names it.
    while (relay.core.loadedDocuments > 0) await new Promise((r) => setTimeout(r, 20))
    const b = await connect(relay, id, bob)
    expect((await requestSegment(b, 0)).error).toBe(ErrorCode.NOT_FOUND)
    sealedHistory(b.doc).add(held)
    react(b.doc, bob, held.entries[2]!.record.id, "👍")
    await b.allSaved()
    for (let i = 0; i < 10 && typesOf(b.doc).reactions.size > 0; i++) {
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        sendMessage(doc, alice, { body: `after ${i}` }),
      )
      await new Promise((r) => setTimeout(r, 20))
    }
    expect([...typesOf(b.doc).reactions.keys()]).toEqual([])
    const named = segmentOf(await requestSegment(b, 0, 99))
    expect(named.entries.slice(0, 3).map((e) => e.overlays?.reactions)).toEqual([
      [["👍", bob]],
      [["👍", bob]],
      [["👍", bob]],
    ])
  })
})

describe("folded history: old summaries in a chain of directory pages", () => {
  // Segments of 10, 5 kept live; the live document keeps 2 summaries and folds 3 at a time. 100 messages
  // seal segments 0..8 (1..90): 0–2 fold into page 0, 3–5 into page 1, 6–8 stay listed.
  const folding = () => relayWith(new MemoryBackend(), 10, 5, 1000, { keepSummaries: 2, foldSize: 3 })

  it("keeps a bounded list of summaries in the live document and pages back through the directory", async () => {
    const relay = await folding()
    const id = await conversationWith(relay, 100)
    const c = await connect(relay, id, bob)
    expect(sealedSegments(c.doc).map((s) => s.index)).toEqual([6, 7, 8])
    const fold = foldedHistory(c.doc)!
    expect(fold).toMatchObject({
      segments: 6,
      through: 60,
      count: 60,
      pages: 2,
      liveBy: { alice: 30, bob: 30 },
    })
    expect(sealedThrough(c.doc)).toBe(90)

    // Newest page first, named by the folded record; the previous one by the page's own link.
    const newest = await requestDirectory(c, 1)
    if (newest.error !== undefined) throw new Error(newest.error)
    expect(segmentHash(newest.bytes)).toBe(fold.hash)
    const page1 = decodeDirectoryPage(newest.bytes)
    expect(page1.summaries.map((s) => [s.index, s.from, s.to])).toEqual([
      [3, 31, 40],
      [4, 41, 50],
      [5, 51, 60],
    ])
    expect(page1.before).toEqual({ alice: 15, bob: 15 })
    const older = await requestDirectory(c, 0)
    if (older.error !== undefined) throw new Error(older.error)
    expect(segmentHash(older.bytes)).toBe(page1.previous?.hash)
    const page0 = decodeDirectoryPage(older.bytes)
    expect(page0.previous).toBeUndefined()
    // A folded segment is served, and matches the hash its page names.
    const first = await requestSegment(c, 0)
    if (first.error !== undefined) throw new Error(first.error)
    expect(segmentHash(first.bytes)).toBe(page0.summaries[0]!.hash)
    expect(segmentOf(first).entries.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1))
    // Pages past the chain do not exist.
    expect(await requestDirectory(c, 2)).toMatchObject({ error: ErrorCode.NOT_FOUND })
    // Sealing goes on after folding, with the next index.
    for (let i = 0; i < 20; i++)
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        sendMessage(doc, alice, { body: `more ${i}` }),
      )
    const later = await connect(relay, id, bob)
    expect(sealedSegments(later.doc).map((s) => s.index)).toEqual([9, 10])
    expect(foldedHistory(later.doc)).toMatchObject({ segments: 9, through: 90, pages: 3 })
  })

  it("keeps unread counts exact across folded summaries, tombstones subtracted", async () => {
    const relay = await folding()
    const id = await conversationWith(relay, 100)
    const a = await connect(relay, id, alice)
    const c = await connect(relay, id, bob)
    // Bob read nothing: alice wrote 50, exactly, from the folded record and the live summaries.
    expect(unreadCount(c.doc, bob)).toBe(50)
    // A marker in the folded range, in segment 3 (page 1): exact once that page and segment are held.
    markRead(c.doc, bob, 34)
    await c.allSaved()
    const page = await requestDirectory(c, 1)
    if (page.error !== undefined) throw new Error(page.error)
    sealedHistory(c.doc).addPage(decodeDirectoryPage(page.bytes), page.hash)
    sealedHistory(c.doc).add(segmentOf(await requestSegment(c, 3)))
    // Alice wrote the odd numbers: 35, 37, …, 99.
    expect(unreadCount(c.doc, bob)).toBe(33)
    // A marker exactly at a page's edge, and one in the other page, from that page's counts.
    markRead(c.doc, bob, 60)
    expect(unreadCount(c.doc, bob)).toBe(20)
    markRead(c.doc, bob, 70)
    expect(unreadCount(c.doc, bob)).toBe(15)

    // Alice deletes a folded message of hers (seq 41): a tombstone; the relay re-seals its segment and
    // re-writes the chain from its page on; the count drops by one wherever the marker is.
    const directory = await requestDirectory(a, 1)
    if (directory.error !== undefined) throw new Error(directory.error)
    sealedHistory(a.doc).add(segmentOf(await requestSegment(a, 4)))
    const target = sealedHistory(a.doc).segment(4)!.entries[0]!.record
    expect(target.author).toBe(alice)
    const before = foldedHistory(a.doc)!.hash
    deleteMessage(a.doc, alice, target.id)
    await a.allSaved()
    await c.until(() => foldedHistory(c.doc)?.hash !== before)
    // Sealed and unread above 0 (alice's odd numbers up to 89) and above 34, one fewer each.
    expect(sealedUnread(c.doc, bob, 0)).toEqual({ count: 44, exact: true })
    expect(sealedUnread(c.doc, bob, 34)).toEqual({ count: 27, exact: true })
    expect(unreadCount(c.doc, bob)).toBe(15)
    const rewritten = await requestDirectory(c, 1, 2001)
    if (rewritten.error !== undefined) throw new Error(rewritten.error)
    expect(segmentHash(rewritten.bytes)).toBe(foldedHistory(c.doc)!.hash)
    const purged = decodeDirectoryPage(rewritten.bytes).summaries.find((s) => s.index === 4)!
    const segment = await requestSegment(c, 4)
    if (segment.error !== undefined) throw new Error(segment.error)
    expect(segmentHash(segment.bytes)).toBe(purged.hash)
    expect(new TextDecoder().decode(segment.bytes)).not.toContain("message 40")
    // The older page did not change: its hash is still the one the new page names.
    const old = await requestDirectory(c, 0)
    if (old.error !== undefined) throw new Error(old.error)
    expect(segmentHash(old.bytes)).toBe(decodeDirectoryPage(rewritten.bytes).previous?.hash)
  })
})

describe("stock y-websocket clients and sealed history", () => {
  it("syncs the live document to a stock provider: the latest messages and the segment summaries, not the sealed records", async () => {
    const relay = await relayWith()
    const id = await conversationWith(relay, 40)
    const doc = new Y.Doc()
    const provider = stockProvider(relay.url, id, await signToken(SECRET, bob), doc)
    try {
      await synced(provider)
      await docUntil(doc, () => listMessages(doc, { last: 100 }).length === 10)
      expect(sealedSegments(doc).map((s) => s.count)).toEqual([10, 10, 10])
      // It writes as always, and the relay numbers after the sealed range.
      sendMessage(doc, bob, { body: "from a stock client" })
      await docUntil(doc, () => listMessages(doc, { last: 1 })[0]?.seq === 41)
    } finally {
      provider.destroy()
    }
  })
})

/**
 * Bob writes `count` rounds of five messages, each with his reaction, waiting for each round's save
 * (and briefly for a close): every seal then folds as many reactions as records, about 50 bytes of
 * what Yjs keeps per message. Resolves the messages saved; stops once the connection is closed.
 */
async function reactedRounds(c: TestClient, from: number, count: number): Promise<number> {
  let saved = 0
  for (let round = from; round < from + count && !c.closeEvent; round++) {
    for (let i = 0; i < 5; i++) {
      const { id: message } = sendMessage(c.doc, bob, { body: `round ${round} message ${i}` })
      react(c.doc, bob, message, "👍")
    }
    // The epoch's close may come before this round's "saved" (then the round may or may not be stored).
    const acknowledged = await Promise.race([c.allSaved().then(() => true), c.closed.then(() => false)])
    if (!acknowledged) break
    saved += 5
    await Promise.race([c.closed, new Promise((r) => setTimeout(r, 20))])
  }
  return saved
}

describe("epochs of the live document", () => {
  it("starts a fresh epoch when the stored document is mostly removed values: reactions added and removed leave nothing behind", async () => {
    // Compacted every 5 changes; a fresh epoch once a snapshot holds more than 64 KiB of garbage.
    const relay = await relayWith(new MemoryBackend(), 500, 250, 1000, undefined, {
      compactAfterUpdates: 5,
      epochGarbageBytes: 64 * 1024,
    })
    const id = await conversationWith(relay, 2)
    const message = await relay.core.read(id, (doc) => listMessages(doc, { last: 1 })[0]!.id)
    const c = await connect(relay, id, bob)
    react(c.doc, bob, message, "👍")
    await c.allSaved()
    // Made-up emoji added and removed, 300 at a time: nothing held, 70 bytes each kept by Yjs.
    let epochs = 0
    for (let round = 0; round < 10; round++) {
      const doc = c.closeEvent ? undefined : c.doc
      if (!doc) break
      doc.transact(() => {
        for (let i = 0; i < 300; i++) {
          const emoji = `r${round}-${i}-padding-padding`
          react(doc, bob, message, emoji)
          unreact(doc, bob, message, emoji)
        }
      })
      // The epoch may close the connection before this change's acknowledgement (a loaded machine).
      await Promise.race([c.allSaved(), c.closed])
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 20))])
      if (c.closeEvent) epochs++
    }
    // The connection was closed for the epoch (retryable) and the stored document is small again.
    expect(epochs).toBe(1)
    expect(c.closeEvent?.code).toBe(4503)
    const after = await relay.core.read(id, (doc) => ({
      size: Y.encodeStateAsUpdate(doc).length,
      reactions: [...typesOf(doc).reactions.keys()],
      messages: listMessages(doc, { last: 10 }).length,
    }))
    expect(after.size).toBeLessThan(16 * 1024)
    expect(after.messages).toBe(2)
    expect(after.reactions).toHaveLength(1)
    expect(after.reactions[0]).toContain("👍")
    // A member joining the new epoch sees the same conversation.
    const joiner = await connect(relay, id, alice)
    expect(listMessages(joiner.doc, { last: 10 }).map((m) => m.reactions)).toEqual(
      listMessages(c.doc, { last: 10 }).map((m) => m.reactions),
    )
  })

  it("starts a fresh epoch right after a seal leaves more garbage than the budget, then none within the interval until past 32 budgets", async () => {
    // Segments of 20, 5 kept live, compaction at the default 500 changes: only the seals compact.
    const relay = await relayWith(new MemoryBackend(), 20, 5, 1000, undefined, { epochGarbageBytes: 2048 })
    const id = await conversationWith(relay, 0)
    const garbageOf = () =>
      relay.core.read(id, (doc) => Y.encodeStateAsUpdate(doc).length - epochValueBytes(doc))
    // Every seal folds twenty reactions and removes twenty records: about 1 KB of garbage.
    let saved = 0
    const rounds = async (c: TestClient, from: number, count: number) => {
      saved += await reactedRounds(c, from, count)
    }
    const c = await connect(relay, id, bob)
    await rounds(c, 0, 40)
    // Closed for the epoch (retryable) once the garbage passed 2 KiB: after the third seal at most.
    expect(c.closeEvent?.code).toBe(4503)
    const first = await relay.core.read(id, (doc) => ({
      sealed: sealedSegments(doc).length,
      messages: sealedThrough(doc) + listMessages(doc, { last: 100 }).length,
    }))
    expect(first.sealed).toBeGreaterThanOrEqual(2)
    expect(first.sealed).toBeLessThanOrEqual(4)
    expect(await garbageOf()).toBeLessThan(1024)
    // Nothing lost: every message saved before the close is sealed or live in the new epoch (and a round
    // the close cut off before its "saved" is stored whole or not at all).
    expect([saved, saved + 5]).toContain(first.messages)

    // Within the interval (ten minutes by default) the garbage passes the budget again: no second epoch
    // (each closes every socket of the conversation), until it passes 32 budgets.
    const again = await connect(relay, id, bob)
    await rounds(again, 100, 20)
    expect(again.closeEvent).toBeUndefined()
    expect(await garbageOf()).toBeGreaterThan(2048)

    // Past 32 budgets (64 KiB: made-up reactions added and removed), the next seal's check starts one.
    const message = listMessages(again.doc, { last: 1 })[0]!.id
    for (let round = 0; round < 5; round++) {
      again.doc.transact(() => {
        for (let i = 0; i < 300; i++) {
          react(again.doc, bob, message, `r${round}-${i}-padding`)
          unreact(again.doc, bob, message, `r${round}-${i}-padding`)
        }
      })
      await again.allSaved()
    }
    expect(again.closeEvent).toBeUndefined()
    expect(await garbageOf()).toBeGreaterThan(64 * 1024)
    await rounds(again, 200, 10)
    expect(again.closeEvent?.code).toBe(4503)
    expect(await garbageOf()).toBeLessThan(1024)
  })

  it("starts no garbage epoch while a stock y-websocket provider is connected (it could not follow one), nor soon after it left, and one once it stayed away", async () => {
    const relay = await relayWith(new MemoryBackend(), 20, 5, 1000, undefined, {
      epochGarbageBytes: 2048,
      epochStockGraceMs: 6000,
    })
    const id = await conversationWith(relay, 0)
    const garbageOf = () =>
      relay.core.read(id, (doc) => Y.encodeStateAsUpdate(doc).length - epochValueBytes(doc))
    const stockDoc = new Y.Doc()
    const provider = stockProvider(relay.url, id, await signToken(SECRET, alice), stockDoc)
    let stockClosed = false
    provider.on("status", ({ status }: { status: string }) => {
      if (status === "disconnected") stockClosed = true
    })
    await synced(provider)
    const c = await connect(relay, id, bob)
    try {
      // Three seals' worth of garbage, over the budget: no epoch, nobody closed.
      const saved = await reactedRounds(c, 0, 16)
      expect(saved).toBe(80)
      expect(c.closeEvent).toBeUndefined()
      expect(await garbageOf()).toBeGreaterThan(2048)
      await docUntil(stockDoc, () => listMessages(stockDoc, { last: 1 })[0]?.body === "round 15 message 4")
      expect(stockClosed).toBe(false)
    } finally {
      provider.destroy()
    }
    const left = Date.now()
    // Right after it left (a network blip, a close for reading too slowly): it may be back at once.
    await reactedRounds(c, 50, 8)
    if (Date.now() - left < 6000) expect(c.closeEvent).toBeUndefined()
    // Once it stayed away, the next seal's check starts one.
    await new Promise((r) => setTimeout(r, Math.max(0, left + 6000 - Date.now())))
    await reactedRounds(c, 100, 8)
    expect(c.closeEvent?.code).toBe(4503)
    expect(await garbageOf()).toBeLessThan(1024)
  })

  it("starts a fresh live document once it holds too many client ids: joiners get few, an old replica is told to rebuild", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 4, undefined, { epochGarbageIntervalMs: 0 })
    const id = await conversationWith(relay, 0)
    // Eight device sessions, each a new Yjs client id, three messages each (one update).
    let restarted: TestClient | undefined
    for (let session = 0; session < 8; session++) {
      const user = session % 2 === 0 ? alice : bob
      const c = new TestClient(relay.url, id, await signToken(SECRET, user))
      clients.push(c)
      await c.synced()
      c.doc.transact(() => {
        for (let i = 0; i < 3; i++) sendMessage(c.doc, user, { body: `s${session} m${i}` })
      })
      await c.allSaved()
      // Starting an epoch reloads the document: a connected session is closed (retryable) and rejoins.
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 50))])
      if (c.closeEvent) {
        expect(c.closeEvent.code).toBe(4503)
        restarted ??= c
      } else c.close()
    }
    expect(restarted).toBeDefined()
    const joiner = await connect(relay, id, bob)
    const epoch = typesOf(joiner.doc).meta.get("epoch")
    expect(typeof epoch).toBe("number")
    // The epoch's content under one client id, plus the relay's sequence writers since.
    expect(joiner.doc.store.clients.size).toBeLessThanOrEqual(4)
    const bodies = listMessages(joiner.doc, { last: 100 }).map((m) => m.body)
    expect(bodies.at(-1)).toBe("s7 m2")
    // Nothing lost: sealed plus live is every message, once.
    const sealed = sealedSegments(joiner.doc).reduce((n, s) => n + s.count, 0)
    expect(sealed + bodies.length).toBe(24)

    // A replica of the old epoch is told to rebuild, and nothing it sends is taken.
    const stale = new TestClient(relay.url, id, await signToken(SECRET, alice))
    clients.push(stale)
    Y.applyUpdate(stale.doc, Y.encodeStateAsUpdate(restarted!.doc), stale)
    await stale.until(() => stale.errors.length > 0)
    expect(stale.errors[0]).toMatchObject({ code: ErrorCode.INVALID_UPDATE, rule: Rule.epoch })
    sendMessage(stale.doc, alice, { body: "from the old epoch" })
    sendMessage(joiner.doc, bob, { body: "current" })
    await joiner.allSaved()
    expect(listMessages(joiner.doc, { last: 100 }).map((m) => m.body)).not.toContain("from the old epoch")
  })
})

describe("epoch records", () => {
  it("starts at most one epoch for client ids per interval: a member cannot close everyone's sockets at will", async () => {
    // The default interval (10 minutes). Before, every seal past the client-id budget started one.
    const relay = await relayWith(new MemoryBackend(), 10, 5, 4)
    const id = await conversationWith(relay, 0)
    let closed = 0
    for (let session = 0; session < 16; session++) {
      const c = new TestClient(relay.url, id, await signToken(SECRET, alice))
      clients.push(c)
      await c.synced()
      c.doc.transact(() => {
        for (let i = 0; i < 3; i++) sendMessage(c.doc, alice, { body: `s${session} m${i}` })
      })
      await c.allSaved()
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 250))])
      if (c.closeEvent?.code === 4503) closed++
      else c.close()
    }
    // One epoch, counted by the relay, and its close reached the session open then (waited for 250 ms:
    // under load, 50 ms let the test close that session first).
    const epochs = (await relay.metrics.registry.getSingleMetric("parley_epochs_total")?.get())?.values ?? []
    expect(epochs.filter((v) => v.labels.reason === "client-ids").reduce((n, v) => n + v.value, 0)).toBe(1)
    expect(closed).toBe(1)
  })

  it("keeps in the live document only the previous epoch's clients; a replica of any earlier epoch gets its record by number", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 4, undefined, { epochGarbageIntervalMs: 0 })
    const id = await conversationWith(relay, 0)
    // Device sessions one after another, three messages each: an epoch every few sessions.
    const replicas: { epochs: number; doc: Y.Doc; user: UserId }[] = []
    const clientIds: number[] = []
    for (let session = 0; session < 20; session++) {
      const user = session % 2 === 0 ? alice : bob
      const c = new TestClient(relay.url, id, await signToken(SECRET, user))
      clients.push(c)
      await c.synced()
      c.doc.transact(() => {
        for (let i = 0; i < 3; i++) sendMessage(c.doc, user, { body: `s${session} m${i}` })
      })
      await c.allSaved()
      clientIds.push(c.doc.clientID)
      // The replica as the device keeps it: everything it wrote acknowledged, nothing pending.
      const kept = new Y.Doc()
      Y.applyUpdate(kept, Y.encodeStateAsUpdate(c.doc))
      replicas.push({ epochs: epochCount(kept), doc: kept, user })
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 50))])
      c.close()
    }
    const joiner = await connect(relay, id, bob)
    const count = epochCount(joiner.doc)
    expect(count).toBeGreaterThanOrEqual(3)
    // The live document names the previous epoch's clients only: not the sessions of every epoch.
    const inline = epochBaseline(joiner.doc)
    expect(inline.size).toBeLessThanOrEqual(8)
    expect(clientIds.filter((client) => inline.has(client)).length).toBeLessThan(clientIds.length / 2)

    // Record 0 names the first live document's clients; a record the document does not count is not served.
    const first = await requestEpochRecord(joiner, 0)
    expect(first.error).toBeUndefined()
    const record = decodeEpochRecord((first as { bytes: Uint8Array }).bytes)
    expect(record).toMatchObject({ conversation: id, number: 0, epoch: 0 })
    expect(record.baseline.get(clientIds[0]!)).toBe(Y.getState(replicas[0]!.doc.store, clientIds[0]!))
    expect(await requestEpochRecord(joiner, count)).toMatchObject({ error: ErrorCode.NOT_FOUND })

    // A replica two or more epochs back, with nothing pending, rebases onto the current epoch to nothing,
    // with its record; with the live document's baseline alone, everyone's messages would look pending.
    const oldest = replicas.find((r) => r.epochs <= count - 2)!
    const source = baselineSource(oldest.doc, joiner.doc)
    expect(source).toEqual({ record: oldest.epochs })
    const answer = await requestEpochRecord(joiner, oldest.epochs)
    const baseline = checkEpochRecord(
      decodeEpochRecord((answer as { bytes: Uint8Array }).bytes),
      oldest.doc,
      id,
      oldest.epochs,
    )
    const onto = () => {
      const fresh = new Y.Doc()
      Y.applyUpdate(fresh, Y.encodeStateAsUpdate(joiner.doc))
      return fresh
    }
    const rebased = rebasePendingWork(oldest.doc, onto(), oldest.user, baseline)
    expect(rebased.reapplied).toEqual([])
    expect(rebased.failed).toEqual([])
    const wrong = rebasePendingWork(oldest.doc, onto(), oldest.user)
    expect(wrong.reapplied.length + wrong.failed.length).toBeGreaterThan(0)
    // A record is checked to be the replica's: another epoch's is refused.
    const second = await requestEpochRecord(joiner, 1)
    const recordOne = decodeEpochRecord((second as { bytes: Uint8Array }).bytes)
    expect(() => checkEpochRecord(recordOne, replicas.find((r) => r.epochs === 2)!.doc, id, 1)).toThrow(
      /is not the record/,
    )
    expect(() => checkEpochRecord(record, replicas[0]!.doc, id, 1)).toThrow(/is not the record/)
  })

  it("serves no epoch record to a connection whose access is not known", async () => {
    const relay = await relayWith(new MemoryBackend(), 10, 5, 4, undefined, { epochGarbageIntervalMs: 0 })
    const stranger = new TestClient(relay.url, newConversationId(), await signToken(SECRET, mallory))
    clients.push(stranger)
    await stranger.synced()
    expect(await requestEpochRecord(stranger, 0)).toMatchObject({ error: ErrorCode.FORBIDDEN })
  })
})

/**
 * A conversation of 12 messages on `relay` (segments of 10) where bob reacts 👍 to the first and 🎉 to
 * the second, goes offline and takes back his 👍, while alice writes ten more: the relay seals both
 * messages, folding both reactions into segment 0.
 */
async function sealedWhileOffline(relay: RunningRelay) {
  const id = await conversationWith(relay, 12)
  const b = await connect(relay, id, bob)
  const [first, second] = listMessages(b.doc, { last: 100 })
  react(b.doc, bob, first!.id, "👍")
  react(b.doc, bob, second!.id, "🎉")
  await b.allSaved()
  b.close()
  await b.closed
  // Offline, bob takes back his 👍 while the message is still live in his replica.
  unreact(b.doc, bob, first!.id, "👍")
  for (let i = 0; i < 10; i++)
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      sendMessage(doc, alice, { body: `a${i}` }),
    )
  return { id, b, first: first!, second: second! }
}

/**
 * Bob's offline device (`b`'s replica) reconnects and syncs; alice (`a`)
 * then sees his 👍 on `first` removed and his 🎉 on `second` kept, and the
 * device was refused nothing.
 */
async function backWithoutThumbsUp(
  relay: RunningRelay,
  id: string,
  b: TestClient,
  a: TestClient,
  first: { id: MessageId },
  second: { id: MessageId },
): Promise<void> {
  const back = new TestClient(relay.url, id, await signToken(SECRET, bob), { doc: b.doc })
  clients.push(back)
  await back.synced()
  await back.allSaved()
  sealedHistory(a.doc).add(segmentOf(await requestSegment(a, 0)))
  await a.until(() => getMessage(a.doc, first.id)?.reactions["👍"] === undefined)
  expect(getMessage(a.doc, second.id)?.reactions).toEqual({ "🎉": [bob] })
  expect(back.errors).toEqual([])
}

/**
 * A conversation of 40 messages on `relay` (refolds at 7 overlays) where bob reacts to six sealed
 * messages, goes offline and takes one back (targets[1]), while alice edits a seventh (`mine`) and
 * writes on until a compaction has refolded them all into segment 0.
 */
async function refoldedWhileOffline(relay: RunningRelay) {
  const id = await conversationWith(relay, 40)
  const b = await connect(relay, id, bob)
  const held = segmentOf(await requestSegment(b, 0))
  sealedHistory(b.doc).add(held)
  // After the seal: bob reacts to six sealed messages (one fewer than a refold waits for).
  const targets = held.entries.slice(0, 6).map((e) => e.record.id)
  for (const m of targets) react(b.doc, bob, m, "👀")
  await b.allSaved()
  // Bob's device goes offline and takes one back, not knowing it is about to be folded.
  b.close()
  await b.closed
  unreact(b.doc, bob, targets[1]!, "👀")
  // Alice edits one of her sealed messages: the seventh.
  const mine = held.entries.find((e) => e.record.author === alice && !targets.includes(e.record.id))!.record
    .id
  await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
    editMessage(doc, alice, mine, "edited late"),
  )
  // More changes until a compaction has folded them.
  const live = () => relay.core.read(id, (doc) => typesOf(doc).reactions.size + typesOf(doc).edits.size)
  for (let i = 0; i < 20 && (await live()) > 0; i++)
    await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
      sendMessage(doc, alice, { body: `more ${i}` }),
    )
  return { id, b, targets, mine }
}

/** Gives `to` (before it syncs) the whole replica of `from`, as a device keeps it across a restart. */
function restoreReplica(to: TestClient, from: TestClient): void {
  Y.applyUpdate(to.doc, Y.encodeStateAsUpdate(from.doc), to)
}
