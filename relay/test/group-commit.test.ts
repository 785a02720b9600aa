import { describe, expect, it } from "vitest"
import { RateLimiter } from "../src/rate-limit.js"
import { type AppendBatch, GroupCommit } from "../src/storage/group-commit.js"

describe("group commit", () => {
  it("commits the appends of one tick together and resolves each with its own positions", async () => {
    const batches: AppendBatch[] = []
    let next = 1
    const group = new GroupCommit((batch) => {
      batches.push(batch)
      return batch.map((entry) => entry.updates.map(() => next++))
    })
    const results = await Promise.all([
      group.append("a", [new Uint8Array([1])]),
      group.append("b", [new Uint8Array([2]), new Uint8Array([3])]),
      group.append("a", [new Uint8Array([4])]),
    ])
    expect(batches).toHaveLength(1)
    expect(results).toEqual([[1], [2, 3], [4]])
    await group.append("a", [new Uint8Array([5])])
    expect(batches).toHaveLength(2)
  })

  it("tells when one document's appends are committed while other documents keep appending", async () => {
    const group = new GroupCommit((batch) => batch.map((entry) => entry.updates.map(() => 1)))
    let busy = true
    let othersCommitted = 0
    // Another document appends every tick without a pause, as on a busy relay: drain() would wait for good.
    const others = (async () => {
      while (busy) {
        await group.append("b", [new Uint8Array([1])])
        othersCommitted++
      }
    })()
    await new Promise((r) => setTimeout(r, 5))
    const mine = group.append("a", [new Uint8Array([2])])
    await group.settled("a")
    await expect(mine).resolves.toEqual([1])
    busy = false
    await others
    expect(othersCommitted).toBeGreaterThan(0)
  })

  it("rejects every append of a batch whose commit failed, and commits later batches", async () => {
    let fail = true
    const group = new GroupCommit((batch) => {
      if (fail) throw new Error("disk full")
      return batch.map((entry) => entry.updates.map(() => 1))
    })
    const first = group.append("a", [new Uint8Array([1])])
    const second = group.append("b", [new Uint8Array([2])])
    await expect(first).rejects.toThrow("disk full")
    await expect(second).rejects.toThrow("disk full")
    fail = false
    await expect(group.append("a", [new Uint8Array([3])])).resolves.toEqual([1])
  })
})

describe("rate limiter", () => {
  it("allows a burst, refuses beyond it, and refills with time", () => {
    let now = 0
    const limiter = new RateLimiter(10, 5, () => now)
    for (let i = 0; i < 5; i++) expect(limiter.take()).toBe(true)
    expect(limiter.take()).toBe(false)
    now += 100
    expect(limiter.take()).toBe(true)
    expect(limiter.take()).toBe(false)
    now += 10_000
    for (let i = 0; i < 5; i++) expect(limiter.take()).toBe(true)
    expect(limiter.take()).toBe(false)
  })
})
