import { ErrorCode, type ParleyError } from "@parley/shared"
import { describe, expect, it } from "vitest"
import type { BlobStore } from "../../src/attachments/blob-store.js"
import { GuardedBlobStore } from "../../src/attachments/guarded-blob-store.js"
import { MemoryBlobStore } from "../../src/attachments/memory-blob-store.js"
import { runBlobStoreConformance } from "../conformance/blob-store.js"

runBlobStoreConformance("guarded memory", async () => {
  const store = new GuardedBlobStore(new MemoryBlobStore(), { timeoutMs: 1000 })
  return { store, reopen: async () => store }
})

/** A memory store whose calls, once `failing` is set, hang or throw what a broken backend throws. */
class BrokenStore extends MemoryBlobStore {
  failing: "hang" | "throw" | undefined
  private check(): Promise<void> {
    if (this.failing === "hang") return new Promise(() => {})
    if (this.failing === "throw") return Promise.reject(new Error("read EIO"))
    return Promise.resolve()
  }
  override async append(key: string, offset: number, bytes: Uint8Array): Promise<void> {
    await this.check()
    return super.append(key, offset, bytes)
  }
  override async size(key: string): Promise<number | undefined> {
    await this.check()
    return super.size(key)
  }
  override async *read(key: string, start?: number, end?: number): AsyncIterable<Uint8Array> {
    for await (const part of super.read(key, start, end)) {
      await this.check()
      yield part
    }
  }
}

async function readAll(store: BlobStore, key: string): Promise<number> {
  let bytes = 0
  for await (const part of store.read(key)) bytes += part.length
  return bytes
}

describe("a guarded blob store", () => {
  it("turns a store's hang into the retryable STORAGE_UNAVAILABLE at the deadline, and its raw errors too", async () => {
    const inner = new BrokenStore()
    const failures: ParleyError[] = []
    const store = new GuardedBlobStore(inner, { timeoutMs: 100, onFailure: (e) => failures.push(e) })
    await store.append("a/b", 0, new Uint8Array(10))
    await store.append("a/b", 10, new Uint8Array(10))

    inner.failing = "hang"
    const started = performance.now()
    await expect(store.append("a/b", 20, new Uint8Array(3))).rejects.toMatchObject({
      code: ErrorCode.STORAGE_UNAVAILABLE,
    })
    expect(performance.now() - started).toBeLessThan(1000)
    // A read that stalls after its first chunk fails too, instead of holding the download open.
    await expect(readAll(store, "a/b")).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })

    inner.failing = "throw"
    const thrown = await store.size("a/b").catch((e: ParleyError) => e)
    expect(thrown).toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
    expect((thrown as ParleyError).message).toMatch(/read EIO/)
    expect(failures).toHaveLength(3)

    // The store's own answers are not failures: a wrong offset stays a CONFLICT.
    inner.failing = undefined
    await expect(store.append("a/b", 5, new Uint8Array(1))).rejects.toMatchObject({
      code: ErrorCode.CONFLICT,
    })
    expect(failures).toHaveLength(3)
    expect(await readAll(store, "a/b")).toBe(20)
  })
})
