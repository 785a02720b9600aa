import {
  type ConversationId,
  createConversation,
  getMessage,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it, vi } from "vitest"
import * as Y from "yjs"
import { MemoryBackend } from "../../src/backend/memory.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { MemoryOutbox, type Outbox } from "../../src/hooks/outbox.js"
import { MemoryStorage } from "../../src/storage/memory.js"
import type { RelayStorage } from "../../src/storage/types.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const id = "g~recovery" as ConversationId

/** Storage and outbox outlive the relays started on them, like files on disk across a crash. */
async function relayOn(storage: RelayStorage, outbox: Outbox, retryMs?: number) {
  const { hooks, events } = recordingHooks()
  const relay = await coreWithHooks({
    storage,
    outbox,
    ...(retryMs !== undefined ? { recovery: { retryMs } } : {}),
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

    // The relay stored bob's update, then died before applying it or recording its events.
    await savedBeforeCrash(storage, id, bob, "crash-001")

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

  it("records no watermark for a document loaded with nothing stored, and one before its first change is stored", async () => {
    const storage = new MemoryStorage()
    const outbox = new MemoryOutbox()
    const first = await relayOn(storage, outbox)
    // Ids nobody created, loaded (as a pending connect or an upload to a made-up id loads them): nothing kept.
    for (let i = 0; i < 20; i++) await first.core.read(`g~made-up-${i}`, () => undefined)
    await first.runtime.idle()
    for (let i = 0; i < 20; i++) expect(await outbox.watermark(`g~made-up-${i}`)).toBeUndefined()

    // A conversation created on a document loaded empty: its first append comes with a watermark, so a
    // change stored right before a crash is recovered from there.
    const fresh = "g~created-later" as ConversationId
    await first.core.read(fresh, () => undefined)
    const a = new InProcessClient(first.core, fresh, alice)
    await a.connect()
    expect(await outbox.watermark(fresh)).toBeUndefined()
    createConversation(a.doc, alice, { kind: "group", id: fresh, participants: [bob] })
    await a.settled()
    await first.runtime.idle()
    expect(await outbox.watermark(fresh)).toBeGreaterThan(0)
    await savedBeforeCrash(storage, fresh, bob, "crash-002")
    const second = await relayOn(storage, outbox)
    await second.core.read(fresh, () => undefined)
    await second.runtime.idle()
    expect(sent(second.events).map((e) => e.id)).toEqual(["crash-002"])
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

/** Stores, behind the relay's back, `user`'s message as the next log entry: saved, then the relay died. */
async function savedBeforeCrash(storage: RelayStorage, name: string, user: UserId, message: string) {
  const replica = new Y.Doc()
  const stored = await storage.load(name)
  if (stored.snapshot) Y.applyUpdate(replica, stored.snapshot)
  for (const { update } of stored.updates) Y.applyUpdate(replica, update)
  const before = Y.encodeStateVector(replica)
  sendMessage(replica, user, { id: message as MessageId, body: "saved, then the relay died" })
  await storage.append(name, [Y.encodeStateAsUpdate(replica, before)])
}

/** A relay that creates `name` with alice's first message, records its events, and is dropped (its data kept). */
async function conversationWithOneMessage(backend: MemoryBackend, name: ConversationId) {
  const first = await relayOn(backend.documents, backend.outbox)
  const a = new InProcessClient(first.core, name, alice)
  await a.connect()
  createConversation(a.doc, alice, { kind: "group", id: name, participants: [bob] })
  sendMessage(a.doc, alice, { id: "first-001" as MessageId, body: "first" })
  await a.settled()
  await first.runtime.idle()
  a.disconnect()
}

describe("hook events owed by a document nobody opens after a crash", () => {
  it("are recorded and delivered after the restart, with the message numbered, loading only the documents that owe them", async () => {
    const backend = new MemoryBackend()
    const owing = "g~owing" as ConversationId
    const quiet = "g~quiet" as ConversationId
    await conversationWithOneMessage(backend, owing)
    await conversationWithOneMessage(backend, quiet)
    await savedBeforeCrash(backend.documents, owing, bob, "crash-001")

    const second = await relayOn(backend.documents, backend.outbox)
    await second.runtime.idle()
    // Nobody connected: the relay found the owed event by itself.
    expect(sent(second.events)).toEqual([{ id: "crash-001", seq: 2, actor: { kind: "user", user: "bob" } }])
    expect(second.core.loadedDocuments).toBe(1)
    expect(await backend.outbox.behind()).toEqual([])

    // Started again, nothing is owed: nothing is loaded, nothing delivered twice.
    const third = await relayOn(backend.documents, backend.outbox)
    await third.runtime.idle()
    expect(third.events).toEqual([])
    expect(third.core.loadedDocuments).toBe(0)
  })

  it("are recovered once storage answers again when listing them failed at start", async () => {
    const backend = new MemoryBackend()
    const owing = "g~stalled" as ConversationId
    await conversationWithOneMessage(backend, owing)
    await savedBeforeCrash(backend.documents, owing, bob, "crash-002")
    let failures = 1
    const flaky: Outbox = new Proxy(backend.outbox, {
      get(target, property) {
        if (property === "behind" && failures > 0)
          return async () => {
            failures--
            throw new Error("storage is restarting")
          }
        const value = Reflect.get(target, property, target)
        return typeof value === "function" ? value.bind(target) : value
      },
    })

    const second = await relayOn(backend.documents, flaky, 20)
    await second.runtime.idle()
    expect(sent(second.events)).toEqual([])
    await vi.waitFor(async () => {
      await second.runtime.idle()
      expect(sent(second.events).map((e) => e.id)).toEqual(["crash-002"])
    })
    expect(failures).toBe(0)
    await second.core.close()
  })
})
