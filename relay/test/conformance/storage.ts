import { ErrorCode } from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { findDamage, loadVerified } from "../../src/storage/integrity.js"
import type { RelayStorage } from "../../src/storage/types.js"

/**
 * Damage done to a backend's data behind its back (a bad page, lost WAL
 * frames, a row deleted by hand), leaving its catalog alone.
 */
export interface StorageTamper {
  /** Deletes the log entries at `positions`. */
  deleteUpdates(name: string, positions: readonly number[]): Promise<void>
  /** Overwrites the bytes of the log entry at `position`. */
  overwriteUpdate(name: string, position: number, bytes: Uint8Array): Promise<void>
  /** Overwrites the bytes of the snapshot. */
  overwriteSnapshot(name: string, bytes: Uint8Array): Promise<void>
  /** Deletes the snapshot and every log entry of the document. */
  deleteData(name: string): Promise<void>
}

/**
 * What a backend under test provides: `open` gives a storage over the same
 * underlying data each time it is called (to test a reopen), `cleanup` removes it.
 */
export interface StorageHarness {
  open(): Promise<RelayStorage>
  cleanup?(): Promise<void>
  /** True when the backend keeps data across a reopen. */
  readonly persistent: boolean
  readonly tamper: StorageTamper
}

const bytes = (...values: number[]) => new Uint8Array(values)
const texts = (doc: Y.Doc) => doc.getArray<string>("a").toArray()

function loadDoc(stored: Awaited<ReturnType<RelayStorage["load"]>>): Y.Doc {
  const doc = new Y.Doc()
  if (stored.snapshot) Y.applyUpdate(doc, stored.snapshot)
  for (const { update } of stored.updates) Y.applyUpdate(doc, update)
  return doc
}

/**
 * The one suite every {@link RelayStorage} backend passes (memory, SQLite,
 * PostgreSQL). Each test uses fresh document names so that backends sharing a
 * database do not see each other's data.
 */
export function runStorageConformance(name: string, setup: () => Promise<StorageHarness>): void {
  describe(`storage conformance: ${name}`, () => {
    let harness: StorageHarness
    let storage: RelayStorage
    let run = 0
    let doc: (suffix: string) => string

    beforeEach(async () => {
      harness = await setup()
      storage = await harness.open()
      const prefix = `t${Date.now().toString(36)}${(run++).toString(36)}${Math.random().toString(36).slice(2, 8)}`
      doc = (suffix) => `${prefix}-${suffix}`
    })
    afterEach(async () => {
      await storage.close().catch(() => {})
      await harness.cleanup?.()
    })

    it("loads an unknown document as empty, with no record: not created yet, not damaged", async () => {
      const stored = await storage.load(doc("none"))
      expect(stored).toMatchObject({ snapshot: null, through: 0, updates: [], record: null })
      expect(findDamage(stored)).toBeUndefined()
    })

    it("numbers a new document's log from 1 without gaps", async () => {
      expect(await storage.append(doc("numbers"), [bytes(1), bytes(2)])).toEqual([1, 2])
      expect(await storage.append(doc("numbers"), [bytes(3)])).toEqual([3])
    })

    it("returns appended updates in order with increasing positions", async () => {
      const a = await storage.append(doc("x"), [bytes(1), bytes(2)])
      const b = await storage.append(doc("x"), [bytes(3)])
      expect(a).toHaveLength(2)
      expect(a[1]!).toBeGreaterThan(a[0]!)
      expect(b[0]!).toBeGreaterThan(a[1]!)
      const loaded = await storage.load(doc("x"))
      expect(loaded.snapshot).toBeNull()
      expect(loaded.updates.map((u) => [...u.update])).toEqual([[1], [2], [3]])
      expect(loaded.updates.map((u) => u.position)).toEqual([...a, ...b])
    })

    it("lists every stored document, compacted or not", async () => {
      await storage.append(doc("b"), [bytes(1)])
      await storage.append(doc("a"), [bytes(2)])
      await storage.compact(doc("a"), bytes(9), 1)
      const names = await storage.list()
      expect(names.filter((n) => n === doc("a") || n === doc("b"))).toEqual([doc("a"), doc("b")])
    })

    it("finds the documents whose stored snapshot or log holds some bytes", async () => {
      // Optional for a storage of your own (the relay then loads and searches each document); ours have it.
      if (!storage.holding) throw new Error("no holding()")
      const needle = new TextEncoder().encode("needle-7Qz")
      const holding = new Uint8Array([1, 2, ...needle, 3])
      await storage.append(doc("in-log"), [bytes(1), holding])
      await storage.append(doc("in-snapshot"), [bytes(1)])
      await storage.compact(doc("in-snapshot"), holding, 1)
      await storage.append(doc("compacted-away"), [holding])
      await storage.compact(doc("compacted-away"), bytes(5), 1)
      await storage.append(doc("without"), [bytes(1, 2, 3)])
      const names = ["in-log", "in-snapshot", "compacted-away", "without", "never-stored"].map(doc)
      expect([...(await storage.holding(names, [needle]))].sort()).toEqual(
        [doc("in-log"), doc("in-snapshot")].sort(),
      )
      expect([...(await storage.holding(names, [bytes(200, 201), needle.slice(0, 4)]))].sort()).toEqual(
        [doc("in-log"), doc("in-snapshot")].sort(),
      )
      expect(await storage.holding(names, [bytes(250, 251, 252)])).toEqual(new Set())
      // A purge of a frame's thousands of deletions: as many needles, the one that matches last.
      const many = Array.from({ length: 1_500 }, (_, i) => new TextEncoder().encode(`absent-${i}-xyz`))
      expect([...(await storage.holding(names, [...many, needle]))].sort()).toEqual(
        [doc("in-log"), doc("in-snapshot")].sort(),
      )
    })

    it("keeps documents apart", async () => {
      await storage.append(doc("one"), [bytes(1)])
      await storage.append(doc("two"), [bytes(2)])
      expect((await storage.load(doc("one"))).updates.map((u) => [...u.update])).toEqual([[1]])
      expect((await storage.load(doc("two"))).updates.map((u) => [...u.update])).toEqual([[2]])
    })

    it("commits appends made concurrently, each with its own positions", async () => {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => storage.append(doc(`c${i % 3}`), [bytes(i)])),
      )
      for (let d = 0; d < 3; d++) {
        const loaded = await storage.load(doc(`c${d}`))
        const expected = results.flatMap((_, i) => (i % 3 === d ? [[i]] : []))
        expect(loaded.updates.map((u) => [...u.update])).toEqual(expected)
        const positions = loaded.updates.map((u) => u.position)
        expect([...positions].sort((x, y) => x - y)).toEqual(positions)
        expect(new Set(positions).size).toBe(positions.length)
      }
    })

    it("does not let a caller change stored bytes by reusing its buffer", async () => {
      const buffer = bytes(7, 7)
      const pending = storage.append(doc("copy"), [buffer])
      buffer[0] = 9
      await pending
      expect([...(await storage.load(doc("copy"))).updates[0]!.update]).toEqual([7, 7])
    })

    it("replaces compacted entries with the snapshot and keeps later ones", async () => {
      const source = new Y.Doc()
      const updates: Uint8Array[] = []
      source.on("update", (u: Uint8Array) => updates.push(u))
      for (const text of ["a", "b", "c", "d"]) source.getArray<string>("a").push([text])
      const positions = await storage.append(doc("snap"), updates.slice(0, 3))
      const snapshotDoc = new Y.Doc()
      for (const u of updates.slice(0, 3)) Y.applyUpdate(snapshotDoc, u)
      await storage.compact(doc("snap"), Y.encodeStateAsUpdate(snapshotDoc), positions[2]!)
      const later = await storage.append(doc("snap"), [updates[3]!])
      expect(later[0]!).toBeGreaterThan(positions[2]!)
      const loaded = await storage.load(doc("snap"))
      expect(loaded.snapshot).not.toBeNull()
      expect(loaded.updates.map((u) => u.position)).toEqual(later)
      expect(texts(loadDoc(loaded))).toEqual(["a", "b", "c", "d"])
    })

    it("compacts only up to the given position when more was appended meanwhile", async () => {
      const positions = await storage.append(doc("partial"), [bytes(1), bytes(2), bytes(3)])
      await storage.compact(doc("partial"), bytes(0, 0), positions[1]!)
      const loaded = await storage.load(doc("partial"))
      expect([...loaded.snapshot!]).toEqual([0, 0])
      expect(loaded.updates.map((u) => [...u.update])).toEqual([[3]])
    })

    it("keeps positions increasing after a compaction of the whole log", async () => {
      const first = await storage.append(doc("after"), [bytes(1)])
      await storage.compact(doc("after"), bytes(0, 0), first[0]!)
      const second = await storage.append(doc("after"), [bytes(2)])
      expect(second[0]!).toBeGreaterThan(first[0]!)
    })

    it("keeps everything appended and compacted across a reopen", async () => {
      if (!harness.persistent) return
      const positions = await storage.append(doc("reopen"), [bytes(1), bytes(2)])
      await storage.compact(doc("reopen"), bytes(0, 0), positions[0]!)
      await storage.append(doc("reopen"), [bytes(3)])
      await storage.close()
      storage = await harness.open()
      const loaded = await storage.load(doc("reopen"))
      expect([...loaded.snapshot!]).toEqual([0, 0])
      expect(loaded.updates.map((u) => [...u.update])).toEqual([[2], [3]])
      const more = await storage.append(doc("reopen"), [bytes(4)])
      expect(more[0]!).toBeGreaterThan(loaded.updates[1]!.position)
    })

    it("finishes pending appends on close", async () => {
      if (!harness.persistent) return
      const pending = storage.append(doc("closing"), [bytes(5)])
      await storage.close()
      await pending
      storage = await harness.open()
      expect((await storage.load(doc("closing"))).updates.map((u) => [...u.update])).toEqual([[5]])
    })

    describe("catalog and damage", () => {
      /** Three real Yjs updates appended, the first two compacted into a snapshot when `compacted`. */
      async function stored(name: string, options: { compacted?: boolean } = {}) {
        const source = new Y.Doc()
        const updates: Uint8Array[] = []
        source.on("update", (u: Uint8Array) => updates.push(u))
        for (const text of ["a", "b", "c", "d"]) source.getArray<string>("a").push([text])
        const positions = await storage.append(name, updates)
        if (options.compacted) {
          const snapshot = new Y.Doc()
          for (const u of updates.slice(0, 2)) Y.applyUpdate(snapshot, u)
          await storage.compact(name, Y.encodeStateAsUpdate(snapshot), positions[1]!)
        }
        return { positions, source }
      }
      const damageOf = async (name: string) => findDamage(await storage.load(name))

      it("records each document's last position with its appends and compactions", async () => {
        const { positions } = await stored(doc("rec"), { compacted: true })
        const loaded = await storage.load(doc("rec"))
        expect(loaded.through).toBe(positions[1])
        expect(loaded.record).toEqual({ lastPosition: positions[3], damaged: null })
        expect(findDamage(loaded)).toBeUndefined()
        expect(texts(loadVerified(loaded))).toEqual(["a", "b", "c", "d"])
      })

      it("keeps the record when every row of the data is lost, so the document is damaged, not new", async () => {
        await stored(doc("lost"), { compacted: true })
        await harness.tamper.deleteData(doc("lost"))
        const loaded = await storage.load(doc("lost"))
        expect(loaded.snapshot).toBeNull()
        expect(loaded.updates).toEqual([])
        expect(findDamage(loaded)).toMatch(/none of its data/)
      })

      it("finds a gap in the log", async () => {
        const { positions } = await stored(doc("gap"))
        await harness.tamper.deleteUpdates(doc("gap"), [positions[1]!])
        expect(await damageOf(doc("gap"))).toMatch(/gap/)
      })

      it("finds a gap between the snapshot and the log", async () => {
        const { positions } = await stored(doc("gap2"), { compacted: true })
        await harness.tamper.deleteUpdates(doc("gap2"), [positions[2]!])
        expect(await damageOf(doc("gap2"))).toMatch(/gap/)
      })

      it("finds a log that ends before the recorded last position", async () => {
        const { positions } = await stored(doc("tail"), { compacted: true })
        await harness.tamper.deleteUpdates(doc("tail"), positions.slice(2))
        expect(await damageOf(doc("tail"))).toMatch(/ends at position 2/)
      })

      it("hands back an update Yjs cannot apply as stored, which loading refuses as damaged", async () => {
        const { positions } = await stored(doc("garbage"), { compacted: true })
        const garbage = bytes(0xff, 0x13, 0x37, 0x00, 0x42)
        await harness.tamper.overwriteUpdate(doc("garbage"), positions[2]!, garbage)
        const loaded = await storage.load(doc("garbage"))
        expect([...loaded.updates[0]!.update]).toEqual([...garbage])
        expect(findDamage(loaded)).toMatch(/update at log position 3 does not match its checksum/)
        expect(() => loadVerified(loaded)).toThrow(
          expect.objectContaining({ code: ErrorCode.DAMAGED, message: expect.stringMatching(/position 3/) }),
        )
      })

      it("hands back a snapshot Yjs cannot decode as stored, which loading refuses as damaged", async () => {
        await stored(doc("badsnap"), { compacted: true })
        await harness.tamper.overwriteSnapshot(doc("badsnap"), bytes(0x05, 0xff, 0xff))
        const loaded = await storage.load(doc("badsnap"))
        expect(() => loadVerified(loaded)).toThrow(
          expect.objectContaining({ code: ErrorCode.DAMAGED, message: expect.stringMatching(/snapshot/) }),
        )
      })

      it("finds an entry and a snapshot whose bytes were replaced by other valid updates (that would apply cleanly)", async () => {
        const { positions } = await stored(doc("swapped"), { compacted: true })
        const other = new Y.Doc()
        other.getArray<string>("a").push(["forged"])
        const valid = Y.encodeStateAsUpdate(other)
        await harness.tamper.overwriteUpdate(doc("swapped"), positions[2]!, valid)
        const loaded = await storage.load(doc("swapped"))
        // Yjs takes it without complaint: only the checksum tells.
        Y.applyUpdate(new Y.Doc(), loaded.updates[0]!.update)
        expect(findDamage(loaded)).toMatch(/update at log position 3 does not match its checksum/)

        await stored(doc("swapped2"), { compacted: true })
        await harness.tamper.overwriteSnapshot(doc("swapped2"), valid)
        expect(await damageOf(doc("swapped2"))).toMatch(/snapshot does not match its checksum/)
      })

      it("records damage with its first reason, lists it, and keeps it across a reopen", async () => {
        await stored(doc("marked"))
        await storage.markDamaged(doc("marked"), "first reason")
        await storage.markDamaged(doc("marked"), "second reason")
        const listed = (await storage.damaged()).filter((d) => d.name === doc("marked"))
        expect(listed).toEqual([
          { name: doc("marked"), reason: "first reason", detectedAt: expect.any(Number), lastPosition: 4 },
        ])
        expect(await damageOf(doc("marked"))).toBe("first reason")
        if (!harness.persistent) return
        await storage.close()
        storage = await harness.open()
        expect(await damageOf(doc("marked"))).toBe("first reason")
        expect((await storage.damaged()).map((d) => d.name)).toContain(doc("marked"))
      })

      it("records the damage of a document it holds nothing of", async () => {
        await storage.markDamaged(doc("ghost"), "why")
        expect(await damageOf(doc("ghost"))).toBe("why")
      })

      it("restores a damaged document from a snapshot: damage cleared, positions keep increasing", async () => {
        const { positions, source } = await stored(doc("restore"))
        await harness.tamper.deleteUpdates(doc("restore"), positions.slice(1))
        await storage.markDamaged(doc("restore"), "lost its tail")
        const through = await storage.restore(doc("restore"), Y.encodeStateAsUpdate(source))
        expect(through).toBeGreaterThanOrEqual(positions[3]!)
        const loaded = await storage.load(doc("restore"))
        expect(loaded).toMatchObject({
          through,
          updates: [],
          record: { lastPosition: through, damaged: null },
        })
        expect(findDamage(loaded)).toBeUndefined()
        expect(texts(loadVerified(loaded))).toEqual(["a", "b", "c", "d"])
        expect((await storage.damaged()).map((d) => d.name)).not.toContain(doc("restore"))
        const [next] = await storage.append(doc("restore"), [bytes(1)])
        expect(next).toBe(through + 1)
        expect(await damageOf(doc("restore"))).toBeUndefined()
      })
    })
  })
}
