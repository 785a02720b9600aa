import { sealedThrough, sendMessage, type UserId } from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { newApiKey } from "../../src/api/keys.js"
import { idempotentMessageId } from "../../src/api/operations.js"
import { type Backend, SqliteBackend } from "../../src/backend/index.js"
import { PostgresBackend } from "../../src/backend/postgres.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"
import { postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { apiClient, freshDataDir } from "./helpers.js"

/** Segments of 10 with 5 kept live; one summary in the live document, pairs folded into directory pages. */
const HISTORY = { segmentSize: 10, keepLive: 5, keepSummaries: 1, foldSize: 2 }

const relays: RunningRelay[] = []
const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const relay of relays) await relay.close().catch(() => {})
  for (const cleanup of cleanups) await cleanup()
})

/**
 * A relay over backends `open` gives (each over the same data), with an API key
 * that writes and reads messages; `restart` closes it and starts another over
 * the same data, which holds none of the sealed segments, and counts what it
 * reads of the sealed history from then on (`reads`: segment indexes, below 0
 * directory pages; `wholeLoads`: reads of a conversation's every segment).
 */
async function relayWith(open: () => Promise<Backend>) {
  let backend = await open()
  const made = newApiKey("backend", ["conversations:write", "messages:read", "messages:write", "act-as-user"])
  await backend.keys.create(made.record)
  // The same relay options at the start and after each restart, on the backend of the moment.
  const start = () =>
    startRelay({ port: 0, warmUp: false, backend, dev: true, log: "silent", history: HISTORY })
  let relay = await start()
  relays.push(relay)
  const api = apiClient(() => relay.httpUrl, made.key)
  const reads: number[] = []
  let wholeLoads = 0
  return {
    api,
    keyId: made.record.id,
    backend: () => backend,
    core: () => relay.core,
    reads,
    wholeLoads: () => wholeLoads,
    async restart() {
      await relay.close()
      backend = await open()
      const { get, all } = backend.history
      backend.history.get = (doc, index) => {
        reads.push(index)
        return get.call(backend.history, doc, index)
      }
      backend.history.all = (doc) => {
        wholeLoads++
        return all.call(backend.history, doc)
      }
      reads.length = 0
      relay = await start()
      relays.push(relay)
    },
    /** A group of alice and bob. */
    async group(id: string) {
      const created = await api("POST", "/v1/conversations", {
        id,
        participants: [{ user: "alice" }, { user: "bob" }],
      })
      expect(created.status).toBe(201)
    },
    /** `count` more messages by bob, without keys. */
    async more(id: string, count: number) {
      for (let i = 0; i < count; i++) {
        const sent = await api("POST", `/v1/conversations/${id}/messages`, {
          body: `filler ${i}`,
          asUser: "bob",
        })
        expect(sent.status).toBe(201)
      }
    },
    /** How far the conversation is sealed. */
    sealed: (id: string) => relay.core.read(id, sealedThrough),
    /** Every message of the conversation (live and sealed), oldest first. */
    async all(id: string): Promise<{ id: string; seq: number; body: string }[]> {
      const listed: { id: string; seq: number; body: string }[] = []
      let after = 0
      for (;;) {
        const page = await api("GET", `/v1/conversations/${id}/messages?after=${after}&limit=200`)
        expect(page.status).toBe(200)
        listed.push(...page.body.messages)
        if (!page.body.next) return listed
        after = page.body.next.after
      }
    },
  }
}

type Harness = Awaited<ReturnType<typeof relayWith>>

const send = (h: Harness, conversation: string, key: string, body: unknown) =>
  h.api("POST", `/v1/conversations/${conversation}/messages`, body, { "idempotency-key": key })

/** The behaviour every backend gives the API's idempotent sends. */
function idempotentSends(name: string, open: () => Promise<() => Promise<Backend>>) {
  describe(`idempotent sends over sealed history (${name})`, () => {
    it("answers a replay 200 with the first message after it was sealed and the relay restarted", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-restart")
      const body = { body: "Your appointment moved to 10:00", priority: "emergency", asUser: "alice" }
      const first = await send(h, "g~idem-restart", "appointment-4711", body)
      expect(first.status).toBe(201)
      expect(first.body.seq).toBe(1)
      // Far enough that its segment is folded into a directory page the live document does not list.
      await h.more("g~idem-restart", 50)
      expect(await h.sealed("g~idem-restart")).toBeGreaterThanOrEqual(40)
      await h.restart()

      const replay = await send(h, "g~idem-restart", "appointment-4711", body)
      expect(replay.status).toBe(200)
      expect(replay.body).toEqual(first.body)
      // The one segment that holds it (and the directory pages that lead to it), never the whole history.
      expect(h.reads.filter((index) => index >= 0)).toEqual([0])
      expect(h.wholeLoads()).toBe(0)

      // A first send reads no sealed history at all.
      h.reads.length = 0
      const other = await send(h, "g~idem-restart", "appointment-4712", {
        body: "And to 11:00",
        asUser: "alice",
      })
      expect(other.status).toBe(201)
      expect(h.reads).toEqual([])
      const all = await h.all("g~idem-restart")
      expect(all.filter((m) => m.id === first.body.id).map((m) => m.seq)).toEqual([1])
      expect(all).toHaveLength(52)
    })

    it("recognises a message its first attempt stored without recording where (a crash between), once sealed", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-crash")
      await h.more("g~idem-crash", 10)
      // The first attempt recorded that it began, stored the message, and the relay died before it
      // recorded the message's number.
      const id = idempotentMessageId(h.keyId, "crash-1")
      expect(await h.backend().idempotency.begin("g~idem-crash", id, 10, Date.now())).toBeUndefined()
      const service = "service.backend" as UserId
      await h.core().write("g~idem-crash", { kind: "service", subject: "backend", user: service }, (doc) => {
        sendMessage(doc, service, { id, body: "stored, never answered" })
      })
      await h.more("g~idem-crash", 40)
      expect(await h.sealed("g~idem-crash")).toBeGreaterThanOrEqual(30)
      await h.restart()

      const replay = await send(h, "g~idem-crash", "crash-1", { body: "stored, never answered" })
      expect(replay.status).toBe(200)
      expect(replay.body).toMatchObject({ id, seq: 11, author: service })
      // Only history sealed after the attempt began is searched: not segment 0 (messages 1-10).
      expect(h.reads.filter((index) => index >= 0)).not.toContain(0)
      expect(h.wholeLoads()).toBe(0)
      // Its number is recorded now: the next replay goes straight to it (the relay holds its segment
      // since the first replay: the send's sealed-id check read it, its filter naming the id).
      h.reads.length = 0
      const again = await send(h, "g~idem-crash", "crash-1", { body: "stored, never answered" })
      expect(again.status).toBe(200)
      expect(h.reads.filter((index) => index >= 0)).toEqual([])
      expect((await h.all("g~idem-crash")).filter((m) => m.id === id)).toHaveLength(1)
    })

    it("sends on the retry of a first attempt that was refused", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-refused")
      const body = { body: "hello from carol", asUser: "carol" }
      const refused = await send(h, "g~idem-refused", "carol-1", body)
      expect(refused.status).toBe(403)
      const added = await h.api("POST", "/v1/conversations/g~idem-refused/participants", { users: ["carol"] })
      expect(added.status).toBe(200)
      await h.more("g~idem-refused", 20)
      await h.restart()

      const retried = await send(h, "g~idem-refused", "carol-1", body)
      expect(retried.status).toBe(201)
      expect(retried.body).toMatchObject({ seq: 21, author: "carol" })
      await h.more("g~idem-refused", 20)
      const replay = await send(h, "g~idem-refused", "carol-1", body)
      expect(replay.status).toBe(200)
      expect(replay.body.seq).toBe(21)
      expect((await h.all("g~idem-refused")).filter((m) => m.body === "hello from carol")).toHaveLength(1)
    })

    it("answers a replay 200 while the relay still holds the sealed segment", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-held")
      const first = await send(h, "g~idem-held", "held-1", { body: "hello", asUser: "alice" })
      expect(first.status).toBe(201)
      await h.more("g~idem-held", 20)
      expect(await h.sealed("g~idem-held")).toBeGreaterThanOrEqual(10)

      const replay = await send(h, "g~idem-held", "held-1", { body: "hello", asUser: "alice" })
      expect(replay.status).toBe(200)
      expect(replay.body).toMatchObject({ id: first.body.id, seq: 1, body: "hello" })
      expect((await h.all("g~idem-held")).map((m) => m.seq)).toEqual(
        Array.from({ length: 21 }, (_, i) => i + 1),
      )
    })

    it("makes one message of identical sends racing, first attempts and replays of a sealed one alike", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-race")
      const body = { body: "only once", asUser: "alice" }
      const firsts = await Promise.all(
        Array.from({ length: 6 }, () => send(h, "g~idem-race", "race-1", body)),
      )
      expect(firsts.map((a) => a.status).sort()).toEqual([200, 200, 200, 200, 200, 201])
      expect(new Set(firsts.map((a) => a.body.seq))).toEqual(new Set([1]))

      await h.more("g~idem-race", 20)
      await h.restart()
      const replays = await Promise.all(
        Array.from({ length: 6 }, () => send(h, "g~idem-race", "race-1", body)),
      )
      expect(replays.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 200])
      expect(replays.map((a) => a.body.seq)).toEqual([1, 1, 1, 1, 1, 1])
      const all = await h.all("g~idem-race")
      expect(all.filter((m) => m.body === "only once")).toHaveLength(1)
      expect(all).toHaveLength(21)
    })

    it("refuses a key reused for another message with 409, however old the first one is", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-reuse")
      const first = await send(h, "g~idem-reuse", "reuse-1", { body: "first", asUser: "alice" })
      expect(first.status).toBe(201)
      // While live, as before.
      const live = await send(h, "g~idem-reuse", "reuse-1", { body: "second", asUser: "alice" })
      expect(live.status).toBe(409)
      await h.more("g~idem-reuse", 20)
      await h.restart()

      for (const other of [
        { body: "second", asUser: "alice" },
        { body: "first", asUser: "bob" },
        { body: "first", asUser: "alice", priority: "emergency" },
      ]) {
        const reused = await send(h, "g~idem-reuse", "reuse-1", other)
        expect(reused.status).toBe(409)
        expect(reused.body).toMatchObject({ code: "CONFLICT" })
        expect(reused.body.detail).toContain("Idempotency-Key")
      }
      const all = await h.all("g~idem-reuse")
      expect(all.filter((m) => m.id === first.body.id)).toHaveLength(1)
      expect(all).toHaveLength(21)
    })

    it("answers a replay of a client-chosen message id as one of an Idempotency-Key", async () => {
      const h = await relayWith(await open())
      await h.group("g~idem-id")
      const body = { id: "m_reply_1", body: "Thanks!", asUser: "alice" }
      const first = await h.api("POST", "/v1/conversations/g~idem-id/messages", body)
      expect(first.status).toBe(201)
      await h.more("g~idem-id", 20)
      await h.restart()
      const replay = await h.api("POST", "/v1/conversations/g~idem-id/messages", body)
      expect(replay.status).toBe(200)
      expect(replay.body).toMatchObject({ id: "m_reply_1", seq: 1 })
      const other = await h.api("POST", "/v1/conversations/g~idem-id/messages", {
        ...body,
        body: "No thanks",
      })
      expect(other.status).toBe(409)
      expect((await h.all("g~idem-id")).filter((m) => m.id === "m_reply_1")).toHaveLength(1)
    })
  })
}

idempotentSends("sqlite", async () => {
  const dataDir = freshDataDir()
  return async () => new SqliteBackend(dataDir)
})

const unreachable = await postgresUnreachable()
if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("idempotent sends over sealed history (postgres)", () => {
    it.skip(`skipped: PostgreSQL unreachable (${unreachable})`, () => {})
  })
} else {
  idempotentSends("postgres", async () => {
    // A schema per test: other test files share the database.
    const scratch = await scratchSchema()
    cleanups.push(() => scratch.drop())
    return () => PostgresBackend.open(scratch.url)
  })
}
