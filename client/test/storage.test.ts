import "fake-indexeddb/auto"
import { describe, expect, it, vi } from "vitest"
import { IndexeddbPersistence } from "y-indexeddb"
import * as Y from "yjs"
import { persistDocument } from "../src/storage.js"

let next = 0
const uniqueName = () => `parley:storage-test:${process.pid}:${next++}`

/** Opens `name` in a fresh document, as a reload would, and returns what it holds. */
async function reload(name: string): Promise<Record<string, unknown>> {
  const doc = new Y.Doc()
  const replica = persistDocument("indexeddb", name, doc)
  await replica.loaded
  const content = doc.getMap("m").toJSON()
  await replica.destroy()
  doc.destroy()
  return content
}

describe("IndexedDB replicas", () => {
  it("keeps every update written after the load, and what was written before it, across a reload", async () => {
    const name = uniqueName()
    const doc = new Y.Doc()
    doc.getMap("m").set("before", "the database opened")
    const replica = persistDocument("indexeddb", name, doc)
    await replica.loaded
    for (let i = 0; i < 20; i++) doc.getMap("m").set(`k${i}`, i)
    await replica.destroy()
    const content = await reload(name)
    expect(content.before).toBe("the database opened")
    expect(Object.keys(content)).toHaveLength(21)
    expect(content.k19).toBe(19)
  })

  it("writes a burst of updates in one transaction, committed before destroy() resolves", async () => {
    const name = uniqueName()
    const doc = new Y.Doc()
    const replica = persistDocument("indexeddb", name, doc)
    await replica.loaded
    const transaction = vi.spyOn(IDBDatabase.prototype, "transaction")
    try {
      // A burst in one task, as messages written offline are: one transaction each took seconds to commit
      // in Chromium, and a tab closed meanwhile lost what had not (an outside probe: 1,763 of 2,000).
      for (let i = 0; i < 300; i++) doc.getMap("m").set(`k${i}`, i)
      await replica.destroy()
      expect(transaction.mock.calls.filter(([, mode]) => mode === "readwrite")).toHaveLength(1)
    } finally {
      transaction.mockRestore()
    }
    expect(Object.keys(await reload(name))).toHaveLength(300)
  })

  it("merges what two clients over the same database wrote", async () => {
    const name = uniqueName()
    const [a, b] = [new Y.Doc(), new Y.Doc()]
    const [ra, rb] = [persistDocument("indexeddb", name, a), persistDocument("indexeddb", name, b)]
    await Promise.all([ra.loaded, rb.loaded])
    a.getMap("m").set("from", "a")
    b.getMap("m").set("other", "b")
    await Promise.all([ra.destroy(), rb.destroy()])
    expect(await reload(name)).toMatchObject({ other: "b" })
    expect(Object.keys(await reload(name)).sort()).toEqual(["from", "other"])
  })

  it("compact() leaves a deleted value's text out of what is stored, keeping what was not deleted", async () => {
    const name = uniqueName()
    const doc = new Y.Doc()
    const replica = persistDocument("indexeddb", name, doc)
    await replica.loaded
    doc.getMap("m").set("gone", "a deleted secret")
    doc.getMap("m").set("kept", "still here")
    doc.getMap("m").delete("gone")
    await replica.compact()
    await replica.destroy()
    const db = await new Promise<IDBDatabase>((resolve) => {
      const request = indexedDB.open(name)
      request.onsuccess = () => resolve(request.result)
    })
    const rows = await new Promise<Uint8Array[]>((resolve) => {
      const request = db.transaction("updates").objectStore("updates").getAll()
      request.onsuccess = () => resolve(request.result as Uint8Array[])
    })
    db.close()
    const text = rows.map((row) => Buffer.from(row).toString("latin1")).join()
    expect(text).not.toContain("a deleted secret")
    expect(text).toContain("still here")
    expect(await reload(name)).toEqual({ kept: "still here" })
  })

  it("replaceWith leaves exactly the given state, and later writes build on it", async () => {
    const name = uniqueName()
    const doc = new Y.Doc()
    const replica = persistDocument("indexeddb", name, doc)
    await replica.loaded
    doc.getMap("m").set("refused", "work")
    const fresh = new Y.Doc()
    fresh.getMap("m").set("rebuilt", true)
    await replica.replaceWith(Y.encodeStateAsUpdate(fresh))
    await replica.destroy()
    expect(await reload(name)).toEqual({ rebuilt: true })
  })

  it("stops writing, and says so once, when another client over the database replaced what is stored", async () => {
    const name = uniqueName()
    const [stale, rebuilding] = [new Y.Doc(), new Y.Doc()]
    let told = 0
    const staleReplica = persistDocument("indexeddb", name, stale, undefined, () => told++)
    const other = persistDocument("indexeddb", name, rebuilding)
    await Promise.all([staleReplica.loaded, other.loaded])
    stale.getMap("m").set("before", "the replacement")
    const fresh = new Y.Doc()
    fresh.getMap("m").set("rebuilt", true)
    await other.replaceWith(Y.encodeStateAsUpdate(fresh))
    // Written on the replaced state: never stored, whether or not the notice came first.
    stale.getMap("m").set("after", "the replacement")
    stale.getMap("m").set("again", "after")
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(told).toBe(1)
    expect(staleReplica.generation).not.toBe(other.generation)
    await Promise.all([staleReplica.destroy(), other.destroy()])
    expect(await reload(name)).toEqual({ rebuilt: true })
    // A client loading now holds the new generation and writes on it.
    const next = new Y.Doc()
    const nextReplica = persistDocument("indexeddb", name, next)
    await nextReplica.loaded
    expect(nextReplica.generation).toBe(other.generation)
    next.getMap("m").set("later", 1)
    await nextReplica.destroy()
    expect(await reload(name)).toEqual({ rebuilt: true, later: 1 })
  })

  it("loads a replica that y-indexeddb stored (SDK versions before the SDK's own storage)", async () => {
    const name = uniqueName()
    const old = new Y.Doc()
    const persistence = new IndexeddbPersistence(name, old)
    await persistence.whenSynced
    old.getMap("m").set("stored by", "y-indexeddb")
    old.getText("t").insert(0, "pending offline work")
    // y-indexeddb writes each update in a transaction of its own; its destroy waits for none.
    await new Promise((resolve) => setTimeout(resolve, 50))
    await persistence.destroy()
    const doc = new Y.Doc()
    const replica = persistDocument("indexeddb", name, doc)
    await replica.loaded
    expect(doc.getMap("m").get("stored by")).toBe("y-indexeddb")
    expect(doc.getText("t").toString()).toBe("pending offline work")
    await replica.destroy()
  })

  it("merges stored updates into one after 500 writes, keeping them all", async () => {
    const name = uniqueName()
    const doc = new Y.Doc()
    const replica = persistDocument("indexeddb", name, doc)
    await replica.loaded
    for (let i = 0; i < 600; i++) doc.getArray("a").push([i])
    // The merge runs a second after the 500th write.
    await new Promise((resolve) => setTimeout(resolve, 1300))
    await replica.destroy()
    const count = await new Promise<number>((resolve, reject) => {
      const request = indexedDB.open(name)
      request.onsuccess = () => {
        const db = request.result
        const counting = db.transaction("updates").objectStore("updates").count()
        counting.onsuccess = () => {
          db.close()
          resolve(counting.result)
        }
        counting.onerror = () => reject(counting.error)
      }
    })
    expect(count).toBeLessThan(100)
    const reloaded = new Y.Doc()
    const again = persistDocument("indexeddb", name, reloaded)
    await again.loaded
    expect(reloaded.getArray("a").toArray()).toEqual([...Array(600).keys()])
    await again.destroy()
  })

  it("reports, without throwing, a background merge on a database another tab deleted meanwhile", async () => {
    const name = uniqueName()
    const doc = new Y.Doc()
    const errors: unknown[] = []
    const replica = persistDocument("indexeddb", name, doc, (error) => errors.push(error))
    await replica.loaded
    for (let i = 0; i < 600; i++) doc.getArray("a").push([i])
    // Another tab signs the user out (deleteLocalData): the database closes under this replica.
    await new Promise<void>((resolve, reject) => {
      const deleting = indexedDB.deleteDatabase(name)
      deleting.onsuccess = () => resolve()
      deleting.onerror = () => reject(deleting.error)
    })
    const uncaught: unknown[] = []
    const onUncaught = (error: unknown) => uncaught.push(error)
    process.on("uncaughtException", onUncaught)
    try {
      // The merge is due a second after the 500th write.
      await new Promise((resolve) => setTimeout(resolve, 1300))
    } finally {
      process.off("uncaughtException", onUncaught)
    }
    expect(uncaught).toEqual([])
    expect(errors.length).toBeGreaterThan(0)
    await replica.destroy()
  })
})
