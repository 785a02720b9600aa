import Database from "better-sqlite3"
import { describe, expect, it } from "vitest"
import {
  type ClientBindingStore,
  MemoryClientBindingStore,
  SqliteClientBindingStore,
} from "../../src/policy/client-bindings.js"

/** One behaviour for every binding store. `reopen` gives a store over the same persisted data. */
function runBindingStoreConformance(
  name: string,
  setup: () => { store: ClientBindingStore; reopen: () => ClientBindingStore },
) {
  describe(`${name} client binding store`, () => {
    it("loads nothing for a document never bound", async () => {
      const { store } = setup()
      expect(await store.load("g~none")).toEqual(new Map())
    })

    it("keeps each id's first owner", async () => {
      const { store } = setup()
      await store.bind("g~a", [
        [1, "user:alice"],
        [2, "relay"],
      ])
      await store.bind("g~a", [
        [1, "user:mallory"],
        [3, "user:bob"],
      ])
      expect(await store.load("g~a")).toEqual(
        new Map([
          [1, "user:alice"],
          [2, "relay"],
          [3, "user:bob"],
        ]),
      )
    })

    it("keeps documents apart", async () => {
      const { store } = setup()
      await store.bind("g~a", [[7, "user:alice"]])
      await store.bind("g~b", [[7, "user:bob"]])
      expect((await store.load("g~a")).get(7)).toBe("user:alice")
      expect((await store.load("g~b")).get(7)).toBe("user:bob")
    })

    it("holds large client ids exactly", async () => {
      const { store } = setup()
      await store.bind("g~a", [[0xffffffff, "user:alice"]])
      expect((await store.load("g~a")).get(0xffffffff)).toBe("user:alice")
    })

    it("still has the bindings when opened again", async () => {
      const { store, reopen } = setup()
      await store.bind("g~a", [[5, "user:alice"]])
      expect((await reopen().load("g~a")).get(5)).toBe("user:alice")
    })
  })
}

runBindingStoreConformance("memory", () => {
  const store = new MemoryClientBindingStore()
  return { store, reopen: () => store }
})

runBindingStoreConformance("SQLite", () => {
  const db = new Database(":memory:")
  return { store: new SqliteClientBindingStore(db), reopen: () => new SqliteClientBindingStore(db) }
})
