import {
  type ConversationId,
  createConversation,
  editMessage,
  type MessageId,
  react,
  renameConversation,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { withoutRecorded } from "../../src/hooks/event-log.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { MemoryOutbox, type Outbox } from "../../src/hooks/outbox.js"
import { MemoryStorage } from "../../src/storage/memory.js"
import type { RelayStorage } from "../../src/storage/types.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const name = "g~stable-ids" as ConversationId

async function relayOn(storage: RelayStorage, outbox: Outbox) {
  const { hooks, events } = recordingHooks()
  const relay = await coreWithHooks({
    storage,
    outbox,
    hooks: [{ name: "record.ts", path: "record.ts", hooks }],
  })
  return { ...relay, events }
}

/**
 * `outbox`, whose first two `watermark` reads both answer only once both were asked: two relays
 * that read the document's watermark before either recorded what it derived past it (a takeover
 * while the owner froze, a record whose commit was not known to have happened).
 */
function bothReadTheWatermark(outbox: Outbox): Outbox {
  let arrived = 0
  let release!: () => void
  const both = new Promise<void>((resolve) => {
    release = resolve
  })
  return new Proxy(outbox, {
    get(target, property, receiver) {
      if (property === "watermark")
        return async (document: string) => {
          const mark = await target.watermark(document)
          if (++arrived === 2) release()
          await both
          return mark
        }
      const value = Reflect.get(target, property, receiver) as unknown
      return typeof value === "function" ? value.bind(target) : value
    },
  })
}

/** An event without what a re-derivation may tell differently: when it was derived, and who acted (inferred). */
const comparable = (event: HookEvent) => ({
  id: event.event.id,
  type: event.event.type,
  subject: event.subject,
})

describe("hook event ids", () => {
  it("are the same for a backlog two relays derive at once, recorded and delivered once, as the live relay gave them", async () => {
    const storage = new MemoryStorage()
    // The live relay: its events are what the backlog's events must be again.
    const liveOutbox = new MemoryOutbox()
    const live = await relayOn(storage, liveOutbox)
    const a = new InProcessClient(live.core, name, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id: name, participants: [bob] })
    const first = sendMessage(a.doc, alice, { id: "first-01" as MessageId, body: "first" })
    await a.settled()
    await live.runtime.idle()
    const mark = (await liveOutbox.watermark(name))!
    // The backlog: client changes, and a server-side write (its change and its sequencing, two entries).
    sendMessage(a.doc, alice, { id: "second-1" as MessageId, body: "second" })
    await a.settled()
    react(a.doc, alice, first.id, "👍")
    editMessage(a.doc, alice, first.id, "first, edited")
    await a.settled()
    await live.core.write(name, { kind: "user", user: alice }, (doc) => {
      renameConversation(doc, alice, "renamed")
      sendMessage(doc, alice, { id: "from-api" as MessageId, body: "from the API" })
    })
    await live.runtime.idle()
    const stored = await storage.load(name)
    expect(stored.updates.filter((u) => u.position > mark).length).toBeGreaterThanOrEqual(4)
    const liveEvents = (await liveOutbox.events.read({ limit: 100 })).map((e) => e.event)
    const isSecond = (e: HookEvent) =>
      e.event.type === "message.sent" && (e.subject as { message: { id: string } }).message.id === "second-1"
    const backlog = liveEvents.slice(liveEvents.findIndex(isSecond))

    // The owner died having recorded its events up to `mark` only; two relays take the document over
    // on the same storage and outbox, each reading the watermark before the other recorded anything.
    const shared = new MemoryOutbox()
    await shared.enqueue({ document: name, events: [], through: mark })
    const gated = bothReadTheWatermark(shared)
    const one = await relayOn(storage, gated)
    const two = await relayOn(storage, gated)
    await Promise.all([one.core.read(name, () => undefined), two.core.read(name, () => undefined)])
    await Promise.all([one.runtime.idle(), two.runtime.idle()])

    const logged = (await shared.events.read({ limit: 100 })).map((e) => e.event)
    const loggedIds = logged.map((e) => e.event.id)
    // Each event once in the log, and delivered once (by one relay or the other).
    expect(new Set(loggedIds).size).toBe(loggedIds.length)
    const delivered = [...one.events, ...two.events].map((e) => e.event.id)
    expect(delivered.sort()).toEqual(
      logged
        .filter((e) => e.event.type !== "document.updated")
        .map((e) => e.event.id)
        .sort(),
    )
    // The same semantic events as the live relay derived, under the same ids.
    const semantic = (events: HookEvent[]) =>
      events.filter((e) => e.event.type !== "document.updated").map(comparable)
    expect(semantic(logged)).toEqual(semantic(backlog))
    expect(semantic(logged).map((e) => e.type)).toEqual([
      "message.sent",
      "reaction.added",
      "message.edited",
      "conversation.updated",
      "message.sent",
    ])
    // Every document.updated the live relay derived is there under its id (that of the change's first
    // entry). A change stored as several entries (alice's reaction and edit, one run of a batch; the
    // server-side write and its sequencing) is reported by the live relay in one, by a recovery in one
    // per entry: the others are the recovery's own.
    const liveUpdates = backlog.filter((e) => e.event.type === "document.updated").map((e) => e.event.id)
    const recoveredUpdates = logged.filter((e) => e.event.type === "document.updated").map((e) => e.event.id)
    expect(recoveredUpdates).toEqual(expect.arrayContaining(liveUpdates))
    expect([liveUpdates.length, recoveredUpdates.length]).toEqual([3, 5])

    // The live relay, frozen meanwhile, records its own events of the same changes after all: nothing new.
    expect(
      await shared.enqueue({
        document: name,
        events: backlog.map((event) => ({ event, targets: ["hook:record.ts"] })),
        through: stored.updates.at(-1)!.position,
      }),
    ).toEqual([])
    expect((await shared.events.read({ limit: 100 })).length).toBe(logged.length)
  })
})

describe("recording an event id once", () => {
  const event = (id: string, type: "message.sent" | "message.edited") =>
    ({
      event: { id, type, conversationId: name, time: "2026-12-07T00:00:00.000Z" },
      subject: {},
    }) as unknown as HookEvent

  it("drops a copy of a recorded id quietly, and says aloud when one batch holds two events under one id", async () => {
    const warnings: Error[] = []
    const listen = (warning: Error) => warnings.push(warning)
    process.on("warning", listen)
    try {
      // A copy of what the store holds (a backlog derived again): dropped, no warning.
      const known = new Map([[name as string, new Set(["evt_a"])]])
      const kept = withoutRecorded([{ event: event("evt_a", "message.sent") }], known)
      expect(kept).toEqual([])
      // Two different events of one batch under one id: a collision. The first kept, the second reported.
      const collided = withoutRecorded(
        [{ event: event("evt_b", "message.sent") }, { event: event("evt_b", "message.edited") }],
        new Map(),
      )
      expect(collided.map((e) => e.event.event.type)).toEqual(["message.sent"])
      await new Promise((resolve) => setImmediate(resolve))
      expect(warnings.map((w) => (w as Error & { code?: string }).code)).toEqual(["PARLEY_EVENT_ID_REPEAT"])
      expect(warnings[0]!.message).toContain("evt_b")
    } finally {
      process.off("warning", listen)
    }
  })
})
