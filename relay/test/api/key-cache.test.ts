import { ErrorCode } from "@parley/shared"
import { describe, expect, it } from "vitest"
import {
  CachedApiKeyStore,
  DEFAULT_KEY_CACHE_MS,
  UNKNOWN_KEY_READS_PER_SECOND,
} from "../../src/api/key-cache.js"
import { MemoryApiKeyStore, newApiKey } from "../../src/api/keys.js"

/** A key store counting its reads, a cache over it on a clock the test moves, and a storage that can fail. */
async function cached() {
  const inner = new MemoryApiKeyStore()
  let reads = 0
  const get = inner.get.bind(inner)
  inner.get = (id) => {
    reads++
    return get(id)
  }
  const clock = { now: 1_000_000 }
  const storage: { available: boolean; readable?: boolean } = { available: true }
  const keys = new CachedApiKeyStore(inner, { storage, now: () => clock.now })
  const { record } = newApiKey("backend", ["messages:write"])
  await inner.create(record)
  return { inner, keys, record, clock, storage, reads: () => reads }
}

describe("API keys cached by the relay", () => {
  it("reads a key once for a burst of requests, and sees its revocation by another process within the cache time", async () => {
    const { inner, keys, record, clock, reads } = await cached()
    const burst = await Promise.all(Array.from({ length: 20 }, () => keys.get(record.id)))
    expect(burst.every((r) => r?.id === record.id)).toBe(true)
    expect(reads()).toBe(1)
    // `parley-relay keys revoke` writes to storage; the relay is not told.
    await inner.revoke(record.id, clock.now)
    clock.now += DEFAULT_KEY_CACHE_MS - 1
    expect((await keys.get(record.id))?.revokedAt).toBeUndefined()
    clock.now += 1
    expect((await keys.get(record.id))?.revokedAt).toBe(1_000_000)
  })

  it("remembers no unknown key: one made later works at once", async () => {
    const { inner, keys } = await cached()
    const later = newApiKey("later", ["messages:read"])
    expect(await keys.get(later.record.id)).toBeUndefined()
    await inner.create(later.record)
    expect((await keys.get(later.record.id))?.name).toBe("later")
  })

  it("while storage fails, answers a key read within the cache time and refuses any other at once, retryably", async () => {
    const { keys, record, clock, storage, reads } = await cached()
    await keys.get(record.id)
    storage.available = false
    expect((await keys.get(record.id))?.id).toBe(record.id)
    await expect(keys.get("an-unread-key-id")).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
    clock.now += DEFAULT_KEY_CACHE_MS
    // Never past the cache time: a revocation it cannot read would go unseen.
    await expect(keys.get(record.id)).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
    expect(reads()).toBe(1)
  })

  it("reads made-up key ids at a bounded rate, refusing the rest retryably, while keys that exist are still read", async () => {
    const { keys, record, clock, reads } = await cached()
    await keys.get(record.id)
    const made = Array.from({ length: 500 }, (_, i) =>
      keys.get(`made-up-${i}`).then(
        () => "read",
        (e) => e.code,
      ),
    )
    const answers = await Promise.all(made)
    // The whole burst: the real key was known to exist from the listing, so its read took none of it.
    const burst = 2 * UNKNOWN_KEY_READS_PER_SECOND
    expect(answers.filter((a) => a === "read")).toHaveLength(burst)
    expect(answers.filter((a) => a === ErrorCode.RATE_LIMITED)).toHaveLength(500 - burst)
    expect(reads()).toBe(1 + burst)
    // The flood goes on past the existing key's cache time: it is read again, not refused.
    clock.now += DEFAULT_KEY_CACHE_MS
    await Promise.allSettled(Array.from({ length: 500 }, (_, i) => keys.get(`made-up-later-${i}`)))
    await expect(keys.get("made-up-again")).rejects.toMatchObject({ code: ErrorCode.RATE_LIMITED })
    expect((await keys.get(record.id))?.id).toBe(record.id)
  })

  it("knows the stored keys from its first request: a flood of made-up ids right after a start refuses none of them", async () => {
    const { inner, record, clock } = await cached()
    // A fresh cache, as after a restart: it has read no key yet.
    const keys = new CachedApiKeyStore(inner, { now: () => clock.now })
    const flood = await Promise.allSettled(Array.from({ length: 500 }, (_, i) => keys.get(`made-up-${i}`)))
    expect(flood.filter((r) => r.status === "rejected").length).toBeGreaterThan(0)
    expect((await keys.get(record.id))?.id).toBe(record.id)
    // A key made during the flood (another process) gets in with the next listing, ten seconds at most.
    const later = newApiKey("later", ["messages:read"])
    await inner.create(later.record)
    await expect(keys.get(later.record.id)).rejects.toMatchObject({ code: ErrorCode.RATE_LIMITED })
    clock.now += 10_000
    await Promise.allSettled(Array.from({ length: 600 }, (_, i) => keys.get(`made-up-later-${i}`)))
    expect((await keys.get(later.record.id))?.name).toBe("later")
  })

  it("reads keys as usual while storage refuses writes only (a full disk): the API's reads go on", async () => {
    const { keys, record, clock, storage, reads } = await cached()
    await keys.get(record.id)
    storage.available = false
    storage.readable = true
    clock.now += 10 * DEFAULT_KEY_CACHE_MS
    expect((await keys.get(record.id))?.id).toBe(record.id)
    expect(reads()).toBe(2)
    storage.readable = false
    clock.now += DEFAULT_KEY_CACHE_MS
    await expect(keys.get(record.id)).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
  })
})
