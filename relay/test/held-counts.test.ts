import { describe, expect, it } from "vitest"
import { HeldCounts } from "../src/held-counts.js"

describe("HeldCounts", () => {
  it("counts each hold back once, however often its release is called, and forgets a key holding nothing", () => {
    const held = new HeldCounts<string>()
    let released = 0
    const first = held.hold("alice", () => released++)
    const second = held.hold("alice")
    held.hold("bob")
    expect([held.count("alice"), held.count("bob")]).toEqual([2, 1])
    first()
    first()
    expect(held.count("alice")).toBe(1)
    expect(released).toBe(1)
    second()
    expect(held.has("alice")).toBe(false)
    expect([...held.keys()]).toEqual(["bob"])
  })
})
