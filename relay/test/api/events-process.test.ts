import { existsSync } from "node:fs"
import { getMessage, type MessageId, markDelivered, markRead, sendMessage, type UserId } from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { HookEvent } from "../../src/hooks/events.js"
import { docUntil, stockProvider, synced } from "../helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { isStream, openSse, type SseStream } from "../helpers/sse.js"
import { apiClient, createKey, freshDataDir } from "./helpers.js"

// The relay's durable event log comes with the hook-writes work of #14 (relay/src/hooks/event-log.ts);
// until both are in one tree the stream answers 503 and these tests cannot run.
const hasEventLog = existsSync(new URL("../../src/hooks/event-log.ts", import.meta.url))

const ALL = [
  "conversations:read",
  "conversations:write",
  "messages:read",
  "messages:write",
  "events:read",
  "act-as-user",
]

const payloads = (stream: SseStream, type?: string): HookEvent[] =>
  stream.events
    .filter((e) => e.event !== "ready" && (type === undefined || e.event === type))
    .map((e) => JSON.parse(e.data) as HookEvent)
const bodies = (stream: SseStream): string[] =>
  payloads(stream, "message.sent").map((e) => (e.subject as { message: { body: string } }).message.body)

describe.skipIf(!hasEventLog)("GET /v1/events from a relay process (needs the relay's event log)", () => {
  const streams: SseStream[] = []
  afterAll(async () => {
    for (const s of streams) s.close()
    await stopRelayProcesses()
  })
  async function stream(relay: RelayProcess, key: string, query: string, lastEventId?: string) {
    const opened = await openSse(`${relay.httpUrl}/v1/events${query}`, {
      authorization: `Bearer ${key}`,
      ...(lastEventId ? { "last-event-id": lastEventId } : {}),
    })
    if (!isStream(opened)) throw new Error(`stream refused: ${JSON.stringify(opened.body)}`)
    streams.push(opened)
    await opened.until((events) => events.some((e) => e.event === "ready"))
    return opened
  }

  it("runs a Peek-style chat: the backend creates it, sends an emergency message, and streams the reply and the delivered and read notices", async () => {
    const dataDir = freshDataDir()
    const key = await createKey(dataDir, "peek", ALL)
    const relay = await startRelayProcess({ dataDir })
    const api = apiClient(() => relay.httpUrl, key)
    const events = await stream(
      relay,
      key,
      "?conversation=g~peek-1&type=message.sent,messages.delivered,messages.read",
    )

    await api("POST", "/v1/conversations", {
      id: "g~peek-1",
      title: "Your appointment",
      participants: [{ user: "alice" }, { user: "bob" }],
    })
    const alert = await api("POST", "/v1/conversations/g~peek-1/messages", {
      body: "Your appointment moved to 10:00",
      priority: "emergency",
    })
    expect(alert.status).toBe(201)

    // The two external users act through their own clients, with tokens.
    const aliceDoc = new Y.Doc()
    const bobDoc = new Y.Doc()
    const alice = stockProvider(relay.url, "g~peek-1", await relay.token("alice"), aliceDoc)
    const bob = stockProvider(relay.url, "g~peek-1", await relay.token("bob"), bobDoc)
    try {
      await Promise.all([synced(alice), synced(bob)])
      await docUntil(
        aliceDoc,
        () => getMessage(aliceDoc, alert.body.id as MessageId)?.priority === "emergency",
      )
      sendMessage(aliceDoc, "alice" as UserId, { body: "Thanks, I'll be there" })
      await docUntil(bobDoc, () => getMessage(bobDoc, alert.body.id as MessageId)?.seq !== undefined)
      await docUntil(bobDoc, () => bobDoc.getArray("messages").length >= 2)
      // Bob's device received both messages (delivered), then bob read them.
      await docUntil(bobDoc, () => {
        try {
          return markDelivered(bobDoc, "bob" as UserId)
        } catch {
          return false
        }
      })
      await events.until((e) => e.some((x) => x.event === "messages.delivered"), 15_000)
      await docUntil(bobDoc, () => {
        try {
          return markRead(bobDoc, "bob" as UserId)
        } catch {
          return false
        }
      })

      await events.until((e) => e.some((x) => x.event === "messages.read"), 15_000)
      const sent = payloads(events, "message.sent")
      expect(
        sent.map((e) => [e.event.actor, (e.subject as { message: { body: string } }).message.body]),
      ).toEqual([
        [{ kind: "service", subject: "peek", user: "service.peek" }, "Your appointment moved to 10:00"],
        [{ kind: "user", user: "alice" }, "Thanks, I'll be there"],
      ])
      expect((sent[0]!.subject as { message: { priority: string } }).message.priority).toBe("emergency")
      const delivered = payloads(events, "messages.delivered")
      expect(delivered.map((e) => [e.event.actor, e.subject])).toEqual([
        [
          { kind: "user", user: "bob" },
          { user: "bob", upTo: 2 },
        ],
      ])
      const read = payloads(events, "messages.read")
      expect(read.map((e) => e.subject)).toEqual([{ user: "bob", upTo: 2 }])
      // Only the types asked for.
      expect(
        payloads(events).every((e) =>
          ["message.sent", "messages.delivered", "messages.read"].includes(e.event.type),
        ),
      ).toBe(true)
    } finally {
      alice.destroy()
      bob.destroy()
    }
  })

  it("resumes with Last-Event-ID after a disconnect and after a relay SIGKILL, missing nothing and repeating nothing", async () => {
    const dataDir = freshDataDir()
    const key = await createKey(dataDir, "resumer", ALL)
    let relay = await startRelayProcess({ dataDir })
    const api = apiClient(() => relay.httpUrl, key)
    await api("POST", "/v1/conversations", { id: "g~resume", participants: [{ user: "carol" }] })
    // Another conversation carol is not in: a stream for carol never shows it.
    await api("POST", "/v1/conversations", { id: "g~secret", participants: [{ user: "dan" }] })
    const send = (n: number, conversation = "g~resume") =>
      api("POST", `/v1/conversations/${conversation}/messages`, { body: `m${n}` })

    const first = await stream(relay, key, "?user=carol&type=message.sent")
    for (let n = 1; n <= 3; n++) {
      await send(n)
      await send(100 + n, "g~secret")
    }
    await first.until(() => bodies(first).length === 3)
    first.close()
    // Written while the client is away, then the relay dies and comes back.
    for (let n = 4; n <= 6; n++) await send(n)
    await relay.kill()
    relay = await startRelayProcess({ dataDir })
    for (let n = 7; n <= 8; n++) await send(n)
    const second = await stream(relay, key, "?user=carol&type=message.sent", first.lastEventId())
    await send(9)
    await second.until(() => bodies(second).length === 6)
    expect([...bodies(first), ...bodies(second)]).toEqual([
      "m1",
      "m2",
      "m3",
      "m4",
      "m5",
      "m6",
      "m7",
      "m8",
      "m9",
    ])
    const ids = [...first.events, ...second.events]
      .filter((e) => e.event === "message.sent")
      .map((e) => Number(e.id))
    expect([...ids].sort((a, b) => a - b)).toEqual(ids)
    expect(new Set(ids).size).toBe(ids.length)
  })
})
