import { ErrorCode } from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { BlobStore } from "../../src/attachments/blob-store.js"

/** What a store gives each test: a fresh store, and another over the same persisted data. */
export interface BlobStoreSetup {
  readonly store: BlobStore
  /** A store opened again over what `store` persisted (the same store for memory). */
  reopen(): Promise<BlobStore>
  cleanup?(): Promise<void>
}

const bytes = (length: number, seed = 1) => {
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) & 255
  return out
}

async function readAll(store: BlobStore, key: string, start?: number, end?: number): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const part of store.read(key, start, end)) parts.push(part)
  return new Uint8Array(Buffer.concat(parts))
}

const concat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts))

/** The behaviour every {@link BlobStore} shares (file system, PostgreSQL, memory). */
export function runBlobStoreConformance(name: string, setup: () => Promise<BlobStoreSetup>) {
  describe(`${name} blob store`, () => {
    let backend: BlobStoreSetup
    beforeEach(async () => {
      backend = await setup()
    })
    afterEach(async () => {
      await backend.store.close()
      await backend.cleanup?.()
    })

    it("appends chunks in order and reads them back whole and by range, across a reopen", async () => {
      const { store } = backend
      const a = bytes(1000, 1)
      const b = bytes(700, 2)
      const c = bytes(1, 3)
      await store.append("conv/x/att_1/file", 0, a)
      await store.append("conv/x/att_1/file", 1000, b)
      await store.append("conv/x/att_1/file", 1700, c)
      expect(await store.size("conv/x/att_1/file")).toBe(1701)
      const reopened = await backend.reopen()
      expect(await readAll(reopened, "conv/x/att_1/file")).toEqual(concat(a, b, c))
      // A range across the chunk boundaries, and ranges clamped to the blob.
      expect(await readAll(reopened, "conv/x/att_1/file", 990, 1705)).toEqual(concat(a, b, c).subarray(990))
      expect(await readAll(reopened, "conv/x/att_1/file", 1000, 1010)).toEqual(b.subarray(0, 10))
      expect(await readAll(reopened, "conv/x/att_1/file", 5000)).toEqual(new Uint8Array(0))
      if (reopened !== store) await reopened.close()
    })

    it("refuses an append at any offset but the blob's length, storing nothing", async () => {
      const { store } = backend
      await store.append("k/a", 0, bytes(10))
      for (const offset of [0, 5, 11]) {
        await expect(store.append("k/a", offset, bytes(3))).rejects.toMatchObject({
          code: ErrorCode.CONFLICT,
        })
      }
      await expect(store.append("k/new", 4, bytes(3))).rejects.toMatchObject({ code: ErrorCode.CONFLICT })
      expect(await store.size("k/a")).toBe(10)
      expect(await store.size("k/new")).toBeUndefined()
    })

    it("takes an empty append as nothing: the blob stays appendable at its length", async () => {
      const { store } = backend
      await store.append("empty/a", 0, bytes(5))
      await store.append("empty/a", 5, new Uint8Array(0))
      await expect(store.append("empty/a", 4, new Uint8Array(0))).rejects.toMatchObject({
        code: ErrorCode.CONFLICT,
      })
      // An empty first append creates nothing: the blob is still missing.
      await store.append("empty/b", 0, new Uint8Array(0))
      expect(await store.size("empty/b")).toBeUndefined()
      await store.append("empty/a", 5, bytes(3, 4))
      expect(await store.size("empty/a")).toBe(8)
      expect(await readAll(store, "empty/a")).toEqual(concat(bytes(5), bytes(3, 4)))
    })

    it("lets only one of two concurrent appends at the same offset win", async () => {
      const { store } = backend
      await store.append("race/a", 0, bytes(4))
      const results = await Promise.allSettled([
        store.append("race/a", 4, bytes(8, 7)),
        store.append("race/a", 4, bytes(8, 9)),
      ])
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1)
      expect(await store.size("race/a")).toBe(12)
    })

    it("replaces a blob whole with put", async () => {
      const { store } = backend
      await store.put("meta/att_1", new TextEncoder().encode('{"v":1}'))
      await store.put("meta/att_1", new TextEncoder().encode('{"v":22}'))
      expect(new TextDecoder().decode(await readAll(store, "meta/att_1"))).toBe('{"v":22}')
      expect(await store.size("meta/att_1")).toBe(8)
    })

    it("gets a small blob whole, the old bytes or the new, while puts replace it", async () => {
      const { store } = backend
      // A record rewritten while another request reads it (an attachment linked to its message as a
      // participant asks for its URL): each read must parse, whatever the interleaving.
      const version = (n: number) => new TextEncoder().encode(JSON.stringify({ n, pad: "x".repeat(n * 7) }))
      await store.put("meta/att_2", version(0))
      const seen = new Set<number>()
      for (let n = 1; n <= 60; n++) {
        const [, read] = await Promise.all([store.put("meta/att_2", version(n)), store.get("meta/att_2")])
        const text = new TextDecoder().decode(read)
        const parsed = JSON.parse(text) as { n: number }
        expect([n - 1, n]).toContain(parsed.n)
        expect(text).toBe(new TextDecoder().decode(version(parsed.n)))
        seen.add(parsed.n)
      }
      expect(await store.get("meta/none")).toBeUndefined()
      await store.append("grown/a", 0, bytes(5))
      await store.append("grown/a", 5, bytes(3, 7))
      expect(await store.get("grown/a")).toEqual(concat(bytes(5), bytes(3, 7)))
    })

    it("lists keys by prefix, sorted, and deletes one blob without touching its neighbours", async () => {
      const { store } = backend
      for (const key of ["conv/a/att_2/file", "conv/a/att_1/file", "conv/a/att_1/thumb", "conv/b/att_3/file"])
        await store.append(key, 0, bytes(5))
      expect(await store.list("conv/a/")).toEqual([
        "conv/a/att_1/file",
        "conv/a/att_1/thumb",
        "conv/a/att_2/file",
      ])
      expect(await store.list("conv/a/att_1")).toEqual(["conv/a/att_1/file", "conv/a/att_1/thumb"])
      await store.delete("conv/a/att_1/file")
      await store.delete("conv/a/missing")
      expect(await store.list("conv/")).toEqual([
        "conv/a/att_1/thumb",
        "conv/a/att_2/file",
        "conv/b/att_3/file",
      ])
      expect(await store.size("conv/a/att_1/file")).toBeUndefined()
      await expect(readAll(store, "conv/a/att_1/file")).rejects.toMatchObject({ code: ErrorCode.NOT_FOUND })
    })

    it("refuses keys that could escape the store", async () => {
      const { store } = backend
      for (const key of ["../x", "a/../../b", "/abs", "a//b", "a/#000", "sp ace"]) {
        await expect(store.append(key, 0, bytes(1))).rejects.toMatchObject({
          code: ErrorCode.INVALID_ARGUMENT,
        })
      }
    })

    it("reads a large blob a chunk at a time", async () => {
      const { store } = backend
      const chunk = 256 * 1024
      for (let i = 0; i < 8; i++) await store.append("big/a", i * chunk, bytes(chunk, i))
      let total = 0
      let largest = 0
      for await (const part of store.read("big/a")) {
        total += part.length
        largest = Math.max(largest, part.length)
      }
      expect(total).toBe(8 * chunk)
      expect(largest).toBeLessThanOrEqual(chunk)
    })
  })
}
