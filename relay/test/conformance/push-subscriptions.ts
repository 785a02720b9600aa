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
const sub = (
  user: UserId,
  device: string,
  endpoint: string,
  createdAt: number,
  credentialsUntil: number | null = createdAt + 3_600_000,
): PushSubscriptionRecord => ({
  user,
  device,
  endpoint,
  p256dh: `key-${device}`,
  auth: `auth-${device}`,
  createdAt,
  credentialsUntil,
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

    it("renews a device's credentials only with its own endpoint and keys, only later, and keeps a token without exp as never", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 1000, 5000))
      const same = { endpoint: "https://push.example/a1", p256dh: "key-phone", auth: "auth-phone" }
      expect(await backend.store.renew(alice, "phone", same, 9000)).toBe(true)
      // An older token's renewal never moves it earlier.
      expect(await backend.store.renew(alice, "phone", same, 2000)).toBe(true)
      expect((await (await backend.reopen()).list(alice))[0]?.credentialsUntil).toBe(9000)
      // Another endpoint or other keys under the same name are not a renewal.
      expect(
        await backend.store.renew(alice, "phone", { ...same, endpoint: "https://push.example/evil" }, 20_000),
      ).toBe(false)
      expect(await backend.store.renew(alice, "phone", { ...same, auth: "other" }, 20_000)).toBe(false)
      expect(await backend.store.renew(bob, "phone", same, 20_000)).toBe(false)
      expect(await backend.store.renew(alice, "tablet", same, 20_000)).toBe(false)
      expect((await backend.store.list(alice))[0]?.credentialsUntil).toBe(9000)
      // A token without exp never lapses, and a later renewal with one does not make it lapse.
      expect(await backend.store.renew(alice, "phone", same, null)).toBe(true)
      expect(await backend.store.renew(alice, "phone", same, 30_000)).toBe(true)
      expect((await (await backend.reopen()).listMany([alice]))[0]?.credentialsUntil).toBeNull()
    })

    it("gives a replaced subscription the new credentials' end, even an earlier one", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 1000, 90_000))
      await backend.store.put(sub(alice, "phone", "https://push.example/evil", 2000, 10_000))
      const [only] = await (await backend.reopen()).list(alice)
      expect(only).toMatchObject({ endpoint: "https://push.example/evil", credentialsUntil: 10_000 })
    })

    it("removes one device of one user, and says whether there was one", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 1000))
      await backend.store.put(sub(bob, "phone", "https://push.example/b1", 1000))
      expect(await backend.store.remove(alice, "phone")).toBe(true)
      expect(await backend.store.remove(alice, "phone")).toBe(false)
      expect(await backend.store.list(alice)).toEqual([])
      expect((await backend.store.list(bob)).length).toBe(1)
    })

    it("removes a lapsed subscription only while it is still lapsed: one renewed or replaced meanwhile stays", async () => {
      const same = { endpoint: "https://push.example/a1", p256dh: "key-phone", auth: "auth-phone" }
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 1000, 5000))
      await backend.store.put(sub(alice, "laptop", "https://push.example/a2", 1000, 5000))
      await backend.store.put(sub(bob, "phone", "https://push.example/b1", 1000, 5000))
      // Read as lapsed by 6000; the phone renews before the removal lands, the laptop is replaced.
      expect(await backend.store.renew(alice, "phone", same, 90_000)).toBe(true)
      await backend.store.put(sub(alice, "laptop", "https://push.example/a3", 1000, 80_000))
      expect(await backend.store.removeLapsed(alice, "phone", 6000)).toBe(false)
      expect(await backend.store.removeLapsed(alice, "laptop", 6000)).toBe(false)
      expect(await backend.store.removeLapsed(bob, "phone", 4999)).toBe(false)
      expect(await backend.store.removeLapsed(bob, "phone", 6000)).toBe(true)
      expect(await backend.store.removeLapsed(bob, "phone", 6000)).toBe(false)
      expect((await (await backend.reopen()).list(alice)).map((s) => s.device).sort()).toEqual([
        "laptop",
        "phone",
      ])
      expect(await backend.store.list(bob)).toEqual([])
    })

    it("sweeps every subscription whose credentials ended by a time, and none that never lapses", async () => {
      await backend.store.put(sub(alice, "phone", "https://push.example/a1", 1000, 5000))
      await backend.store.put(sub(alice, "laptop", "https://push.example/a2", 1000, 50_000))
      await backend.store.put(sub(bob, "phone", "https://push.example/b1", 1000, 7000))
      await backend.store.put(sub(bob, "tablet", "https://push.example/b2", 1000, null))
      expect(await backend.store.removeAllLapsed(10_000)).toBe(2)
      expect(await backend.store.removeAllLapsed(10_000)).toBe(0)
      const left = await (await backend.reopen()).listMany([alice, bob])
      expect(left.map((s) => `${s.user}/${s.device}`).sort()).toEqual(["alice/laptop", "bob/tablet"])
      // Asked for many users after a sweep emptied one's devices: nothing stale comes back.
      expect(await backend.store.removeAllLapsed(60_000)).toBe(1)
      expect((await backend.store.listMany([alice, bob])).map((s) => `${s.user}/${s.device}`)).toEqual([
        "bob/tablet",
      ])
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
