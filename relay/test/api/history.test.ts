import { messageIndex, sealedThrough, sendMessage, type UserId } from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { newApiKey } from "../../src/api/keys.js"
import { type Backend, MemoryBackend, SqliteBackend } from "../../src/backend/index.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"
import { stockProvider, synced } from "../helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { type Answer, apiClient, createKey, freshDataDir } from "./helpers.js"

interface Listed {
  readonly seq: number
  readonly id: string
  readonly body: string
  readonly type: string
  readonly author: string
  readonly editedAt?: number
  readonly deleted?: { at: number; by: string }
  readonly reactions: Record<string, string[]>
}

type Client = ReturnType<typeof apiClient>

/**
 * Follows `next` from `first` (a query string) to the end; `between` runs
 * before each following page. Returns every page's messages, page by page.
 */
async function pageThrough(
  api: Client,
  conversation: string,
  first: string,
  between: () => Promise<void> = async () => {},
): Promise<Listed[][]> {
  const pages: Listed[][] = []
  let query = first
  for (;;) {
    const answer: Answer = await api("GET", `/v1/conversations/${conversation}/messages?${query}`)
    expect(answer.status).toBe(200)
    pages.push(answer.body.messages)
    const next = answer.body.next as { before?: number; after?: number } | undefined
    if (!next) return pages
    // A page never repeats its cursor: each one moves on.
    expect(pages.length).toBeLessThan(100)
    const params = new URLSearchParams(query)
    params.delete("before")
    params.delete("after")
    for (const [name, value] of Object.entries(next)) params.set(name, String(value))
    query = params.toString()
    await between()
  }
}

const seqs = (messages: readonly Listed[]) => messages.map((m) => m.seq)
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

describe("message listings through sealed history", () => {
  let relay: RelayProcess
  let full: Client
  let outsider: Client
  let noMessages: Client
  /** Writes messages as users, may not read them. */
  let blind: Client

  let dataDir: string
  const args = [
    "--history-segment-size",
    "10",
    "--history-keep-live",
    "5",
    "--history-keep-summaries",
    "1",
    "--history-fold-size",
    "2",
  ]

  beforeAll(async () => {
    dataDir = freshDataDir()
    full = apiClient(
      () => relay.httpUrl,
      await createKey(dataDir, "backend", [
        "conversations:read",
        "conversations:write",
        "messages:read",
        "messages:write",
        "act-as-user",
      ]),
    )
    // Reads every conversation, writes only as its own participant (in none of them).
    outsider = apiClient(
      () => relay.httpUrl,
      await createKey(dataDir, "outsider", ["messages:read", "messages:write"]),
    )
    noMessages = apiClient(() => relay.httpUrl, await createKey(dataDir, "meta", ["conversations:read"]))
    blind = apiClient(
      () => relay.httpUrl,
      await createKey(dataDir, "blind", ["messages:write", "act-as-user"]),
    )
    // Segments of 10, 5 kept live; the live document keeps one summary and folds two at a time into
    // directory pages, so that most of a 60-message conversation is sealed and some of it folded.
    relay = await startRelayProcess({ dataDir, args })
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  /** A group of alice and bob with `count` messages `m1`... by them in turn; their ids by sequence number. */
  async function conversationWith(id: string, count: number): Promise<Map<number, string>> {
    const created = await full("POST", "/v1/conversations", {
      id,
      participants: [{ user: "alice" }, { user: "bob" }],
    })
    expect(created.status).toBe(201)
    const ids = new Map<number, string>()
    for (let i = 1; i <= count; i++) {
      const sent = await full("POST", `/v1/conversations/${id}/messages`, {
        body: `m${i}`,
        asUser: i % 2 === 1 ? "alice" : "bob",
        ...(i % 7 === 0 ? { type: "notice" } : {}),
      })
      expect(sent.body.seq).toBe(i)
      ids.set(i, sent.body.id)
    }
    return ids
  }

  /** What alice's own client is sent of `id`: the live document's messages and how far history is sealed. */
  async function liveDocument(id: string): Promise<{ live: number; sealedThrough: number }> {
    const doc = new Y.Doc()
    const provider = stockProvider(relay.url, id, await relay.token("alice"), doc)
    try {
      await synced(provider)
      return { live: messageIndex(doc).order().length, sealedThrough: sealedThrough(doc) }
    } finally {
      provider.destroy()
    }
  }

  it("lists a conversation whose history is mostly sealed completely and in order, back and forward", async () => {
    await conversationWith("g~hist-all", 60)
    // Most of it is out of the live document the relay sends clients.
    const state = await liveDocument("g~hist-all")
    expect(state.sealedThrough).toBeGreaterThanOrEqual(40)
    expect(state.live).toBeLessThanOrEqual(20)

    const latest = await full("GET", "/v1/conversations/g~hist-all/messages?limit=7")
    expect(seqs(latest.body.messages)).toEqual(range(54, 60))
    expect(latest.body).toMatchObject({ lastSequence: 60, next: { before: 54 } })

    const back = await pageThrough(full, "g~hist-all", "limit=7")
    for (const page of back) expect(seqs(page)).toEqual([...seqs(page)].sort((a, b) => a - b))
    const newestFirst = back.flatMap((page) => seqs(page).reverse())
    expect(newestFirst).toEqual(range(1, 60).reverse())
    expect(back.flat().find((m) => m.seq === 1)).toMatchObject({ body: "m1", author: "alice", type: "text" })

    const forward = await pageThrough(full, "g~hist-all", "after=0&limit=9")
    expect(forward.flat().map((m) => m.body)).toEqual(range(1, 60).map((i) => `m${i}`))

    // Windows inside the sealed history, and across its end.
    const window = await full("GET", "/v1/conversations/g~hist-all/messages?before=25&limit=5")
    expect(seqs(window.body.messages)).toEqual(range(20, 24))
    expect(window.body.next).toEqual({ before: 20 })
    const between = await full("GET", "/v1/conversations/g~hist-all/messages?after=33&before=38")
    expect(seqs(between.body.messages)).toEqual(range(34, 37))
    expect(between.body.next).toBeUndefined()
    const across = await full("GET", "/v1/conversations/g~hist-all/messages?after=45&limit=10")
    expect(seqs(across.body.messages)).toEqual(range(46, 55))
    expect(across.body.next).toEqual({ after: 55 })

    // A type filter pages through sealed history too.
    const notices = await pageThrough(full, "g~hist-all", "type=notice&limit=3")
    expect(
      notices
        .flat()
        .map((m) => m.seq)
        .sort((a, b) => a - b),
    ).toEqual([7, 14, 21, 28, 35, 42, 49, 56])
  })

  it("shows sealed messages with their edits, deletions and reactions, and acts on them by id", async () => {
    const ids = await conversationWith("g~hist-overlay", 4)
    // Deleted while live: its segment holds a placeholder.
    const early = await full("DELETE", `/v1/conversations/g~hist-overlay/messages/${ids.get(2)}?asUser=bob`)
    expect(early.status).toBe(204)
    for (let i = 5; i <= 40; i++)
      await full("POST", "/v1/conversations/g~hist-overlay/messages", { body: `m${i}`, asUser: "alice" })
    expect((await liveDocument("g~hist-overlay")).sealedThrough).toBeGreaterThanOrEqual(30)
    // A relay that did not seal them holds none of the segments: it reads them from storage.
    await relay.kill()
    relay = await startRelayProcess({ dataDir, args })

    const url = (seq: number) => `/v1/conversations/g~hist-overlay/messages/${ids.get(seq)}`
    const edited = await full("PATCH", url(1), { body: "m1, edited", asUser: "alice" })
    expect(edited.status).toBe(200)
    expect(edited.body).toMatchObject({ seq: 1, body: "m1, edited", editedAt: expect.any(Number) })
    const reacted = await full("POST", `${url(3)}/reactions`, { emoji: "👍", asUser: "bob" })
    expect(reacted.status).toBe(200)
    expect(reacted.body).toMatchObject({ seq: 3, body: "m3", reactions: { "👍": ["bob"] } })
    await full("POST", `${url(3)}/reactions`, { emoji: "🎉", asUser: "alice" })
    const unreacted = await full("DELETE", `${url(3)}/reactions/${encodeURIComponent("🎉")}?asUser=alice`)
    expect(unreacted.body.reactions).toEqual({ "👍": ["bob"] })
    expect((await full("DELETE", url(4))).status).toBe(204)

    // The document rules hold for sealed messages as for live ones.
    const notAuthor = await full("PATCH", url(3), { body: "not alice's", asUser: "bob" })
    expect(notAuthor.status).toBe(403)
    expect(notAuthor.body.rule).toBe("author-only")
    const stranger = await outsider("POST", `${url(1)}/reactions`, { emoji: "👀" })
    expect(stranger.status).toBe(403)
    expect(stranger.body.rule).toBe("participant-only")
    expect((await outsider("DELETE", url(1))).status).toBe(403)

    const listed = await full("GET", "/v1/conversations/g~hist-overlay/messages?after=0&limit=5")
    expect(listed.status).toBe(200)
    const [one, two, three, four, five] = listed.body.messages as [Listed, Listed, Listed, Listed, Listed]
    expect(one).toMatchObject({ seq: 1, body: "m1, edited", type: "text", editedAt: edited.body.editedAt })
    expect(two).toMatchObject({ seq: 2, body: "", type: "deleted", deleted: { by: "bob" }, reactions: {} })
    expect(three).toMatchObject({ seq: 3, body: "m3", reactions: { "👍": ["bob"] } })
    expect(three.editedAt).toBeUndefined()
    expect(four).toMatchObject({ seq: 4, body: "", type: "deleted", deleted: { by: "service.backend" } })
    expect(five).toMatchObject({ seq: 5, body: "m5", reactions: {} })
    // Placeholders, never the deleted text.
    const text = JSON.stringify(listed.body)
    expect(text).not.toContain('"m2"')
    expect(text).not.toContain('"m4"')
    // The same view from a page that goes back to them.
    const back = await full("GET", "/v1/conversations/g~hist-overlay/messages?before=6&limit=5")
    expect(back.body.messages).toEqual(listed.body.messages)
  })

  it("acts on sealed messages for a key that may not read them as on live ones, refusing alike what it may not act on", async () => {
    const ids = await conversationWith("g~hist-blind", 4)
    for (let i = 5; i <= 40; i++)
      await full("POST", "/v1/conversations/g~hist-blind/messages", { body: `m${i}`, asUser: "alice" })
    expect((await liveDocument("g~hist-blind")).sealedThrough).toBeGreaterThanOrEqual(30)
    const url = (seq: number) => `/v1/conversations/g~hist-blind/messages/${ids.get(seq)}`
    // Each after a restart, so that the relay holds no segment: the write finds the message only once it
    // read the segment, after the first attempt was refused as for an id it does not have.
    const writes: [string, () => Promise<Answer>, number, unknown][] = [
      [
        "edit bob's own",
        () => blind("PATCH", url(2), { body: "m2, edited", asUser: "bob" }),
        200,
        { id: ids.get(2) },
      ],
      [
        "react to alice's",
        () => blind("POST", `${url(1)}/reactions`, { emoji: "👍", asUser: "bob" }),
        200,
        { id: ids.get(1) },
      ],
      [
        "remove it",
        () => blind("DELETE", `${url(1)}/reactions/${encodeURIComponent("👍")}?asUser=bob`),
        200,
        { id: ids.get(1) },
      ],
      ["delete bob's own", () => blind("DELETE", `${url(4)}?asUser=bob`), 204, undefined],
    ]
    for (const [what, write, status, body] of writes) {
      await relay.kill()
      relay = await startRelayProcess({ dataDir, args })
      const answer = await write()
      expect([what, answer.status, answer.body]).toEqual([what, status, body])
    }
    // Alice's sealed message and an id nobody used: one refusal.
    const refusals = new Set<string>()
    for (const url of [
      `/v1/conversations/g~hist-blind/messages/${ids.get(3)}`,
      "/v1/conversations/g~hist-blind/messages/m_nobody_used",
    ]) {
      const answer = await blind("PATCH", url, { body: "guess", asUser: "bob" })
      refusals.add(`${answer.status} ${answer.body.detail.replace(/"[^"]+"/, "<id>")}`)
    }
    expect([...refusals]).toEqual(["404 no message <id> that bob may edit"])
    const listed = await full("GET", "/v1/conversations/g~hist-blind/messages?after=0&limit=4")
    expect(listed.body.messages.map((m: Listed) => [m.body, m.reactions])).toEqual([
      ["m1", {}],
      ["m2, edited", {}],
      ["m3", {}],
      ["", {}],
    ])
  })

  it("keeps its cursors while messages arrive and older ones are sealed", async () => {
    await conversationWith("g~hist-moving", 30)
    let sent = 30
    const more = async (n: number) => {
      for (let i = 0; i < n; i++) {
        sent++
        await full("POST", "/v1/conversations/g~hist-moving/messages", { body: `m${sent}`, asUser: "bob" })
      }
    }
    // Back from the latest 30: what arrives meanwhile (and seals what the first pages showed) is not in them.
    const back = await pageThrough(full, "g~hist-moving", "limit=8", () => more(6))
    expect(back.flatMap((page) => seqs(page).reverse())).toEqual(range(1, 30).reverse())
    expect(sent).toBeGreaterThan(45)
    // Forward from the start: caught up with everything sent until the last page.
    const forward = await pageThrough(full, "g~hist-moving", "after=0&limit=10", () => more(3))
    expect(forward.flat().map((m) => m.body)).toEqual(range(1, sent).map((i) => `m${i}`))
  })

  it("holds a listing to the key's scope and answers unknown conversations 404, as before", async () => {
    await conversationWith("g~hist-access", 20)
    const denied = await noMessages("GET", "/v1/conversations/g~hist-access/messages?before=5")
    expect(denied.status).toBe(403)
    expect(denied.body.detail).toContain("messages:read")
    expect(JSON.stringify(denied.body)).not.toContain("m1")
    const missing = await full("GET", "/v1/conversations/g~hist-nowhere/messages?before=5")
    expect(missing.status).toBe(404)
    expect(missing.body.code).toBe("NOT_FOUND")
    const anonymous = await apiClient(() => relay.httpUrl, undefined)(
      "GET",
      "/v1/conversations/g~hist-access/messages",
    )
    expect(anonymous.status).toBe(401)
  })
})

describe("a listing's reads of sealed history", () => {
  const relays: RunningRelay[] = []
  afterAll(async () => {
    for (const relay of relays) await relay.close()
  })

  const start = async (
    backend: Backend,
    history = { segmentSize: 10, keepLive: 5, keepSummaries: 1, foldSize: 2 },
  ) => {
    const relay = await startRelay({ port: 0, warmUp: false, backend, dev: true, log: "silent", history })
    relays.push(relay)
    return relay
  }

  it("reads from storage only the segments and directory pages a page reaches", async () => {
    const dataDir = freshDataDir()
    const first = new SqliteBackend(dataDir)
    const made = newApiKey("backend", ["conversations:write", "messages:read", "messages:write"])
    await first.keys.create(made.record)
    let relay = await start(first)
    const api = apiClient(() => relay.httpUrl, made.key)
    await api("POST", "/v1/conversations", { id: "g~hist-reads", participants: [] })
    for (let i = 1; i <= 60; i++)
      await api("POST", "/v1/conversations/g~hist-reads/messages", { body: `m${i}` })
    await relay.close()

    // A restarted relay holds no segment; every read of one is counted (indexes below 0: directory pages).
    const backend = new SqliteBackend(dataDir)
    const reads: number[] = []
    const get = backend.history.get.bind(backend.history)
    backend.history.get = (doc, index) => {
      if (doc === "g~hist-reads") reads.push(index)
      return get(doc, index)
    }
    backend.history.all = () => Promise.reject(new Error("a listing reads no whole history"))
    relay = await start(backend)

    // Sealed: 1-50 in segments 0-4 of 10; 0-3 folded into directory pages 0 (0, 1) and 1 (2, 3).
    const latest = await api("GET", "/v1/conversations/g~hist-reads/messages?limit=10")
    expect(seqs(latest.body.messages)).toEqual(range(51, 60))
    expect(reads).toEqual([])
    const previous = await api("GET", "/v1/conversations/g~hist-reads/messages?before=51&limit=10")
    expect(seqs(previous.body.messages)).toEqual(range(41, 50))
    expect(reads).toEqual([4])
    reads.length = 0
    const deep = await api("GET", "/v1/conversations/g~hist-reads/messages?before=25&limit=5")
    expect(seqs(deep.body.messages)).toEqual(range(20, 24))
    // Back from the newest directory page: segment 2 (21-30) from it, segment 1 (11-20) from the one before.
    expect(reads).toEqual([-2, 2, -1, 1])
    reads.length = 0
    // Directory pages read once are held by the relay, as it holds those it folds itself.
    const oldest = await api("GET", "/v1/conversations/g~hist-reads/messages?after=0&limit=3")
    expect(seqs(oldest.body.messages)).toEqual([1, 2, 3])
    expect(reads).toEqual([0])
  })

  it("ends a filtered page short, with a cursor, rather than read the whole history at once", async () => {
    const backend = new MemoryBackend()
    const made = newApiKey("backend", ["conversations:write", "messages:read"])
    await backend.keys.create(made.record)
    const relay = await start(backend, { segmentSize: 100, keepLive: 50, keepSummaries: 4, foldSize: 16 })
    const api = apiClient(() => relay.httpUrl, made.key)
    await api("POST", "/v1/conversations", { id: "g~hist-rare", participants: [] })
    const service = "service.backend" as UserId
    const writer = { kind: "service", subject: "backend", user: service } as const
    // 1,300 messages, two of them (5 and 1,300) of type "rare": more than a page looks at between them.
    for (let from = 1; from <= 1300; from += 100)
      await relay.core.write("g~hist-rare", writer, (doc) => {
        for (let i = from; i < from + 100; i++)
          sendMessage(doc, service, {
            body: `m${i}`,
            ...(i === 5 || i === 1300 ? { type: "rare" } : {}),
          })
      })
    const first = await api("GET", "/v1/conversations/g~hist-rare/messages?type=rare&limit=5")
    expect(first.body.messages.map((m: Listed) => m.body)).toEqual(["m1300"])
    expect(first.body.next.before).toBeGreaterThan(5)
    const pages = await pageThrough(api, "g~hist-rare", "type=rare&limit=5")
    expect(pages.flat().map((m) => m.body)).toEqual(["m1300", "m5"])
  })

  /** Writes `count` messages as the key `backend`'s participant, ten at a time, each `rare` one of type "rare". */
  async function writeMessages(relay: RunningRelay, id: string, count: number, rare: (i: number) => boolean) {
    const service = "service.backend" as UserId
    const writer = { kind: "service", subject: "backend", user: service } as const
    for (let from = 1; from <= count; from += 10)
      await relay.core.write(id, writer, (doc) => {
        for (let i = from; i < from + 10; i++)
          sendMessage(doc, service, { body: `m${i}`, ...(rare(i) ? { type: "rare" } : {}) })
      })
  }

  it("reads at most 16 small segments for a filtered page, and its cursors continue without losing or repeating a message", async () => {
    const dataDir = freshDataDir()
    const first = new SqliteBackend(dataDir)
    const made = newApiKey("backend", ["conversations:write", "messages:read"])
    await first.keys.create(made.record)
    let relay = await start(first)
    const api = apiClient(() => relay.httpUrl, made.key)
    await api("POST", "/v1/conversations", { id: "g~hist-small", participants: [] })
    // 600 messages in segments of 10, one in 97 of type "rare": no page of 1,000 sealed messages at once.
    const rare = (i: number) => i % 97 === 0
    await writeMessages(relay, "g~hist-small", 600, rare)
    await relay.close()

    const backend = new SqliteBackend(dataDir)
    let reads = 0
    const get = backend.history.get.bind(backend.history)
    backend.history.get = (doc, index) => {
      if (doc === "g~hist-small") reads++
      return get(doc, index)
    }
    relay = await start(backend)
    const expected = range(1, 600).filter(rare)
    const most: number[] = []
    const counted = async () => {
      most.push(reads)
      reads = 0
    }
    for (const first of ["type=rare&limit=50", "type=rare&after=0&limit=50"]) {
      reads = 0
      const pages = await pageThrough(api, "g~hist-small", first, counted)
      await counted()
      const listed = pages.flat().map((m) => m.seq)
      expect([...listed].sort((a, b) => a - b)).toEqual(expected)
      expect(new Set(listed).size).toBe(listed.length)
      expect(pages.flat().every((m) => m.type === "rare" && m.body === `m${m.seq}`)).toBe(true)
    }
    // Segments and directory pages read from storage per page.
    expect(Math.max(...most)).toBeLessThanOrEqual(16)
  })

  it("answers a key that floods costly pages 429 with Retry-After, while another key is answered", async () => {
    const backend = new MemoryBackend()
    const setup = newApiKey("backend", ["conversations:write", "messages:read"])
    const flooder = newApiKey("flooder", ["messages:read"])
    const honest = newApiKey("honest", ["messages:read"])
    for (const made of [setup, flooder, honest]) await backend.keys.create(made.record)
    const relay = await startRelay({
      port: 0,
      warmUp: false,
      backend,
      dev: true,
      log: "silent",
      history: { segmentSize: 10, keepLive: 5, keepSummaries: 4, foldSize: 16 },
      // A burst of 60 requests, refilled slowly: what a test sends is the burst.
      apiLimits: { requestsPerSecond: 0.5, requestBurst: 60 },
    })
    relays.push(relay)
    await apiClient(() => relay.httpUrl, setup.key)("POST", "/v1/conversations", {
      id: "g~hist-flood",
      participants: [],
    })
    await writeMessages(relay, "g~hist-flood", 600, () => false)

    // A type no message has: each page looks at as much sealed history as a page may.
    const flood = apiClient(() => relay.httpUrl, flooder.key)
    const answers: Answer[] = []
    for (let i = 0; i < 10; i++)
      answers.push(
        await flood("GET", `/v1/conversations/g~hist-flood/messages?type=nothing&before=${600 - i * 10}`),
      )
    const refused = answers.filter((a) => a.status === 429)
    // Ten requests of a burst of 60, refused for the work they asked, not their number.
    expect(refused.length).toBeGreaterThan(0)
    expect(answers.findIndex((a) => a.status === 429)).toBeLessThanOrEqual(4)
    for (const answer of refused) {
      expect(answer.body.code).toBe("RATE_LIMITED")
      expect(Number(answer.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    }
    for (const answer of answers.filter((a) => a.status === 200)) expect(answer.body.messages).toEqual([])

    const other = apiClient(() => relay.httpUrl, honest.key)
    for (let i = 0; i < 10; i++) {
      const page = await other("GET", "/v1/conversations/g~hist-flood/messages?limit=5")
      expect(page.status).toBe(200)
      expect(seqs(page.body.messages)).toEqual(range(596, 600))
    }
  })
})
