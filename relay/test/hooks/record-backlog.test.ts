import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { MemoryBackend } from "../../src/backend/memory.js"
import type { HookEvent } from "../../src/hooks/events.js"
import type { Outbox, OutboxBatch } from "../../src/hooks/outbox.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

// On PostgreSQL every record of a change's events was a transaction of its own (a dozen round trips
// and a WAL flush): about 60 a second, and a conversation taking 75 messages a second had its records
// seconds behind its writes (an outside tester). The memory outbox, like PostgreSQL's, records one
// enqueue after another: here one record is held while more changes are saved behind it.

const alice = "alice" as UserId
const bob = "bob" as UserId

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const sentIds = (events: readonly HookEvent[]) =>
  events
    .filter((e) => e.event.type === "message.sent")
    .map((e) => (e.subject as { message: { id: string } }).message.id)

describe("changes saved while a record of their conversation's events is still being written", () => {
  it("are recorded together by the next record, in order, and delivered once each (before: one record each)", async () => {
    const backend = new MemoryBackend()
    cleanup.push(() => backend.close())
    const { hooks, events } = recordingHooks()
    const batches: OutboxBatch[] = []
    let release: (() => void) | undefined
    let held: Promise<void> | undefined
    const outbox = new Proxy(backend.outbox, {
      get(target, property) {
        const value = Reflect.get(target, property, target)
        if (property === "enqueue")
          return async (batch: OutboxBatch) => {
            batches.push(batch)
            // The first record after the hold waits (a slow transaction); the rest queue behind it.
            const wait = held
            held = undefined
            await wait
            return target.enqueue(batch)
          }
        return typeof value === "function" ? value.bind(target) : value
      },
    }) as Outbox
    const relay = await coreWithHooks({
      storage: backend.documents,
      outbox,
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
    })
    cleanup.push(() => relay.core.close())
    const id = "g~record-backlog" as ConversationId
    const a = new InProcessClient(relay.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    await a.settled()
    await relay.runtime.idle()

    held = new Promise((resolve) => {
      release = resolve
    })
    const before = batches.length
    const ids = Array.from({ length: 20 }, (_, i) => `backlog-msg-${String(i).padStart(2, "0")}`)
    for (const message of ids) {
      sendMessage(a.doc, alice, { id: message as MessageId, body: message })
      await a.settled()
    }
    release!()
    await relay.runtime.idle()

    // The held record, then one for everything saved behind it.
    const records = batches.slice(before)
    expect(records.length).toBe(2)
    expect(sentIds(records.flatMap((r) => r.events.map((e) => e.event)))).toEqual(ids)
    expect(sentIds(events)).toEqual(ids)
    const logged = await backend.events.read({ types: ["message.sent"], limit: 100 })
    expect(sentIds(logged.map((e) => e.event))).toEqual(ids)
    expect(await backend.outbox.watermark(id)).toBe((await backend.documents.load(id)).record?.lastPosition)
  })
})
