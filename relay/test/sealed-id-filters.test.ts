import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  decodeSegment,
  deleteMessage,
  foldedHistory,
  type MessageId,
  messageIndex,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import { SQLITE_FILE, SqliteBackend } from "../src/backend/index.js"
import { IdFilter } from "../src/history/id-filter.js"
import { namedSegments, SealedIdFilters, sealedIdFilters } from "../src/history/sealed-ids.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { freshDataDir } from "./api/helpers.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

/** A small seeded generator (mulberry32), so that a failure can be replayed from its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A message id drawn from `next` (the SDK's alphabet and length). */
function idFrom(next: () => number): MessageId {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
  let id = ""
  for (let i = 0; i < 16; i++) id += alphabet[Math.floor(next() * alphabet.length)]
  return id as MessageId
}

describe("id filters", () => {
  for (const seed of [1, 2, 3]) {
    it(`answer yes for every id they were built from, and seldom for others (seed ${seed})`, () => {
      const next = random(seed)
      let others = 0
      let yes = 0
      for (let round = 0; round < 40; round++) {
        // Segments as sealing cuts them: full ones, and short ones (the last of a backlog, a small segment size).
        const size = round % 4 === 0 ? 1 + Math.floor(next() * 20) : 500
        const ids = Array.from({ length: size }, () => idFrom(next))
        const filter = IdFilter.decode(IdFilter.of(ids).encode())!
        for (const id of ids) expect(filter.mayHold(id)).toBe(true)
        for (let i = 0; i < 2_500; i++) {
          others++
          if (filter.mayHold(idFrom(next))) yes++
        }
      }
      // About one in 100,000 by design: 100,000 probes of ids not in the filters.
      expect(yes).toBeLessThanOrEqual(10)
      expect(others).toBe(100_000)
    })
  }

  it("are not read from bytes of another format, which are built again instead", () => {
    const bytes = IdFilter.of(["aaaaaaaaaaaaaaaa"]).encode()
    expect(IdFilter.decode(bytes)).toBeDefined()
    expect(IdFilter.decode(new Uint8Array([2, ...bytes.subarray(1)]))).toBeUndefined()
    expect(IdFilter.decode(bytes.subarray(0, bytes.length - 1))).toBeUndefined()
  })
})

describe("a conversation's id filters, held bit-sliced", () => {
  for (const seed of [5, 6]) {
    it(`answer as each segment's filter does, over many groups of segments and mixed sizes (seed ${seed})`, () => {
      const next = random(seed)
      const held = new SealedIdFilters()
      const filters: IdFilter[] = []
      const segments: MessageId[][] = []
      for (let index = 0; index < 100; index++) {
        // Mostly full segments; now and then a short one (a backlog's last, another segment size).
        const size = next() < 0.85 ? 50 : 1 + Math.floor(next() * 60)
        const ids = Array.from({ length: size }, () => idFrom(next))
        const filter = IdFilter.of(ids)
        segments.push(ids)
        filters.push(filter)
        held.set(index, filter)
        // Only the next segment's filter is taken: one past a gap is read from the store later.
        held.set(index + 2, IdFilter.of([]))
      }
      expect(held.covered).toBe(100)
      const expected = (id: MessageId) => filters.flatMap((f, i) => (f.mayHold(id) ? [i] : []))
      for (const [index, ids] of segments.entries())
        for (const id of ids) {
          expect(held.candidates(id)).toContain(index)
          expect(held.candidates(id)).toEqual(expected(id))
        }
      for (let i = 0; i < 2_000; i++) {
        const id = idFrom(next)
        expect(held.candidates(id)).toEqual(expected(id))
      }
    })
  }
})

describe("the relay's sealed id filters", () => {
  const relays: RunningRelay[] = []
  afterEach(async () => {
    for (const r of relays.splice(0)) await r.close()
  })

  for (const seed of [11, 12]) {
    it(`name the segment of every sealed message through sealing, purges, folds, restarts and a rebuild (seed ${seed})`, async () => {
      const next = random(seed)
      const dataDir = freshDataDir()
      let backend: SqliteBackend
      const start = async () => {
        backend = new SqliteBackend(dataDir)
        const relay = await startRelay({
          backend,
          port: 0,
          warmUp: false,
          log: "silent",
          auth: { kind: "secret", secret: "filters-test-secret" },
          history: { segmentSize: 7, keepLive: 4, epochClientIds: 1000, keepSummaries: 1, foldSize: 2 },
        })
        relays.push(relay)
        return relay
      }
      let relay = await start()
      const id = `g~filters${seed}` as ConversationId
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        createConversation(doc, alice, { kind: "group", id, participants: [bob] }),
      )
      const written: MessageId[] = []
      /** Sealed messages deleted: each re-seals its segment. */
      let deleted = 0

      /**
       * Every id written is live, or sealed in the segment the relay's filters (and the stored ones)
       * say may hold it; an id never written is not taken for one the relay holds.
       */
      const check = async () => {
        const probe = idFrom(next)
        // The filters attach with the first new id the relay checks (a send does it: this is one).
        await relay.core.settleSealedIds(id, [probe])
        const segments = new Map<MessageId, number>()
        for (const stored of await backend.history.all(id))
          for (const entry of decodeSegment(stored.bytes).entries) segments.set(entry.record.id, stored.index)
        const storedFilters = new Map(
          (await backend.history.idFilters(id, 0)).map((f) => [f.index, IdFilter.decode(f.bytes)!]),
        )
        await relay.core.read(id, (doc) => {
          const filters = sealedIdFilters(doc)!
          expect(filters.covered).toBe(namedSegments(doc))
          const index = messageIndex(doc)
          for (const written_ of written) {
            if (index.records.has(written_) || index.deleted.has(written_)) continue
            const segment = segments.get(written_)
            expect(segment, `${written_} is live or sealed`).toBeDefined()
            expect(filters.candidates(written_)).toContain(segment)
            expect(storedFilters.get(segment!)!.mayHold(written_)).toBe(true)
          }
        })
        return relay.core.read(id, (doc) => ({ folded: foldedHistory(doc)?.segments ?? 0 }))
      }

      let folded = 0
      for (let step = 0; step < 160; step++) {
        const roll = next()
        if (roll < 0.8 || written.length < 5) {
          const author = next() < 0.5 ? alice : bob
          const messageId = newMessageId()
          await relay.core.write(id, { kind: "user", user: author }, (doc) =>
            sendMessage(doc, author, { id: messageId, body: `m${step}` }),
          )
          written.push(messageId)
        } else {
          // Deleted by its author, live or sealed: a sealed one is purged from its segment (re-sealed
          // with a placeholder, its directory pages re-written when folded).
          const target = written[Math.floor(next() * written.length)]!
          const sealed = await relay.core.read(id, (doc) => !messageIndex(doc).records.has(target))
          await relay.core
            .write(id, { kind: "user", user: alice }, (doc) => deleteMessage(doc, alice, target))
            .then(() => {
              if (sealed) deleted++
            })
            .catch(() => {
              // Bob's, or deleted already: alice may not, or need not.
            })
        }
        if (step % 40 === 39) {
          folded = (await check()).folded
          // Alternately: a restart (filters read from the store), and a restart without any stored
          // filter (a conversation sealed before they existed: built again from the segments).
          await relay.close()
          if (step % 80 === 79) {
            const db = new Database(join(dataDir, SQLITE_FILE))
            db.prepare("DELETE FROM history_id_filters").run()
            db.close()
          }
          relay = await start()
          await check()
        }
      }
      // The run went through what it is about.
      expect(folded).toBeGreaterThan(2)
      expect(deleted).toBeGreaterThan(3)
    })
  }
})
