import type { UserId } from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { PushSubscriptionRecord, PushSubscriptionStore } from "../../src/push/store.js"

/** What a backend gives each test: a fresh subscription store, and another over the same persisted data. */
export interface PushSubscriptionStoreSetup {
  readonly store: PushSubscriptionStore
  /** A store opened again over what `store` persisted (the same store for memory). */
  reopen(): Promise<PushSubscriptionStore>
  cleanup?(): Promise<void>
}

const alice = "alice" as UserId
const bob = "bob" as UserId
const sub = (user: UserId, device: string, endpoint: string, createdAt: number): PushSubscriptionRecord => ({
  user,
  device,
  endpoint,
  p256dh: `key-${device}`,
  auth: `auth-${device}`,
  createdAt,
})

/** The behaviour every {@link PushSubscriptionStore} shares (memory, SQLite, PostgreSQL). */
export function runPushSubscriptionStoreConformance(
  name: string,
  setup: () => Promise<PushSubscriptionStoreSetup>,
) {
  describe(`${name} push subscription store`, () => {
    let backend: PushSubscriptionStoreSetup
    beforeEach(async () => {
      backend = await setup()
    })
    afterEach(async () => {
      await backend.cleanup?.()
    })

    it("keeps each user's devices apart, oldest first, across a reopen", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 2000))
      await backend.store.put(sub(alice, "laptop", "https://push.example/a2", 1000))
      await backend.store.put(sub(bob, "phone", "https://push.example/b1", 1500))
      const again = await backend.reopen()
      expect((await again.list(alice)).map((s) => s.device)).toEqual(["laptop", "phone"])
      expect(await again.list(bob)).toEqual([sub(bob, "phone", "https://push.example/b1", 1500)])
      expect(await again.list("carol" as UserId)).toEqual([])
      const many = await again.listMany([bob, alice, "carol" as UserId])
      expect(many.map((s) => `${s.user}/${s.device}`).sort()).toEqual([
        "alice/laptop",
        "alice/phone",
        "bob/phone",
      ])
      expect(many.filter((s) => s.user === alice).map((s) => s.device)).toEqual(["laptop", "phone"])
      expect(await again.listMany([])).toEqual([])
    })

    it("replaces a device's subscription when it registers again, keeping one per device", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/old", 1000))
      await backend.store.put({ ...sub(alice, "phone", "https://push.example/new", 5000), p256dh: "fresh" })
      const [only, ...rest] = await (await backend.reopen()).list(alice)
      expect(rest).toEqual([])
      expect(only).toMatchObject({ endpoint: "https://push.example/new", p256dh: "fresh" })
    })

    it("removes one device of one user, and says whether there was one", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 1000))
      await backend.store.put(sub(bob, "phone", "https://push.example/b1", 1000))
      expect(await backend.store.remove(alice, "phone")).toBe(true)
      expect(await backend.store.remove(alice, "phone")).toBe(false)
      expect(await backend.store.list(alice)).toEqual([])
      expect((await backend.store.list(bob)).length).toBe(1)
    })

    it("drops every subscription of an expired endpoint, and only those", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/gone", 1000))
      await backend.store.put(sub(alice, "laptop", "https://push.example/kept", 1000))
      await backend.store.put(sub(bob, "tablet", "https://push.example/gone", 1000))
      expect(await backend.store.removeEndpoint("https://push.example/gone")).toBe(2)
      expect((await (await backend.reopen()).list(alice)).map((s) => s.device)).toEqual(["laptop"])
      expect(await backend.store.list(bob)).toEqual([])
      // The same store, asked for many users at once, after those removals and a new registration.
      expect((await backend.store.listMany([alice, bob])).map((s) => `${s.user}/${s.device}`)).toEqual([
        "alice/laptop",
      ])
      await backend.store.put(sub(bob, "phone", "https://push.example/b2", 2000))
      expect((await backend.store.listMany([bob, alice])).map((s) => `${s.user}/${s.device}`).sort()).toEqual(
        ["alice/laptop", "bob/phone"],
      )
    })
  })
}
