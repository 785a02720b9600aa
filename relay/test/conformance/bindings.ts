import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { ClientBindingStore } from "../../src/policy/client-bindings.js"

/** What a backend gives each test: a fresh store, and another over the same persisted data. */
export interface BindingStoreSetup {
  readonly store: ClientBindingStore
  /** A store opened again over what `store` persisted (the same store for memory). */
  reopen(): Promise<ClientBindingStore>
  /** Closes whatever the setup and `reopen` opened, and removes the data. */
  cleanup?(): Promise<void>
}

/**
 * The behaviour every {@link ClientBindingStore} shares (memory, SQLite,
 * PostgreSQL). `setup` is called before each test and must give an empty store.
 */
export function runBindingStoreConformance(name: string, setup: () => Promise<BindingStoreSetup>) {
  describe(`${name} client binding store`, () => {
    let backend: BindingStoreSetup
    beforeEach(async () => {
      backend = await setup()
    })
    afterEach(async () => {
      await backend.cleanup?.()
    })

    it("loads nothing for a document never bound", async () => {
      expect(await backend.store.load("g~none")).toEqual(new Map())
    })

    it("keeps each id's first owner", async () => {
      const { store } = backend
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

    it("keeps the first owner when one call binds an id twice", async () => {
      const { store } = backend
      await store.bind("g~a", [
        [9, "user:alice"],
        [9, "user:mallory"],
      ])
      expect(await store.load("g~a")).toEqual(new Map([[9, "user:alice"]]))
    })

    it("does nothing for an empty bind", async () => {
      await backend.store.bind("g~a", [])
      expect(await backend.store.load("g~a")).toEqual(new Map())
    })

    it("keeps documents apart", async () => {
      const { store } = backend
      await store.bind("g~a", [[7, "user:alice"]])
      await store.bind("g~b", [[7, "user:bob"]])
      expect((await store.load("g~a")).get(7)).toBe("user:alice")
      expect((await store.load("g~b")).get(7)).toBe("user:bob")
    })

    it("holds large client ids exactly", async () => {
      const { store } = backend
      await store.bind("g~a", [
        [0xffffffff, "user:alice"],
        [0, "user:bob"],
      ])
      const loaded = await store.load("g~a")
      expect(loaded.get(0xffffffff)).toBe("user:alice")
      expect(loaded.get(0)).toBe("user:bob")
    })

    it("gives a copy: changing a loaded map changes nothing stored", async () => {
      const { store } = backend
      await store.bind("g~a", [[1, "user:alice"]])
      const loaded = await store.load("g~a")
      loaded.set(1, "user:mallory")
      loaded.set(2, "user:mallory")
      expect(await store.load("g~a")).toEqual(new Map([[1, "user:alice"]]))
    })

    it("answers each id's owner after a bind: the entry's key, or the first owner's, also one bound through another store over the same data", async () => {
      const { store } = backend
      expect(await store.bind("g~a", [])).toEqual(new Map())
      expect(
        await store.bind("g~a", [
          [1, "user:alice"],
          [2, "user:alice"],
        ]),
      ).toEqual(
        new Map([
          [1, "user:alice"],
          [2, "user:alice"],
        ]),
      )
      // Another relay's store, whose caller never saw alice's ids.
      const other = await backend.reopen()
      expect(
        await other.bind("g~a", [
          [2, "user:mallory"],
          [3, "user:mallory"],
          [3, "user:bob"],
        ]),
      ).toEqual(
        new Map([
          [2, "user:alice"],
          [3, "user:mallory"],
        ]),
      )
      expect(await store.bind("g~a", [[3, "user:carol"]])).toEqual(new Map([[3, "user:mallory"]]))
    })

    it("drops one document's bindings for good, and nothing of the others'", async () => {
      const { store } = backend
      await store.bind("g~gone", [
        [1, "user:alice"],
        [2, "relay"],
      ])
      await store.bind("g~kept", [[1, "user:bob"]])
      await store.drop("g~gone")
      // Dropping again, or a document never bound, is no error.
      await store.drop("g~gone")
      await store.drop("g~never")
      expect(await store.load("g~gone")).toEqual(new Map())
      expect(await store.load("g~kept")).toEqual(new Map([[1, "user:bob"]]))
      // Gone from what is persisted too, and the id is free to bind again.
      const again = await backend.reopen()
      expect(await again.load("g~gone")).toEqual(new Map())
      expect(await again.bind("g~gone", [[1, "user:carol"]])).toEqual(new Map([[1, "user:carol"]]))
    })

    it("still has the bindings when opened again, and their first owners win there", async () => {
      await backend.store.bind("g~a", [[5, "user:alice"]])
      const again = await backend.reopen()
      expect((await again.load("g~a")).get(5)).toBe("user:alice")
      await again.bind("g~a", [[5, "user:mallory"]])
      expect((await again.load("g~a")).get(5)).toBe("user:alice")
    })
  })
}
