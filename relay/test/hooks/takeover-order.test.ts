import {
  type ConversationId,
  createConversation,
  ErrorCode,
  type MessageId,
  ParleyError,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { MemoryBackend } from "../../src/backend/memory.js"
import { ownedOutbox } from "../../src/cluster/outbox.js"
import type { UpdateRouter } from "../../src/cluster/router.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { NOT_RECORDER, type Outbox } from "../../src/hooks/outbox.js"
import type { RelayStorage } from "../../src/storage/types.js"
import { coreWithHooks, InProcessClient, recordingHooks } from "./in-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

/** `outbox`, refusing `document`'s records as a clustered outbox does once another relay claimed it. */
function refusedWhile(outbox: Outbox, document: string, refused: () => boolean): Outbox {
  return new Proxy(outbox, {
    get(target, property) {
      if (property === "close") return async () => undefined
      const value = Reflect.get(target, property, target)
      if (property === "enqueue")
        return (batch: Parameters<Outbox["enqueue"]>[0]) =>
          batch.document === document && refused()
            ? Promise.reject(
                new ParleyError(ErrorCode.UNAVAILABLE, "another relay claimed it", { rule: NOT_RECORDER }),
              )
            : target.enqueue(batch)
      return typeof value === "function" ? value.bind(target) : value
    },
  })
}

/** A router that orders changes here (its `local`) and says it owns documents while `owns()` does. */
function localRouter(owns: () => boolean): UpdateRouter {
  return {
    attach: () => undefined,
    loaded: async () => undefined,
    unloaded: () => undefined,
    owns,
    submit: (_host, _principal, _update, _connection, _seen, local) => local(),
    write: async (_host, _actor, _change, local) => {
      await local()
    },
    awareness: () => undefined,
  }
}

const sentIds = (events: readonly HookEvent[]) =>
  events
    .filter((e) => e.event.type === "message.sent")
    .map((e) => (e.subject as { message: { id: string } }).message.id)

const within = <T>(promise: Promise<T>, ms: number) =>
  Promise.race([
    promise.then(() => "done" as const),
    new Promise<"held">((r) => setTimeout(() => r("held"), ms)),
  ])

describe("a conversation claimed by another relay before the last owner recorded its change", () => {
  it("has that change's events recorded and delivered by the new owner, before those of the changes it orders meanwhile", async () => {
    const backend = new MemoryBackend()
    cleanup.push(() => backend.close())
    const id = "g~claimed-01" as ConversationId
    // The relay that loses the document: its records are refused once the other relay claimed it.
    let claimedElsewhere = false
    const owner = await coreWithHooks({
      storage: backend.documents,
      outbox: refusedWhile(backend.outbox, id, () => claimedElsewhere),
      hooks: [{ name: "record.ts", path: "record.ts", hooks: recordingHooks().hooks }],
    })
    cleanup.push(() => owner.core.close())
    const a = new InProcessClient(owner.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { id: "first-message1" as MessageId, body: "one" })
    await a.settled()
    await owner.runtime.idle()

    // The next owner has the conversation loaded (a copy: it does not order it yet).
    let owns = false
    const { hooks, events } = recordingHooks()
    const next = await coreWithHooks({
      storage: backend.documents,
      outbox: backend.outbox,
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      router: localRouter(() => owns),
    })
    cleanup.push(() => next.core.close())

    // The next owner claims the conversation; the last owner stores a change it ordered just before
    // (its append was fenced in first), and its record comes too late: refused.
    claimedElsewhere = true
    sendMessage(a.doc, alice, { id: "before-claim01" as MessageId, body: "two" })
    await a.settled()
    // A refused record is left to the new owner: not tried again for as long as the relay runs.
    expect(await within(owner.runtime.idle(), 2_000)).toBe("done")

    const b = new InProcessClient(next.core, id, bob)
    await b.connect()
    const recordedThrough = await backend.outbox.watermark(id)
    owns = true
    const ended = next.core.claimed(id)
    // A change ordered by the new owner while its takeover has not read the log yet.
    sendMessage(b.doc, bob, { id: "after-claim001" as MessageId, body: "three" })
    await b.settled()
    try {
      await next.core.tookOver(id, recordedThrough !== undefined ? { recordedThrough } : {})
    } finally {
      ended()
    }
    await next.runtime.idle()
    // Before: "before-claim01" went unrecorded (the new owner's own record moved the watermark past it),
    // or, recorded late by the relay that lost the document, came after "after-claim001".
    expect(sentIds(events)).toEqual(["before-claim01", "after-claim001"])
    const logged = await backend.events.read({ types: ["message.sent"], limit: 10 })
    expect(sentIds(logged.map((e) => e.event))).toEqual([
      "first-message1",
      "before-claim01",
      "after-claim001",
    ])
    expect(await backend.outbox.pending()).toEqual([])
  })

  it("delivers what the last owner recorded and left undelivered before the changes it orders meanwhile", async () => {
    const backend = new MemoryBackend()
    cleanup.push(() => backend.close())
    const id = "g~claimed-02" as ConversationId
    // The relay that loses the document records its last change, and ends before delivering it.
    let unheard = false
    const silent = new Proxy(backend.outbox, {
      get(target, property) {
        if (property === "close") return async () => undefined
        const value = Reflect.get(target, property, target)
        if (property === "enqueue")
          return async (batch: Parameters<Outbox["enqueue"]>[0]) => {
            const added = await target.enqueue(batch)
            return unheard ? [] : added
          }
        return typeof value === "function" ? value.bind(target) : value
      },
    })
    const owner = await coreWithHooks({
      storage: backend.documents,
      outbox: silent,
      hooks: [{ name: "record.ts", path: "record.ts", hooks: recordingHooks().hooks }],
    })
    cleanup.push(() => owner.core.close())
    const a = new InProcessClient(owner.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    await a.settled()
    await owner.runtime.idle()
    unheard = true
    sendMessage(a.doc, alice, { id: "left-owed0001" as MessageId, body: "one" })
    await a.settled()
    await owner.runtime.idle()

    let owns = false
    const { hooks, events } = recordingHooks()
    // Only what it orders is its to deliver (as a cluster's `ownedOutbox`), and the takeover's read of
    // the document's lanes takes a moment, as a database's does.
    const slowLanes = new Proxy(backend.outbox, {
      get(target, property) {
        if (property === "close") return async () => undefined
        const value = Reflect.get(target, property, target)
        if (property === "pendingLanes")
          return async (document?: string) => {
            await new Promise((r) => setTimeout(r, 50))
            return owns ? target.pendingLanes(document) : []
          }
        return typeof value === "function" ? value.bind(target) : value
      },
    })
    const next = await coreWithHooks({
      storage: backend.documents,
      outbox: slowLanes,
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      router: localRouter(() => owns),
    })
    cleanup.push(() => next.core.close())
    const b = new InProcessClient(next.core, id, bob)
    await b.connect()
    const recordedThrough = await backend.outbox.watermark(id)
    owns = true
    const ended = next.core.claimed(id)
    sendMessage(b.doc, bob, { id: "after-claim002" as MessageId, body: "two" })
    await b.settled()
    try {
      await next.core.tookOver(id, recordedThrough !== undefined ? { recordedThrough } : {})
    } finally {
      ended()
    }
    await next.runtime.idle()
    // Before: the change ordered meanwhile went out first, in a lane made for it, and the owed one
    // after it, once the takeover had read the outbox.
    expect(sentIds(events)).toEqual(["left-owed0001", "after-claim002"])
    expect(await backend.outbox.pending()).toEqual([])
  })
})

/** Stores, behind the relays' back, `user`'s message as the next log entry: saved, then its relay died before numbering it. */
async function savedUnnumbered(storage: RelayStorage, name: string, user: UserId, message: string) {
  const replica = new Y.Doc()
  const stored = await storage.load(name)
  if (stored.snapshot) Y.applyUpdate(replica, stored.snapshot)
  for (const { update } of stored.updates) Y.applyUpdate(replica, update)
  const before = Y.encodeStateVector(replica)
  sendMessage(replica, user, { id: message as MessageId, body: "saved, then the relay died" })
  await storage.append(name, [Y.encodeStateAsUpdate(replica, before)])
}

describe("a conversation taken over with a message the last owner stored but did not number", () => {
  it("has the message numbered and its events recorded and delivered by the new owner at once, nobody connected", async () => {
    const backend = new MemoryBackend()
    cleanup.push(() => backend.close())
    const id = "g~unnumbered-1" as ConversationId
    const owner = await coreWithHooks({
      storage: backend.documents,
      outbox: backend.outbox,
      hooks: [{ name: "record.ts", path: "record.ts", hooks: recordingHooks().hooks }],
    })
    cleanup.push(() => owner.core.close())
    const a = new InProcessClient(owner.core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { id: "first-message1" as MessageId, body: "one" })
    await a.settled()
    await owner.runtime.idle()
    await savedUnnumbered(backend.documents, id, bob, "unnumbered-001")

    // The next owner claims the quiet conversation (its sweep found it behind): nobody has it open there.
    // Its start recovered nothing of it: as in a cluster, only what a relay orders is its to recover.
    let owns = false
    const { hooks, events } = recordingHooks()
    const next = await coreWithHooks({
      storage: backend.documents,
      outbox: ownedOutbox(backend.outbox, () => owns),
      hooks: [{ name: "record.ts", path: "record.ts", hooks }],
      router: localRouter(() => owns),
    })
    cleanup.push(() => next.core.close())
    const recordedThrough = await backend.outbox.watermark(id)
    owns = true
    const ended = next.core.claimed(id)
    try {
      await next.core.tookOver(id, recordedThrough !== undefined ? { recordedThrough } : {})
    } finally {
      ended()
    }
    await next.runtime.idle()
    // Before: the events waited in memory for the conversation's next change, which may never come.
    const numbered = (list: readonly HookEvent[]) =>
      list
        .filter((e) => e.event.type === "message.sent")
        .map((e) => (e.subject as { message: { id: string; seq?: number } }).message)
        .map((m) => [m.id, m.seq])
    expect(numbered(events)).toEqual([["unnumbered-001", 2]])
    const logged = await backend.events.read({ types: ["message.sent"], limit: 10 })
    expect(numbered(logged.map((e) => e.event))).toEqual([
      ["first-message1", 1],
      ["unnumbered-001", 2],
    ])
    expect(await backend.outbox.behind()).toEqual([])
  })
})
