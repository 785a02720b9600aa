import { type ConversationId, ErrorCode, ParleyError, type UserId } from "@parley/shared"
import { Hono } from "hono"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { ApiEventEntry, ApiEventQuery, ApiEventSource } from "../../src/api/event-source.js"
import { EventStreams, STALE_BATCH_MS } from "../../src/api/event-stream.js"
import { ApiExtension } from "../../src/api/extension.js"
import { type ApiScope, newApiKey } from "../../src/api/keys.js"
import { DEFAULT_API_LIMITS } from "../../src/api/limits.js"
import { MemoryBackend } from "../../src/backend/index.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { createLogger } from "../../src/log.js"
import { redactEvent } from "../../src/purge/redact.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"
import { isStream, openSse, type SseStream } from "../helpers/sse.js"

// The stream's own behaviour (resume, heartbeats, bounds, refusals) over an event log kept in this
// test; the durable log of the relay and a real process are in api-events-process.test.ts.

/** A log in memory with the event log's semantics: increasing ids, filters, pruning, subscription. */
class TestLog implements ApiEventSource {
  readonly entries: ApiEventEntry[] = []
  prunedThrough = 0
  readonly queries: ApiEventQuery[] = []
  private readonly listeners = new Set<(entries: readonly ApiEventEntry[]) => void>()

  append(...events: HookEvent[]): void {
    const added = events.map((event, i) => ({ id: String(this.entries.length + 1 + i), event }))
    this.entries.push(...added)
    for (const listener of this.listeners) listener(added)
  }

  async read(query: ApiEventQuery): Promise<ApiEventEntry[]> {
    this.queries.push(query)
    const after = Number(query.after ?? 0)
    if (after < this.prunedThrough)
      throw new ParleyError("EVENTS_EXPIRED" as ErrorCode, `pruned after ${after}`)
    if (after > this.entries.length) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "unknown id")
    return this.entries
      .filter((e) => Number(e.id) > after)
      .filter((e) => !query.conversation || e.event.event.conversationId === query.conversation)
      .filter((e) => !query.user || e.event.conversation.participants.some((p) => p.user === query.user))
      .filter((e) => !query.types?.length || query.types.includes(e.event.event.type))
      .slice(0, query.limit)
  }

  async latest(): Promise<string> {
    return String(this.entries.length)
  }

  subscribe(listener: (entries: readonly ApiEventEntry[]) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }
}

function readEvent(n: number, conversation = "g~one", users: string[] = ["alice"]): HookEvent {
  return {
    event: {
      id: `evt_${n}`,
      type: "messages.read",
      time: n,
      conversationId: conversation as ConversationId,
      actor: { kind: "user", user: "alice" as UserId },
    },
    subject: { user: "alice" as UserId, upTo: n },
    conversation: {
      id: conversation as ConversationId,
      kind: "group",
      title: "",
      metadata: {},
      createdBy: "alice" as UserId,
      createdAt: 1,
      participants: users.map((user) => ({
        user: user as UserId,
        role: "member",
        addedBy: user as UserId,
        addedAt: 1,
      })),
    },
  }
}

describe("GET /v1/events", () => {
  let relay: RunningRelay
  let log: TestLog
  let backend: MemoryBackend
  const streams: SseStream[] = []

  async function key(scopes: ApiScope[], name = `svc${Math.random().toString(36).slice(2, 8)}`) {
    const made = newApiKey(name, scopes)
    await backend.keys.create(made.record)
    return { authorization: `Bearer ${made.key}` }
  }
  async function open(query: string, headers: Record<string, string>) {
    const result = await openSse(`${relay.httpUrl}/v1/events${query}`, headers)
    if (isStream(result)) streams.push(result)
    return result
  }

  beforeEach(async () => {
    log = new TestLog()
    backend = new MemoryBackend()
    relay = await startRelay({
      port: 0,
      warmUp: false,
      backend,
      dev: true,
      log: "silent",
      api: false,
      extensions: [
        new ApiExtension({
          keys: backend.keys,
          idempotency: backend.idempotency,
          log: (await import("../../src/log.js")).createLogger("silent"),
          events: log,
          limits: { heartbeatMs: 100, streamsPerKey: 2, retryMs: 1500, streamEventsPerSecond: 100 },
        }),
      ],
    })
  })
  afterEach(async () => {
    for (const s of streams.splice(0)) s.close()
    await relay.close()
  })

  it("sends what the log records after Last-Event-ID, each once and in order, with its id, type and retry", async () => {
    const auth = await key(["events:read"])
    log.append(readEvent(1), readEvent(2), readEvent(3))
    const stream = await open("", { ...auth, "last-event-id": "1" })
    if (!isStream(stream)) throw new Error(`refused: ${JSON.stringify(stream)}`)
    log.append(readEvent(4))
    await stream.until((events) => events.some((e) => e.id === "4"))
    const sent = stream.events.filter((e) => e.event === "messages.read")
    expect(sent.map((e) => e.id)).toEqual(["2", "3", "4"])
    expect((JSON.parse(sent[0]!.data) as HookEvent).event.id).toBe("evt_2")
    expect(stream.retry()).toBe(1500)
  })

  it("starts from now without a resume point, and says where now is", async () => {
    const auth = await key(["events:read"])
    log.append(readEvent(1), readEvent(2))
    const stream = await open("", auth)
    if (!isStream(stream)) throw new Error("refused")
    await stream.until((events) => events.some((e) => e.event === "ready"))
    expect(stream.lastEventId()).toBe("2")
    log.append(readEvent(3))
    await stream.until((events) => events.some((e) => e.id === "3"))
    expect(stream.events.filter((e) => e.event === "messages.read").map((e) => e.id)).toEqual(["3"])
  })

  it("misses nothing and repeats nothing when a client disconnects and resumes with Last-Event-ID", async () => {
    const auth = await key(["events:read"])
    const first = await open("?after=0", auth)
    if (!isStream(first)) throw new Error("refused")
    for (let i = 1; i <= 5; i++) log.append(readEvent(i))
    await first.until((events) => events.some((e) => e.id === "5"))
    first.close()
    // Recorded while nobody listens.
    for (let i = 6; i <= 450; i++) log.append(readEvent(i))
    const second = await open("", { ...auth, "last-event-id": first.lastEventId()! })
    if (!isStream(second)) throw new Error("refused")
    log.append(readEvent(451))
    await second.until((events) => events.some((e) => e.id === "451"))
    const ids = [...first.events, ...second.events]
      .filter((e) => e.event === "messages.read")
      .map((e) => e.id)
    expect(ids).toEqual(Array.from({ length: 451 }, (_, i) => String(i + 1)))
  })

  it("sends a key's streams a long log at the key's pace, shared by its streams, and all of it in order", async () => {
    const auth = await key(["events:read"])
    const total = 1_500
    for (let i = 1; i <= total; i++) log.append(readEvent(i))
    const started = performance.now()
    const [a, b] = [await open("?after=0", auth), await open("?after=0", auth)]
    if (!isStream(a) || !isStream(b)) throw new Error("refused")
    const sent = () =>
      [a, b].reduce((n, s) => n + s.events.filter((e) => e.event === "messages.read").length, 0)
    await a.until(() => sent() >= 2_000, 20_000)
    // A burst of 2,000 a key, then 100 a second: never more than the pace lets through, both streams together.
    await new Promise((r) => setTimeout(r, 1000))
    const seconds = (performance.now() - started) / 1000
    expect(sent()).toBeLessThanOrEqual(2_000 + 100 * seconds + 2 * 200)
    for (const stream of [a, b]) {
      await stream.until((events) => events.some((e) => e.id === String(total)), 60_000)
      const ids = stream.events.filter((e) => e.event === "messages.read").map((e) => Number(e.id))
      expect(ids).toEqual(Array.from({ length: total }, (_, i) => i + 1))
    }
  }, 90_000)

  it("does not read again what its filter matched none of: each read starts where the last one looked", async () => {
    const auth = await key(["events:read"])
    for (let i = 1; i <= 500; i++) log.append(readEvent(i, "g~busy"))
    const quiet = await open("?after=0&conversation=g~quiet", auth)
    if (!isStream(quiet)) throw new Error("refused")
    await quiet.until((events) => events.some((e) => e.event === "ready"))
    // Events elsewhere, one at a time, each waking the stream; then one of its own.
    for (let i = 501; i <= 520; i++) {
      log.append(readEvent(i, "g~busy"))
      await new Promise((r) => setTimeout(r, 5))
    }
    log.append(readEvent(521, "g~quiet"))
    await quiet.until((events) => events.some((e) => e.id === "521"))
    const reads = log.queries.filter((q) => q.conversation === "g~quiet")
    // Its first read looked from the start; none after it from further back than the log then held.
    expect(reads[0]!.after).toBe("0")
    expect(reads.slice(1).every((q) => Number(q.after) >= 500)).toBe(true)
    expect(quiet.events.filter((e) => e.event === "messages.read").map((e) => e.id)).toEqual(["521"])
  })

  it("sends a heartbeat comment while nothing happens", async () => {
    const stream = await open("", await key(["events:read"]))
    if (!isStream(stream)) throw new Error("refused")
    await stream.until(() => stream.comments.filter((c) => c === "ping").length >= 2)
  })

  it("passes the conversation, user and type filters to the log", async () => {
    const auth = await key(["events:read"])
    log.append(
      readEvent(1, "g~one", ["alice"]),
      readEvent(2, "g~two", ["bob"]),
      readEvent(3, "g~one", ["bob"]),
    )
    const stream = await open("?after=0&user=bob&conversation=g~one&type=messages.read,message.sent", auth)
    if (!isStream(stream)) throw new Error("refused")
    await stream.until((events) => events.some((e) => e.id === "3"))
    expect(stream.events.filter((e) => e.event === "messages.read").map((e) => e.id)).toEqual(["3"])
    expect(log.queries[0]).toMatchObject({
      user: "bob",
      conversation: "g~one",
      types: ["messages.read", "message.sent"],
    })
  })

  it("bounds the streams one key holds open, and frees a place when one closes", async () => {
    const auth = await key(["events:read"])
    const a = await open("", auth)
    const b = await open("", auth)
    const c = await open("", auth)
    expect([a.status, b.status, c.status]).toEqual([200, 200, 429])
    expect(isStream(c) ? undefined : c.body).toMatchObject({ code: "RATE_LIMITED", status: 429 })
    // Another key is not affected.
    expect((await open("", await key(["events:read"]))).status).toBe(200)
    if (isStream(a)) a.close()
    await expect
      .poll(async () => {
        const d = await open("", auth)
        if (isStream(d)) d.close()
        return d.status
      })
      .toBe(200)
  })

  it("refuses keys without events:read, bad resume points and pruned ones as problems", async () => {
    const none = await open("", {})
    expect(none.status).toBe(401)
    const noScope = await open("", await key(["messages:read"]))
    expect(isStream(noScope) ? undefined : noScope.body).toMatchObject({ status: 403, code: "FORBIDDEN" })
    const auth = await key(["events:read"])
    const bad = await open("", { ...auth, "last-event-id": "abc" })
    expect(isStream(bad) ? undefined : [bad.status, bad.contentType]).toEqual([
      400,
      "application/problem+json",
    ])
    const unknownType = await open("?type=message.nope", auth)
    expect(unknownType.status).toBe(400)
    log.append(readEvent(1), readEvent(2))
    log.prunedThrough = 1
    const expired = await open("?after=0", auth)
    expect(isStream(expired) ? undefined : expired.body).toMatchObject({
      status: 410,
      code: "EVENTS_EXPIRED",
    })
  })

  it("ends a stream whose key was revoked before it sends another event", async () => {
    const name = "leaked"
    const stream = await open("", await key(["events:read"], name))
    if (!isStream(stream)) throw new Error("refused")
    log.append(readEvent(1))
    await stream.until((events) => events.some((e) => e.id === "1"))
    // `parley-relay keys revoke` writes to storage, which the key store here is.
    expect(await backend.keys.revoke(name, Date.now())).toBe(true)
    log.append(readEvent(2))
    await stream.ended
    expect(stream.events.map((e) => e.id)).not.toContain("2")
  })

  it("ends open streams when the relay stops", async () => {
    const stream = await open("", await key(["events:read"]))
    if (!isStream(stream)) throw new Error("refused")
    await relay.close()
    await stream.ended
  })
})

describe("a stream read slowly when a purge lands", () => {
  function sentEvent(n: number): HookEvent {
    const read = readEvent(n)
    return {
      ...read,
      event: { ...read.event, type: "message.sent" },
      subject: {
        message: {
          id: `message-${n}`,
          author: "alice",
          body: `Otter-${n}`,
          type: "text",
          createdAt: n,
          priority: "normal",
          attachments: [],
          metadata: {},
          reactions: {},
        },
      },
      conversation: { ...read.conversation, title: "Otter-Title" },
    } as unknown as HookEvent
  }

  /**
   * A stream of 20 messages of conversation `g~one`, read by a client that reads only when told:
   * `readUntil` reads until `done` holds of what it read.
   */
  async function slowReader(now?: () => number) {
    const log = new TestLog()
    log.append(...Array.from({ length: 20 }, (_, n) => sentEvent(n)))
    const streams = new EventStreams({
      source: log,
      limits: { ...DEFAULT_API_LIMITS, heartbeatMs: 60_000 },
      log: createLogger("silent"),
      ...(now ? { now } : {}),
    })
    const app = new Hono().get("/", (c) => streams.open(c, "key", { after: "0" }))
    const reader = (await app.request("/")).body!.getReader()
    const decoder = new TextDecoder()
    let text = ""
    return {
      log,
      streams,
      readUntil: async (done: (text: string) => boolean) => {
        while (!done(text)) text += decoder.decode((await reader.read()).value, { stream: true })
      },
      /** Reads every entry (and the `ready` event), then disconnects. */
      readAll: async () => {
        while ((text.match(/^id: ?\d+$/gm)?.length ?? 0) < 21)
          text += decoder.decode((await reader.read()).value, { stream: true })
        await reader.cancel()
        return text
      },
    }
  }

  it("sends what it still held of the purged conversation without its content", async () => {
    const { streams, readUntil, readAll } = await slowReader()
    // The client has read the first message; the stream holds the rest of its batch for it.
    await readUntil((text) => text.includes("Otter-0"))
    streams.purged({ name: "conversation:g~one", conversationId: "g~one", scope: { kind: "conversation" } })
    const text = await readAll()
    const withText = new Set(text.match(/Otter-\d+/g))
    // Only what was already written to the response when the purge landed (the one read and the
    // one or two the stream's queue had taken) still says what it said.
    expect(withText.size).toBeGreaterThan(0)
    expect(withText.size).toBeLessThanOrEqual(3)
    expect(text).not.toContain("Otter-19")
    expect(text.match(/"purged":true/g)?.length).toBeGreaterThanOrEqual(17)
  })

  it("reads the rest of a batch again once it held it 5 s, so a purge elsewhere (another relay) reaches it too", async () => {
    let clock = 1_000_000
    const { log, readUntil, readAll } = await slowReader(() => clock)
    await readUntil((text) => text.includes("Otter-0"))
    // Another relay purged the conversation: the log is redacted, this relay's streams were not told.
    for (const [i, entry] of log.entries.entries())
      log.entries[i] = { ...entry, event: redactEvent(entry.event, { kind: "conversation" }) }
    clock += STALE_BATCH_MS + 1
    const text = await readAll()
    expect(new Set(text.match(/Otter-\d+/g)).size).toBeLessThanOrEqual(3)
    expect(text).not.toContain("Otter-19")
    // Each entry once, in order.
    expect(text.match(/^id: ?\d+$/gm)!.map((line) => Number(line.replace(/\D/g, "")))).toEqual(
      Array.from({ length: 21 }, (_, i) => i),
    )
  })
})
