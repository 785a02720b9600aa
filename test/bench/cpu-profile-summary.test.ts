import { describe, expect, it } from "vitest"
import { type Profile, type ProfileNode, subtreeOf } from "./cpu-profile-summary.js"

const node = (id: number, functionName: string, children: number[] = []): ProfileNode => ({
  id,
  callFrame: { functionName, url: "file:///app/relay/src/x.ts", lineNumber: id },
  children,
})

// root → a(2) → b(3) → a(4); root → c(5) → a(6); root → b(7)
const profile: Profile = {
  nodes: [
    node(1, "(root)", [2, 5, 7]),
    node(2, "a", [3]),
    node(3, "b", [4]),
    node(4, "a"),
    node(5, "c", [6]),
    node(6, "a"),
    node(7, "b"),
  ],
  // One sample each in a(2), b(3), a(4), a(6), b(7); each lasts until the next (10 µs), the last until endTime.
  samples: [2, 3, 4, 6, 7],
  timeDeltas: [0, 10, 10, 10, 10],
  startTime: 0,
  endTime: 50,
}

describe("the CPU profile's call tree beneath a function", () => {
  it("merges the outermost frames of the function and keeps nested ones inside them", () => {
    const tree = subtreeOf(profile, "a")
    // a(2) with its callees (20 µs of b and the a under it) and a(6): 40 µs; b(7) is not beneath a.
    expect(tree.total).toBe(40)
    expect(tree.self).toBe(20)
    const [key, b] = [...tree.children][0]!
    expect(key).toMatch(/^b relay\/x\.ts:4$/)
    expect(b.total).toBe(20)
    expect(b.self).toBe(10)
    expect([...b.children.values()][0]!.total).toBe(10)
  })

  it("stops at the depth asked", () => {
    expect(subtreeOf(profile, "a", 0).children.size).toBe(0)
    expect(subtreeOf(profile, "c", 1).children.get("a relay/x.ts:7")!.total).toBe(10)
  })

  it("is empty for a function the profile does not hold", () => {
    expect(subtreeOf(profile, "missing").total).toBe(0)
  })
})
