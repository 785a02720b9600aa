import { afterEach, beforeEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { Backend } from "../../src/backend/types.js"
import {
  directoryPageIndex,
  epochRecordIndex,
  FOLD_DIRECTORY_INDEX,
  foldedReactionsIndex,
} from "../../src/history/store.js"
import type { HookEvent } from "../../src/hooks/events.js"
import type { RelayStorage } from "../../src/storage/types.js"
import { runApiKeyStoreConformance } from "./api-keys.js"
import { runBindingStoreConformance } from "./bindings.js"
import { runBlobStoreConformance } from "./blob-store.js"
import { runEventLogConformance, type StoredFootprint } from "./event-log.js"
import { runIdempotencyStoreConformance } from "./idempotency.js"
import { runOutboxConformance, sampleEvent } from "./outbox.js"
import { runPushSubscriptionStoreConformance } from "./push-subscriptions.js"
import { runStorageConformance, type StorageTamper } from "./storage.js"

/**
 * What a backend under test provides: `open` gives a backend over the same
 * underlying data each time it is called (to test a reopen), `cleanup`
 * removes that data. Each call of the suite's `setup` must give empty data.
 */
export interface BackendHarness {
  open(): Promise<Backend>
  cleanup?(): Promise<void>
  /** True when the backend keeps data across a reopen. */
  readonly persistent: boolean
  /** Damages the documents behind the backend's back. */
  readonly tamper: StorageTamper
  /** What the tables hold of stored hook events and member lists (durable backends). */
  footprint?(): Promise<StoredFootprint>
}

/**
 * The one suite every {@link Backend} passes (memory, SQLite, PostgreSQL):
 * its documents, outbox and bindings each against their part of the suite,
 * then the backend as a whole.
 */
export function runBackendConformance(name: string, setup: () => Promise<BackendHarness>): void {
  runStorageConformance(name, async () => {
    const harness = await setup()
    return {
      open: async () => documentsOf(await harness.open()),
      persistent: harness.persistent,
      tamper: harness.tamper,
      ...(harness.cleanup ? { cleanup: harness.cleanup } : {}),
    }
  })

  runOutboxConformance(name, async () => {
    const { open, cleanup, persistent } = await opener(setup)
    const first = await open()
    return {
      outbox: first.outbox,
      ...(persistent ? { reopen: async () => (await open()).outbox } : {}),
      cleanup,
    }
  })

  runEventLogConformance(name, async () => {
    const { open, cleanup, persistent, footprint } = await opener(setup)
    const first = await open()
    return {
      parts: { outbox: first.outbox, events: first.events },
      ...(persistent
        ? {
            reopen: async () => {
              const again = await open()
              return { outbox: again.outbox, events: again.events }
            },
          }
        : {}),
      ...(footprint ? { footprint } : {}),
      cleanup,
    }
  })

  runBindingStoreConformance(name, async () => {
    const { open, cleanup, persistent } = await opener(setup)
    const first = await open()
    return {
      store: first.bindings,
      reopen: async () => (persistent ? (await open()).bindings : first.bindings),
      cleanup,
    }
  })

  runApiKeyStoreConformance(name, async () => {
    const { open, cleanup, persistent } = await opener(setup)
    const first = await open()
    return {
      store: first.keys,
      reopen: async () => (persistent ? (await open()).keys : first.keys),
      cleanup,
    }
  })

  runIdempotencyStoreConformance(name, async () => {
    const { open, cleanup, persistent } = await opener(setup)
    const first = await open()
    return {
      store: first.idempotency,
      reopen: async () => (persistent ? (await open()).idempotency : first.idempotency),
      cleanup,
    }
  })

  runPushSubscriptionStoreConformance(name, async () => {
    const { open, cleanup, persistent } = await opener(setup)
    const first = await open()
    return {
      store: first.pushSubscriptions,
      reopen: async () => (persistent ? (await open()).pushSubscriptions : first.pushSubscriptions),
      cleanup,
    }
  })

  // The backend's own blob store: files in its data directory, rows in its database, or memory.
  runBlobStoreConformance(name, async () => {
    const { open, cleanup, persistent } = await opener(setup)
    const first = await open()
    return {
      store: first.blobs,
      reopen: async () => (persistent ? (await open()).blobs : first.blobs),
      cleanup,
    }
  })

  describe(`backend conformance: ${name}`, () => {
    let harness: BackendHarness
    let backend: Backend
    beforeEach(async () => {
      harness = await setup()
      backend = await harness.open()
    })
    afterEach(async () => {
      await backend.close().catch(() => {})
      await harness.cleanup?.()
    })

    it("keeps its outbox and bindings usable after its documents closed, until the backend closes", async () => {
      // The relay's shutdown order: the core closes the documents, then hooks record their last events.
      await backend.documents.append("g~a", [update("x")])
      await backend.documents.close()
      const [delivery] = await backend.outbox.enqueue({
        document: "c~a",
        events: [{ event: sampleEvent("e1"), targets: ["t"] }],
      })
      await backend.outbox.delivered(delivery!.seq, "t")
      await backend.bindings.bind("g~a", [[7, "user:alice"]])
      expect(await backend.outbox.pending()).toEqual([])
      await backend.outbox.close()
      await backend.close()
      await expect(backend.documents.load("g~a")).rejects.toThrow()
    })

    it("keeps documents, outbox and bindings together across a reopen", async () => {
      if (!harness.persistent) return
      const [position] = await backend.documents.append("g~kept", [update("hello")])
      await backend.outbox.enqueue({
        document: "c~kept",
        events: [{ event: sampleEvent("e1"), targets: ["t"] }],
        through: 3,
      })
      await backend.bindings.bind("g~kept", [[42, "user:bob"]])
      await backend.close()

      backend = await harness.open()
      const stored = await backend.documents.load("g~kept")
      expect(stored.updates.map((u) => u.position)).toEqual([position])
      expect(stored.record?.lastPosition).toBe(position)
      expect((await backend.outbox.pending()).map((d) => [d.event.event.id, d.target])).toEqual([["e1", "t"]])
      expect(await backend.outbox.watermark("c~kept")).toBe(3)
      expect(await backend.bindings.load("g~kept")).toEqual(new Map([[42, "user:bob"]]))
    })

    it("lists the documents whose stored log runs past their hook watermark, and only those", async () => {
      // Events recorded through the end of the log: nothing owed.
      await backend.documents.append("g~done", [update("a"), update("b")])
      await backend.outbox.enqueue({ document: "g~done", events: [], through: 2 })
      // Saved past the watermark (a crash before its events were recorded): owed.
      await backend.documents.append("g~owed", [update("a"), update("b"), update("c")])
      await backend.outbox.enqueue({ document: "g~owed", events: [], through: 1 })
      await backend.documents.append("g~Also", [update("a")])
      await backend.outbox.enqueue({ document: "g~Also", events: [], through: 0 })
      // Never loaded with hooks (no watermark): not the sweep's to load.
      await backend.documents.append("g~nomark", [update("a")])
      // A watermark without a stored document.
      await backend.outbox.enqueue({ document: "g~empty", events: [], through: 0 })
      expect(await backend.outbox.behind()).toEqual(["g~Also", "g~owed"])

      await backend.outbox.enqueue({ document: "g~owed", events: [], through: 3 })
      await backend.documents.append("g~done", [update("c")])
      expect(await backend.outbox.behind()).toEqual(["g~Also", "g~done"])

      // A snapshot alone (the log folded into it) leaves no entry to derive events from.
      await backend.documents.compact("g~Also", update("a"), 1)
      expect(await backend.outbox.behind()).toEqual(["g~done"])
      if (!harness.persistent) return
      await backend.close()
      backend = await harness.open()
      expect(await backend.outbox.behind()).toEqual(["g~done"])
    })

    it("purges (when it keeps anything on disk): redacts one conversation's stored hook events and drops its segments, nothing else", async () => {
      const purge = backend.purge
      // The memory backend keeps nothing beyond the process: the relay purges its documents only.
      if (!purge) return
      const sent = (id: string, conversation: string, messageId: string, body: string): HookEvent =>
        ({
          ...sampleEvent(id, conversation),
          event: { ...sampleEvent(id, conversation).event, type: "message.sent" },
          subject: {
            message: {
              id: messageId,
              author: "alice",
              body,
              type: "text",
              createdAt: 1,
              attachments: [],
              metadata: {},
            },
          },
        }) as unknown as HookEvent
      const edited = (id: string, conversation: string, messageId: string, body: string): HookEvent =>
        ({
          ...sampleEvent(id, conversation),
          event: { ...sampleEvent(id, conversation).event, type: "message.edited" },
          subject: { messageId, body, editedAt: 2 },
        }) as unknown as HookEvent
      await backend.outbox.enqueue({
        document: "g~gone",
        events: [
          { event: sent("e1", "g~gone", "m1", "Conf-Secret-One"), targets: ["t"] },
          { event: sent("e2", "g~gone", "m2", "Conf-Kept-Two"), targets: ["t"] },
          // Logged only: the edit of m1 is in the event log, not owed to any target.
          { event: edited("e4", "g~gone", "m1", "Conf-Secret-Edit"), targets: [] },
        ],
      })
      await backend.outbox.enqueue({
        document: "g~other",
        events: [{ event: sent("e3", "g~other", "m1", "Conf-Other"), targets: ["t"] }],
      })
      await backend.history.put("g~gone", { index: 0, from: 1, to: 10, hash: "h", bytes: new Uint8Array(8) })
      // A directory page of folded history (index −1) goes with the conversation's segments.
      await backend.history.put("g~gone", { index: -1, from: 1, to: 10, hash: "d", bytes: new Uint8Array(8) })
      await backend.history.put("g~other", { index: 0, from: 1, to: 10, hash: "h", bytes: new Uint8Array(8) })
      await backend.history.putIdFilter("g~gone", 0, new Uint8Array(8).fill(1))
      await backend.history.putIdFilter("g~other", 0, new Uint8Array(8).fill(2))
      const stored = async () =>
        JSON.stringify([
          (await backend.outbox.pending()).map((d) => d.event),
          (await backend.events.read({ limit: 100 })).map((e) => e.event),
        ])

      await purge.redactEvents("g~gone", "g~gone", { kind: "messages", ids: new Set(["m1"]) })
      expect(await stored()).not.toContain("Conf-Secret-One")
      expect(await stored()).not.toContain("Conf-Secret-Edit")
      expect(await stored()).toContain("Conf-Kept-Two")
      await purge.redactEvents("g~gone", "g~gone", { kind: "conversation" })
      await purge.dropSegments("g~gone")
      await purge.scrub()
      expect(await stored()).not.toContain("Conf-Kept-Two")
      // Only what was said goes: the events themselves, and everything of other conversations, stay.
      expect(await stored()).toContain("Conf-Other")
      expect((await backend.outbox.pending()).map((d) => d.event.event.id).sort()).toEqual(["e1", "e2", "e3"])
      expect(await backend.history.all("g~gone")).toEqual([])
      expect(await backend.history.get("g~gone", -1)).toBeNull()
      expect(await backend.history.all("g~other")).toHaveLength(1)
      // The segments' id filters go with them.
      expect(await backend.history.idFilters("g~gone", 0)).toEqual([])
      expect(await backend.history.idFilters("g~other", 0)).toHaveLength(1)
    })

    it("forgets an erased user's name and picture on one conversation's stored hook events, and nothing else", async () => {
      const purge = backend.purge
      if (!purge) return
      const by = (id: string, conversation: string, user: string, name: string): HookEvent =>
        ({
          ...sampleEvent(id, conversation),
          event: {
            ...sampleEvent(id, conversation).event,
            type: "document.updated",
            actor: { kind: "user", user, name },
          },
          subject: {
            changes: [
              {
                type: "profile.updated",
                user,
                profile: { user, name, picture: `https://x.test/${name}.png` },
              },
              { type: "message.sent", message: { id: `m-${id}`, author: user, body: `Body-${id}` } },
            ],
            positions: [],
          },
        }) as unknown as HookEvent
      await backend.outbox.enqueue({
        document: "g~erased",
        events: [
          { event: by("u1", "g~erased", "alice", "Conf-Alice-Name"), targets: ["t"] },
          { event: by("u2", "g~erased", "bob", "Conf-Bob-Name"), targets: [] },
        ],
      })
      await backend.outbox.enqueue({
        document: "g~elsewhere",
        events: [{ event: by("u3", "g~elsewhere", "alice", "Conf-Alice-Elsewhere"), targets: ["t"] }],
      })
      const stored = async () =>
        JSON.stringify([
          (await backend.outbox.pending()).map((d) => d.event),
          (await backend.events.read({ limit: 100 })).map((e) => e.event),
        ])
      expect(await stored()).toContain("Conf-Alice-Name")
      await purge.redactEvents("g~erased", "g~erased", { kind: "user", user: "alice" })
      const after = await stored()
      expect(after).not.toContain("Conf-Alice-Name")
      // Her messages go by their own purge (as deleted messages); other users and conversations stay.
      expect(after).toContain("Body-u1")
      expect(after).toContain("Conf-Bob-Name")
      expect(after).toContain("Conf-Alice-Elsewhere")
      expect((await backend.outbox.pending()).map((d) => d.event.event.id).sort()).toEqual(["u1", "u3"])
    })

    it("records the documents that may owe a purge until each is paid, across a restart", async () => {
      const purge = backend.purge
      if (!purge) return
      expect(await purge.owed()).toEqual([])
      await purge.owe("g~first")
      await purge.owe("g~second")
      // Owed twice, recorded once.
      await purge.owe("g~first")
      expect((await purge.owed()).sort()).toEqual(["g~first", "g~second"])
      await purge.paid("g~first")
      // Paying what is not owed is no error.
      await purge.paid("g~never")
      expect(await purge.owed()).toEqual(["g~second"])
      if (!harness.persistent) return
      await backend.close()
      backend = await harness.open()
      expect(await backend.purge!.owed()).toEqual(["g~second"])
    })

    it("stores sealed history segments once, returns them byte for byte per document, and replaces an unreferenced one", async () => {
      const segment = (index: number, fill: number) => ({
        index,
        from: index * 10 + 1,
        to: index * 10 + 10,
        hash: `h${index}-${fill}`,
        bytes: new Uint8Array(64).fill(fill),
      })
      expect(await backend.history.get("g~hist", 0)).toBeNull()
      expect(await backend.history.all("g~hist")).toEqual([])
      await backend.history.put("g~hist", segment(1, 2))
      await backend.history.put("g~hist", segment(0, 1))
      await backend.history.put("g~other", segment(0, 9))
      expect(await backend.history.get("g~hist", 0)).toEqual(segment(0, 1))
      expect((await backend.history.all("g~hist")).map((s) => [s.index, s.hash])).toEqual([
        [0, "h0-1"],
        [1, "h1-2"],
      ])
      // What a caller does with the bytes it got does not reach the store.
      ;(await backend.history.get("g~hist", 0))!.bytes.fill(7)
      expect((await backend.history.get("g~hist", 0))!.bytes[0]).toBe(1)
      // A crash between storing a segment and naming it leaves one the next sealing rewrites.
      await backend.history.put("g~hist", segment(0, 3))
      expect(await backend.history.get("g~hist", 0)).toEqual(segment(0, 3))
      expect(await backend.history.get("g~other", 0)).toEqual(segment(0, 9))
      // Directory pages live beside the segments under negative indexes: read one by one, never listed by all().
      await backend.history.put("g~hist", segment(-1, 4))
      expect(await backend.history.get("g~hist", -1)).toEqual(segment(-1, 4))
      // So do epoch records, the fold directory and the reactions each segment folded, at the far ends of a
      // 32-bit index.
      const far = [
        epochRecordIndex(5),
        FOLD_DIRECTORY_INDEX,
        foldedReactionsIndex(0),
        foldedReactionsIndex(147_000_000),
      ]
      for (const [i, index] of far.entries())
        await backend.history.put("g~hist", { ...segment(0, 5 + i), index })
      for (const [i, index] of far.entries())
        expect(await backend.history.get("g~hist", index)).toEqual({ ...segment(0, 5 + i), index })
      expect((await backend.history.all("g~hist")).map((s) => s.index)).toEqual([0, 1])
      if (!harness.persistent) return
      await backend.close()
      backend = await harness.open()
      expect(await backend.history.get("g~hist", 1)).toEqual(segment(1, 2))
    })

    it("stores each segment's id filter, replaces it, and lists a document's from an index on, without the segments", async () => {
      const filter = (fill: number) => new Uint8Array(40).fill(fill)
      expect(await backend.history.idFilters("g~ids", 0)).toEqual([])
      await backend.history.putIdFilter("g~ids", 2, filter(3))
      await backend.history.putIdFilter("g~ids", 0, filter(1))
      await backend.history.putIdFilter("g~ids", 1, filter(2))
      await backend.history.putIdFilter("g~ids-other", 0, filter(9))
      expect(await backend.history.idFilters("g~ids", 0)).toEqual([
        { index: 0, bytes: filter(1) },
        { index: 1, bytes: filter(2) },
        { index: 2, bytes: filter(3) },
      ])
      expect((await backend.history.idFilters("g~ids", 1)).map((f) => f.index)).toEqual([1, 2])
      // Written again (a seal that crashed before its segment was named, then sealed again): replaced.
      await backend.history.putIdFilter("g~ids", 2, filter(4))
      ;(await backend.history.idFilters("g~ids", 2))[0]!.bytes.fill(7)
      expect(await backend.history.idFilters("g~ids", 2)).toEqual([{ index: 2, bytes: filter(4) }])
      expect(await backend.history.idFilters("g~ids-other", 0)).toEqual([{ index: 0, bytes: filter(9) }])
      if (!harness.persistent) return
      await backend.close()
      backend = await harness.open()
      expect((await backend.history.idFilters("g~ids", 0)).map((f) => f.index)).toEqual([0, 1, 2])
    })

    it("stores one turn of sealing (segments, a directory page, their id filters) in one write, readable as if put one by one", async () => {
      const row = (index: number, fill: number) => ({
        index,
        from: Math.max(0, index) * 10 + 1,
        to: Math.max(0, index) * 10 + 10,
        hash: `s${index}-${fill}`,
        bytes: new Uint8Array(48).fill(fill),
      })
      const filter = (fill: number) => new Uint8Array(40).fill(fill)
      // Written before (a seal that crashed before the live document named it): replaced.
      await backend.history.put("g~sealed", row(1, 9))
      await backend.history.putIdFilter("g~sealed", 1, filter(9))
      await backend.history.putSealed("g~sealed", {
        segments: [row(0, 1), row(1, 2), row(directoryPageIndex(0), 3)],
        idFilters: [
          { index: 0, bytes: filter(1) },
          { index: 1, bytes: filter(2) },
        ],
      })
      expect(await backend.history.all("g~sealed")).toEqual([row(0, 1), row(1, 2)])
      expect(await backend.history.get("g~sealed", directoryPageIndex(0))).toEqual(
        row(directoryPageIndex(0), 3),
      )
      expect(await backend.history.idFilters("g~sealed", 0)).toEqual([
        { index: 0, bytes: filter(1) },
        { index: 1, bytes: filter(2) },
      ])
      if (!harness.persistent) return
      await backend.close()
      backend = await harness.open()
      expect((await backend.history.all("g~sealed")).map((s) => s.hash)).toEqual(["s0-1", "s1-2"])
      expect((await backend.history.idFilters("g~sealed", 0)).map((f) => f.index)).toEqual([0, 1])
    })

    it("closes once, however often it is asked to", async () => {
      await backend.close()
      await backend.close()
    })
  })
}

function update(text: string): Uint8Array {
  const doc = new Y.Doc()
  doc.getArray<string>("a").push([text])
  return Y.encodeStateAsUpdate(doc)
}

/** Opens backends over one harness's data; `cleanup` closes them all and removes the data. */
async function opener(setup: () => Promise<BackendHarness>) {
  const harness = await setup()
  const opened: Backend[] = []
  return {
    persistent: harness.persistent,
    ...(harness.footprint ? { footprint: () => harness.footprint!() } : {}),
    open: async () => {
      const backend = await harness.open()
      opened.push(backend)
      return backend
    },
    cleanup: async () => {
      for (const backend of opened) await backend.close()
      await harness.cleanup?.()
    },
  }
}

/** The backend's documents, closing the whole backend when the storage suite closes them. */
function documentsOf(backend: Backend): RelayStorage {
  const documents = backend.documents
  return new Proxy(documents, {
    get(target, property) {
      if (property === "close") return () => backend.close()
      const value = Reflect.get(target, property, target)
      return typeof value === "function" ? value.bind(target) : value
    },
  })
}
