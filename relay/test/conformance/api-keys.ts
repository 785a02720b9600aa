import { ErrorCode } from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { type ApiKeyStore, newApiKey, secretMatches, splitApiKey } from "../../src/api/keys.js"

/** What a backend gives each test: a fresh key store, and another over the same persisted data. */
export interface ApiKeyStoreSetup {
  readonly store: ApiKeyStore
  /** A store opened again over what `store` persisted (the same store for memory). */
  reopen(): Promise<ApiKeyStore>
  cleanup?(): Promise<void>
}

/** The behaviour every {@link ApiKeyStore} shares (memory, SQLite, PostgreSQL). */
export function runApiKeyStoreConformance(name: string, setup: () => Promise<ApiKeyStoreSetup>) {
  describe(`${name} API key store`, () => {
    let backend: ApiKeyStoreSetup
    beforeEach(async () => {
      backend = await setup()
    })
    afterEach(async () => {
      await backend.cleanup?.()
    })

    it("finds a created key by its id and checks its secret, never storing the secret", async () => {
      const { key, record } = newApiKey("billing", ["messages:write", "events:read"], 1000)
      await backend.store.create(record)
      const { id, secret } = splitApiKey(key)!
      const stored = (await (await backend.reopen()).get(id))!
      expect(stored).toEqual(record)
      expect(JSON.stringify(stored)).not.toContain(secret)
      expect(secretMatches(stored, secret)).toBe(true)
      expect(secretMatches(stored, `${secret.slice(1)}x`)).toBe(false)
      expect(await backend.store.get("0000000000000000")).toBeUndefined()
    })

    it("refuses a second active key with the same name, and allows it once the first is revoked", async () => {
      const first = newApiKey("peek", ["conversations:write"], 1000).record
      await backend.store.create(first)
      await expect(
        backend.store.create(newApiKey("peek", ["messages:read"], 2000).record),
      ).rejects.toMatchObject({ code: ErrorCode.CONFLICT })
      expect(await backend.store.revoke("peek", 3000)).toBe(true)
      expect(await backend.store.revoke("peek", 3001)).toBe(false)
      const second = newApiKey("peek", ["messages:read"], 4000).record
      await backend.store.create(second)
      const store = await backend.reopen()
      expect((await store.list()).map((k) => [k.id, k.revokedAt])).toEqual([
        [first.id, 3000],
        [second.id, undefined],
      ])
      expect(await store.revoke(second.id, 5000)).toBe(true)
      expect((await store.get(second.id))?.revokedAt).toBe(5000)
    })
  })
}
