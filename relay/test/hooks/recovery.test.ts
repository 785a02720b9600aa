import {
  type ConversationId,
  createConversation,
  getMessage,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { HookEvent } from "../../src/hooks/events.js"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { MemoryStorage } from "../../src/storage/memory.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const id = "g~recovery" as ConversationId

/** Storage and outbox outlive the relays started on them, like files on disk across a crash. */
async function relayOn(storage: MemoryStorage, outbox: MemoryOutbox) {
  const { hooks, events } = recordingHooks()
  const relay = await coreWithHooks({
    storage,
    outbox,
    hooks: [{ name: "record.ts", path: "record.ts", hooks }],
  })
  return { ...relay, events }
}

const sent = (events: HookEvent[]) =>
  events
    .filter((e) => e.event.type === "message.sent")
    .map((e) => {
      const { message } = e.subject as { message: { id: string; seq?: number } }
      return { id: message.id, seq: message.seq, actor: e.event.actor }
    })

describe("hook events of changes saved right before a crash", () => {
  it("are derived when the document loads again, once, with the writer and sequence number", async () => {
    const storage = new MemoryStorage()
    const outbox = new MemoryOutbox()
    const first = await relayOn(storage, outbox)
    const a = new InProcessClient(first.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { id: "before-01" as MessageId, body: "before" })
    await a.settled()
    await first.runtime.idle()
    expect(sent(first.events).map((e) => e.id)).toEqual(["before-01"])

    // The relay stored bob's update, then died before applying it or recording its events:
    // what is on disk is the log entry, nothing else.
    const replica = new Y.Doc()
    const stored = await storage.load(id)
    if (stored.snapshot) Y.applyUpdate(replica, stored.snapshot)
    for (const { update } of stored.updates) Y.applyUpdate(replica, update)
    const before = Y.encodeStateVector(replica)
    sendMessage(replica, bob, { id: "crash-001" as MessageId, body: "saved, then the relay died" })
    await storage.append(id, [Y.encodeStateAsUpdate(replica, before)])

    const second = await relayOn(storage, outbox)
    await second.core.read(id, () => undefined)
    await second.runtime.idle()
    expect(sent(second.events)).toEqual([{ id: "crash-001", seq: 2, actor: { kind: "user", user: "bob" } }])
    expect(await second.core.read(id, (doc) => getMessage(doc, "crash-001" as MessageId)?.seq)).toBe(2)

    // Loaded again (another crash, nothing written since), nothing is derived twice: the watermark moved past it.
    const third = await relayOn(storage, outbox)
    await third.core.read(id, () => undefined)
    await third.runtime.idle()
    expect(third.events).toEqual([])
    // The event log, written with the outbox, holds each message once, the recovered one with its number.
    const logged = await outbox.events.read({ types: ["message.sent"], limit: 10 })
    const messages = logged.map((e) => (e.event.subject as { message: { id: string; seq?: number } }).message)
    expect(messages.map((m) => [m.id, m.seq])).toEqual([
      ["before-01", 1],
      ["crash-001", 2],
    ])
  })

  it("never compacts log entries whose events are not recorded yet", async () => {
    const storage = new MemoryStorage()
    const outbox = new MemoryOutbox()
    const first = await relayOn(storage, outbox)
    const a = new InProcessClient(first.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    await a.settled()
    await first.runtime.idle()
    const mark = await outbox.watermark(id)
    expect(mark).toBeGreaterThan(0)
    // An entry stored after the watermark (its events unrecorded), then the document unloads with compaction.
    const replica = new Y.Doc()
    const stored = await storage.load(id)
    for (const { update } of stored.updates) Y.applyUpdate(replica, update)
    if (stored.snapshot) Y.applyUpdate(replica, stored.snapshot)
    sendMessage(replica, bob, { id: "late-0001" as MessageId, body: "late" })
    const [position] = await storage.append(id, [
      Y.encodeStateAsUpdate(replica, Y.encodeStateVector(new Y.Doc())),
    ])
    expect(await first.runtime.compactionLimit(id)).toBeLessThan(position!)
  })
})
