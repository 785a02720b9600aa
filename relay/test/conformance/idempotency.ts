import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { IdempotencyStore } from "../../src/api/idempotency.js"

/** What a backend gives each test: a fresh store, and another over the same persisted data. */
export interface IdempotencyStoreSetup {
  readonly store: IdempotencyStore
  /** A store opened again over what `store` persisted (the same store for memory). */
  reopen(): Promise<IdempotencyStore>
  cleanup?(): Promise<void>
}

/** The behaviour every {@link IdempotencyStore} shares (memory, SQLite, PostgreSQL). */
export function runIdempotencyStoreConformance(name: string, setup: () => Promise<IdempotencyStoreSetup>) {
  describe(`${name} API idempotency records`, () => {
    let backend: IdempotencyStoreSetup
    beforeEach(async () => {
      backend = await setup()
    })
    afterEach(async () => {
      await backend.cleanup?.()
    })

    it("begins a send once, and gives later attempts the record with the number it got", async () => {
      const { store } = backend
      expect(await store.begin("g~a", "ik_1", 7, 1000)).toBeUndefined()
      expect(await store.begin("g~a", "ik_1", 9, 2000)).toEqual({ since: 7 })
      // The same message id in another conversation is another send.
      expect(await store.begin("g~b", "ik_1", 3, 2000)).toBeUndefined()
      await store.complete("g~a", "ik_1", 8)
      const again = await backend.reopen()
      expect(await again.begin("g~a", "ik_1", 12, 3000)).toEqual({ since: 7, seq: 8 })
      expect(await again.begin("g~b", "ik_1", 12, 3000)).toEqual({ since: 3 })
    })

    it("lets exactly one of racing attempts begin", async () => {
      const answers = await Promise.all(
        Array.from({ length: 8 }, (_, n) => backend.store.begin("g~race", "ik_r", n, 1000)),
      )
      const began = answers.filter((a) => a === undefined)
      expect(began).toHaveLength(1)
      const winner = answers.indexOf(undefined)
      for (const answer of answers) if (answer) expect(answer).toEqual({ since: winner })
    })

    it("moves an unnumbered record's since forward only", async () => {
      const { store } = backend
      await store.begin("g~a", "m_1", 5, 1000)
      await store.advance("g~a", "m_1", 9)
      await store.advance("g~a", "m_1", 6)
      expect(await (await backend.reopen()).begin("g~a", "m_1", 0, 1000)).toEqual({ since: 9 })
      await store.complete("g~a", "m_1", 10)
      await store.advance("g~a", "m_1", 20)
      expect(await store.begin("g~a", "m_1", 0, 1000)).toEqual({ since: 9, seq: 10 })
    })
  })
}
