import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import { MemoryBackend } from "../../src/backend/memory.js"
import { SqliteBackend } from "../../src/backend/sqlite.js"
import type { HookEvent } from "../../src/hooks/events.js"
import type { Outbox } from "../../src/hooks/outbox.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

/**
 * `outbox`, whose first `times` enqueues holding the events of message `id` fail (a storage
 * outage, a locked table); the others go through.
 */
function failingFor(outbox: Outbox, id: string, times: number): Outbox {
  let left = times
  return new Proxy(outbox, {
    get(target, property) {
      const value = Reflect.get(target, property, target)
      if (property === "enqueue")
        return (batch: Parameters<Outbox["enqueue"]>[0]) => {
          if (left > 0 && sentIds(batch.events.map((e) => e.event)).includes(id)) {
            left--
            return Promise.reject(new Error("the outbox table is locked"))
          }
          return target.enqueue(batch)
        }
      return typeof value === "function" ? value.bind(target) : value
    },
  })
}

const sentIds = (events: HookEvent[]) =>
  events
    .filter((e) => e.event.type === "message.sent")
    .map((e) => (e.subject as { message: { id: string } }).message.id)

const backends = {
  // Enqueues wait for one another (the PostgreSQL outbox does the same).
  memory: () => new MemoryBackend(),
  // Enqueues are not waited for one by one (`ordersEnqueues`): a later one could be recorded first.
  sqlite: () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-outbox-failure-"))
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
    return new SqliteBackend(dir)
  },
}

describe.each(Object.keys(backends) as (keyof typeof backends)[])(
  "hook events of a change the %s outbox failed to record",
  (kind) => {
    it("are delivered and logged once it works again, before those of the changes after it", async () => {
      const backend = backends[kind]()
      cleanup.push(() => backend.close())
      const { hooks, events } = recordingHooks()
      const relay = await coreWithHooks({
        storage: backend.documents,
        outbox: failingFor(backend.outbox, "while-failing-01", 2),
        hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      })
      cleanup.push(() => relay.core.close())
      const id = "g~outbox-failure" as ConversationId
      const a = new InProcessClient(relay.core, id, alice)
      await a.connect()
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
      await a.settled()
      await relay.runtime.idle()

      // Saved and acknowledged; the outbox fails to record its events (twice).
      sendMessage(a.doc, alice, { id: "while-failing-01" as MessageId, body: "one" })
      await a.settled()
      // The next change's events go through at once, with a watermark past the first change's entries.
      sendMessage(a.doc, alice, { id: "after-change-01" as MessageId, body: "two" })
      await a.settled()
      await relay.runtime.idle()

      expect(sentIds(events)).toEqual(["while-failing-01", "after-change-01"])
      const logged = await backend.events.read({ types: ["message.sent"], limit: 10 })
      expect(sentIds(logged.map((e) => e.event))).toEqual(["while-failing-01", "after-change-01"])
    })

    it("are delivered when the record went through though the outbox answered with a failure (a commit whose answer was lost)", async () => {
      // PostgreSQL black-holed under load: the commit applied, its answer never came, and the record
      // was tried again, found recorded (the same event ids) and so queued nothing: the deliveries
      // stayed owed, never attempted, for as long as the relay ran (an outside probe).
      const backend = backends[kind]()
      cleanup.push(() => backend.close())
      const { hooks, events } = recordingHooks()
      let lost = 1
      const outbox = new Proxy(backend.outbox, {
        get(target, property) {
          const value = Reflect.get(target, property, target)
          if (property === "enqueue")
            return async (batch: Parameters<Outbox["enqueue"]>[0]) => {
              const recorded = await target.enqueue(batch)
              if (lost > 0 && sentIds(batch.events.map((e) => e.event)).includes("answer-lost-01")) {
                lost--
                throw new Error("Connection terminated unexpectedly")
              }
              return recorded
            }
          return typeof value === "function" ? value.bind(target) : value
        },
      })
      const relay = await coreWithHooks({
        storage: backend.documents,
        outbox,
        hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      })
      cleanup.push(() => relay.core.close())
      const id = "g~answer-lost" as ConversationId
      const a = new InProcessClient(relay.core, id, alice)
      await a.connect()
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
      await a.settled()
      await relay.runtime.idle()
      sendMessage(a.doc, alice, { id: "answer-lost-01" as MessageId, body: "one" })
      await a.settled()
      await vi.waitFor(() => expect(sentIds(events)).toEqual(["answer-lost-01"]), { timeout: 5_000 })
      expect(await backend.outbox.pending(id)).toEqual([])
    })
  },
)

/**
 * `outbox`, whose enqueues for `document` fail while `failing()` holds; the others go through.
 * Closed with its backend (two relays share it).
 */
function failingWhile(outbox: Outbox, document: string, failing: () => boolean): Outbox {
  return new Proxy(outbox, {
    get(target, property) {
      if (property === "close") return async () => undefined
      const value = Reflect.get(target, property, target)
      if (property === "enqueue")
        return (batch: Parameters<Outbox["enqueue"]>[0]) =>
          batch.document === document && failing()
            ? Promise.reject(new Error("the outbox table is locked"))
            : target.enqueue(batch)
      return typeof value === "function" ? value.bind(target) : value
    },
  })
}

describe.each(Object.keys(backends) as (keyof typeof backends)[])(
  "a change of one conversation the %s outbox keeps failing to record",
  (kind) => {
    it("holds neither another conversation's events nor its compaction (before: both waited for it)", async () => {
      const backend = backends[kind]()
      cleanup.push(() => backend.close())
      const { hooks, events } = recordingHooks()
      const stuck = "g~records-failing" as ConversationId
      const other = "g~records-flowing" as ConversationId
      let failing = false
      const relay = await coreWithHooks({
        storage: backend.documents,
        outbox: failingWhile(backend.outbox, stuck, () => failing),
        hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      })
      cleanup.push(() => relay.core.close())
      const a = new InProcessClient(relay.core, stuck, alice)
      const b = new InProcessClient(relay.core, other, alice)
      await a.connect()
      await b.connect()
      createConversation(a.doc, alice, { kind: "group", id: stuck, participants: [bob] })
      createConversation(b.doc, alice, { kind: "group", id: other, participants: [bob] })
      await a.settled()
      await b.settled()
      await relay.runtime.idle()

      failing = true
      sendMessage(a.doc, alice, { id: "stuck-message1" as MessageId, body: "one" })
      await a.settled()
      // The stuck record has failed once and waits for its next attempt.
      await new Promise((resolve) => setTimeout(resolve, 50))
      sendMessage(b.doc, alice, { id: "other-message1" as MessageId, body: "two" })
      await b.settled()

      await vi.waitFor(() => expect(sentIds(events)).toContain("other-message1"), { timeout: 2_000 })
      const limit = await Promise.race([
        relay.runtime.compactionLimit(other),
        new Promise<"held">((resolve) => setTimeout(() => resolve("held"), 1_000)),
      ])
      expect(limit).not.toBe("held")
      expect(sentIds(events)).not.toContain("stuck-message1")

      // Once the outbox takes it, the stuck change's events are recorded and delivered after all.
      failing = false
      await relay.runtime.idle()
      expect(sentIds(events)).toContain("stuck-message1")
      const logged = await backend.events.read({ types: ["message.sent"], limit: 10 })
      expect(sentIds(logged.map((e) => e.event))).toEqual(["other-message1", "stuck-message1"])
    })
  },
)

describe.each(Object.keys(backends) as (keyof typeof backends)[])(
  "a conversation taken over while the %s outbox refuses the dead owner's unrecorded events",
  (kind) => {
    it("is ordered at once, and those events come first once recorded (before: the takeover waited for them)", async () => {
      const backend = backends[kind]()
      cleanup.push(() => backend.close())
      const { hooks, events } = recordingHooks()
      const id = "g~taken-over-01" as ConversationId
      // The owner that stops: it saves a change whose events it never records.
      let ownerFails = false
      const owner = await coreWithHooks({
        storage: backend.documents,
        outbox: failingWhile(backend.outbox, id, () => ownerFails),
        hooks: [{ name: "record.ts", path: "record.ts", hooks: recordingHooks().hooks }],
      })
      cleanup.push(() => {
        // Closing waits for its records (unload, compaction): let them through once the test is done.
        ownerFails = false
        return owner.core.close()
      })
      const a = new InProcessClient(owner.core, id, alice)
      await a.connect()
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
      await a.settled()
      await owner.runtime.idle()
      ownerFails = true
      sendMessage(a.doc, alice, { id: "before-takeover" as MessageId, body: "one" })
      await a.settled()

      let failing = true
      // A relay that runs already (it does not sweep the documents a crash left behind at its start).
      const running = new Proxy(
        failingWhile(backend.outbox, id, () => failing),
        {
          get: (target, property) =>
            property === "behind" ? async () => [] : Reflect.get(target, property, target),
        },
      )
      const next = await coreWithHooks({
        storage: backend.documents,
        outbox: running,
        hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      })
      cleanup.push(() => next.core.close())
      const tookOver = await Promise.race([
        next.core.tookOver(id).then(() => "ordering" as const),
        new Promise<"held">((resolve) => setTimeout(() => resolve("held"), 1_000)),
      ])
      expect(tookOver).toBe("ordering")

      // A client's load meanwhile, and its change: the dead owner's events are neither derived
      // again nor passed.
      failing = false
      const b = new InProcessClient(next.core, id, bob)
      await b.connect()
      sendMessage(b.doc, bob, { id: "after-takeover1" as MessageId, body: "two" })
      await b.settled()
      await next.runtime.idle()
      // (An outbox that keeps call order records the last change without a line, which idle() does not wait for.)
      await vi.waitFor(() => expect(sentIds(events)).toEqual(["before-takeover", "after-takeover1"]))
      const logged = await backend.events.read({ types: ["message.sent"], limit: 10 })
      expect(sentIds(logged.map((e) => e.event))).toEqual(["before-takeover", "after-takeover1"])
    })
  },
)

describe("hook events recorded, then failing to be queued in memory", () => {
  it("are logged once, and every later change's events go on (before: logged again at each retry, all others held)", async () => {
    const backend = new MemoryBackend()
    cleanup.push(() => backend.close())
    const { hooks, events } = recordingHooks()
    const relay = await coreWithHooks({
      storage: backend.documents,
      outbox: backend.outbox,
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
    })
    cleanup.push(() => relay.core.close())
    // The first queueing of message "poisoned-0001"'s deliveries throws (a bug in memory, as a redaction
    // that overflowed the stack on a deeply nested value did).
    const dispatcher = (relay.runtime as unknown as { dispatcher: { add(d: unknown[]): void } }).dispatcher
    const add = dispatcher.add.bind(dispatcher)
    let thrown = 0
    dispatcher.add = (deliveries) => {
      if (thrown === 0 && JSON.stringify(deliveries).includes("poisoned-0001")) {
        thrown++
        throw new RangeError("Maximum call stack size exceeded")
      }
      add(deliveries)
    }
    const id = "g~queue-failure" as ConversationId
    const a = new InProcessClient(relay.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { id: "poisoned-0001" as MessageId, body: "one" })
    await a.settled()
    sendMessage(a.doc, alice, { id: "after-poison1" as MessageId, body: "two" })
    await a.settled()
    await relay.runtime.idle()
    expect(thrown).toBe(1)
    expect(sentIds(events)).toContain("after-poison1")
    const logged = await backend.events.read({ types: ["message.sent"], limit: 10 })
    expect(sentIds(logged.map((e) => e.event))).toEqual(["poisoned-0001", "after-poison1"])
  })
})
