import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import { SQLITE_FILE, SqliteBackend } from "../../src/backend/sqlite.js"
import { sampleEvent } from "../conformance/outbox.js"

const dirs: string[] = []
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function open(): SqliteBackend {
  const dir = mkdtempSync(join(tmpdir(), "parley-outbox-rides-"))
  dirs.push(dir)
  return new SqliteBackend(dir)
}

/** Row counts of the outbox's tables, read through a connection of its own. */
function rows(): { events: number; deliveries: number } {
  const db = new Database(join(dirs.at(-1)!, SQLITE_FILE), { readonly: true })
  try {
    const count = (table: string) =>
      (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n
    return { events: count("hook_events"), deliveries: count("hook_deliveries") }
  } finally {
    db.close()
  }
}

describe("sqlite outbox riding in the documents' commits", () => {
  it("records events enqueued while a document append is due in that append's commit, in order", async () => {
    const backend = open()
    try {
      const appended = backend.documents.append("g~doc", [new Uint8Array([0, 0])])
      expect(backend.documents.commitScheduled).toBe(true)
      const first = backend.outbox.enqueue({
        document: "g~doc",
        events: [{ event: sampleEvent("e1"), targets: ["hook"] }],
        through: 1,
      })
      const second = backend.outbox.enqueue({
        document: "g~doc",
        events: [{ event: sampleEvent("e2"), targets: ["hook"] }],
        through: 2,
      })
      const [positions, a, b] = await Promise.all([appended, first, second])
      expect(positions).toEqual([1])
      expect(a[0]!.seq).toBeLessThan(b[0]!.seq)
      expect((await backend.outbox.pending()).map((d) => d.event.event.id)).toEqual(["e1", "e2"])
      expect(await backend.outbox.watermark("g~doc")).toBe(2)
    } finally {
      await backend.close()
    }
  })

  it("keeps events enqueued with no append due for the next append's commit, a moment later", async () => {
    const backend = open()
    try {
      let enqueueDone = false
      const enqueued = backend.outbox
        .enqueue({ document: "g~doc", events: [{ event: sampleEvent("e1"), targets: ["hook"] }], through: 1 })
        .then((deliveries) => {
          enqueueDone = true
          return deliveries
        })
      expect(backend.documents.commitScheduled).toBe(false)
      // A later turn: a transaction of the outbox's own would have committed by now.
      await new Promise((resolve) => setTimeout(resolve, 1))
      expect(enqueueDone).toBe(false)
      const appended = backend.documents.append("g~doc", [new Uint8Array([0, 0])])
      const [[delivery], positions] = await Promise.all([enqueued, appended])
      expect(positions).toEqual([1])
      expect(delivery!.event.event.id).toBe("e1")
      expect(await backend.outbox.watermark("g~doc")).toBe(1)
    } finally {
      await backend.close()
    }
  })

  it("commits waiting events on their own when no append comes", async () => {
    const backend = open()
    try {
      const [delivery] = await backend.outbox.enqueue({
        document: "g~doc",
        events: [{ event: sampleEvent("e1"), targets: ["hook"] }],
        through: 1,
      })
      expect(delivery!.event.event.id).toBe("e1")
      expect(backend.documents.commitScheduled).toBe(false)
    } finally {
      await backend.close()
    }
  })

  it("writes delivered marks with the next append's commit, and the event goes once its last target has it", async () => {
    const backend = open()
    try {
      const [a, b] = await backend.outbox.enqueue({
        document: "g~doc",
        events: [{ event: sampleEvent("e1"), targets: ["hook", "push"] }],
        through: 1,
      })
      let marked = false
      const marks = Promise.all([
        backend.outbox.delivered(a!.seq, a!.target),
        backend.outbox.delivered(b!.seq, b!.target),
      ]).then(() => {
        marked = true
      })
      await new Promise((resolve) => setTimeout(resolve, 1))
      expect(marked).toBe(false)
      await Promise.all([marks, backend.documents.append("g~doc", [new Uint8Array([0, 0])])])
      expect(await backend.outbox.pending()).toEqual([])
    } finally {
      await backend.close()
    }
  })

  it("keeps the targets owed on the event's row, and a row of its own only for a failed delivery", async () => {
    const backend = open()
    try {
      const [a, b] = await backend.outbox.enqueue({
        document: "g~doc",
        events: [
          { event: sampleEvent("e1"), targets: ["hook", "push"] },
          { event: sampleEvent("e2"), targets: ["hook", "push"] },
        ],
        through: 1,
      })
      expect(rows()).toEqual({ events: 2, deliveries: 0 })
      // Both targets of e1 at once: the event's row goes.
      await Promise.all([
        backend.outbox.delivered(a!.seq, a!.target),
        backend.outbox.delivered(b!.seq, b!.target),
      ])
      await backend.outbox.pending()
      expect(rows()).toEqual({ events: 1, deliveries: 0 })
      // e2: one target fails (a row of its own), the other succeeds, then the failed one.
      const e2 = (await backend.outbox.pending())[0]!.seq
      await backend.outbox.retryLater(e2, "push", 1, 5, "down")
      await backend.outbox.delivered(e2, "hook")
      await backend.outbox.pending()
      expect(rows()).toEqual({ events: 1, deliveries: 1 })
      await backend.outbox.delivered(e2, "push")
      expect(await backend.outbox.pending()).toEqual([])
      expect(rows()).toEqual({ events: 0, deliveries: 0 })
    } finally {
      await backend.close()
    }
  })

  it("loses none of the events enqueued while a document append that fails was due", async () => {
    const backend = open()
    try {
      // A document name SQLite refuses to bind (an object): the append's transaction rolls back.
      const failing = backend.documents.append({} as unknown as string, [new Uint8Array([0, 0])])
      const enqueued = backend.outbox.enqueue({
        document: "g~doc",
        events: [{ event: sampleEvent("e1"), targets: ["hook"] }],
        through: 1,
      })
      await expect(failing).rejects.toThrow()
      const [delivery] = await enqueued
      expect(delivery!.event.event.id).toBe("e1")
      expect((await backend.outbox.pending()).map((d) => d.event.event.id)).toEqual(["e1"])
    } finally {
      await backend.close()
    }
  })
})
