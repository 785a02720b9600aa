import {
  type ConversationId,
  createConversation,
  ErrorCode,
  newConversationId,
  type ParleyError,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { MemoryBackend } from "../../src/backend/memory.js"
import type { EventLogEntry } from "../../src/hooks/event-log.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const relays: RunningRelay[] = []
afterEach(async () => {
  for (const relay of relays.splice(0)) await relay.close()
})

async function relayWith(options: Parameters<typeof startRelay>[0] = {}): Promise<RunningRelay> {
  const relay = await startRelay({
    backend: new MemoryBackend(),
    dev: true,
    port: 0,
    warmUp: false,
    log: "silent",
    ...options,
  })
  relays.push(relay)
  return relay
}

async function until<T>(read: () => Promise<T>, done: (value: T) => boolean): Promise<T> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const value = await read()
    if (done(value)) return value
    if (Date.now() > deadline) throw new Error(`timed out; last ${JSON.stringify(value).slice(0, 300)}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const types = (entries: readonly EventLogEntry[]) => entries.map((e) => e.event.event.type)

describe("the relay's event log", () => {
  it("records the events of every saved change without any hook or webhook, and wakes subscribers", async () => {
    // No hook modules, no webhooks, no inboxes: nothing but the event log wants these events.
    const relay = await relayWith({ inbox: false })
    // The core serves the relay's log (through what withholds owed purges' content, see `OwedContent`).
    expect(relay.core.events).toBeDefined()
    const heard: EventLogEntry[] = []
    relay.events.subscribe((entries) => heard.push(...entries))
    const id = newConversationId()
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    })
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      sendMessage(doc, alice, { body: "hello" })
    })
    await until(
      async () => heard,
      (h) => h.some((e) => e.event.event.type === "message.sent"),
    )
    const logged = await relay.events.read({ limit: 100 })
    expect(logged).toEqual(heard)
    expect(await relay.core.events!.read({ limit: 100 })).toEqual(logged)
    expect(types(logged)).toEqual([
      "conversation.created",
      "document.updated",
      "message.sent",
      "document.updated",
    ])
    const sent = logged.find((e) => e.event.event.type === "message.sent")!
    expect(sent.event.subject).toMatchObject({ message: { body: "hello", seq: 1, author: alice } })
    expect(await relay.events.read({ user: bob, types: ["message.sent"], limit: 10 })).toEqual([sent])
    expect(await relay.events.read({ user: "mallory" as UserId, limit: 10 })).toEqual([])
    expect(await relay.events.latest()).toBe(logged.at(-1)!.id)
  })

  it("prunes in the background to its retention, and says so to a reader who fell behind", async () => {
    const relay = await relayWith({ eventRetention: { maxEvents: 3 }, eventPruneIntervalMs: 20 })
    const id: ConversationId = newConversationId()
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    })
    for (const body of ["one", "two", "three"])
      await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
        sendMessage(doc, alice, { body })
      })
    // Two events per message (message.sent, document.updated) plus two for the creation: 8 recorded.
    await until(
      () => relay.events.latest(),
      (latest) => Number(latest) >= 8,
    )
    const kept = await until(
      () => relay.events.read({ limit: 100 }),
      (entries) => entries.length <= 3,
    )
    expect(kept.map((e) => Number(e.id))).toEqual([6, 7, 8])
    const error = await relay.events.read({ after: "2", limit: 10 }).catch((e: ParleyError) => e)
    expect((error as ParleyError).code).toBe(ErrorCode.EVENTS_EXPIRED)
    expect(await relay.events.read({ after: "5", limit: 10 })).toEqual(kept)
  })
})
