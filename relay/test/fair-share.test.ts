import type { UserId } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { FAIR_SHARE_FLOOR_TOKENS, FairShare } from "../src/fair-share.js"

const heavyUser = "heavy" as UserId
const other = "other" as UserId
const honest = "honest" as UserId

/** Keeps the event loop busy for `ms` (a saturated relay). */
function busy(ms: number): void {
  const end = performance.now() + ms
  while (performance.now() < end) {}
}

const tick = () => new Promise((resolve) => setImmediate(resolve))

describe("the relay shared between users when it is saturated", () => {
  it("holds back the users who spent more than an even share of a saturated window, not one who spent little", async () => {
    const fair = new FairShare({ windowMs: 50 })
    try {
      fair.charge(heavyUser, 10 * FAIR_SHARE_FLOOR_TOKENS)
      fair.charge(other, 10 * FAIR_SHARE_FLOOR_TOKENS)
      fair.charge(honest, 1)
      busy(60)
      await new Promise((resolve) => setTimeout(resolve, 5))
      expect(fair.isHeld(heavyUser)).toBe(true)
      expect(fair.isHeld(other)).toBe(true)
      expect(fair.isHeld(honest)).toBe(false)
      // The honest user's update runs at once; a held user's waits for the window.
      const ran: string[] = []
      await fair.admit(honest, false, async () => ran.push("honest"))
      const held = fair.admit(heavyUser, false, async () => ran.push("heavy"))
      expect(ran).toEqual(["honest"])
      // An idle window lets them go.
      await held
      expect(ran).toEqual(["honest", "heavy"])
      expect(fair.isHeld(heavyUser)).toBe(false)
    } finally {
      fair.close()
    }
  })

  it("holds back nobody while the relay is not saturated, however much they spend", async () => {
    const fair = new FairShare({ windowMs: 30 })
    try {
      fair.charge(heavyUser, 1_000)
      fair.charge(honest, 1)
      await new Promise((resolve) => setTimeout(resolve, 70))
      expect(fair.isHeld(heavyUser)).toBe(false)
    } finally {
      fair.close()
    }
  })

  it("runs heavy frames one at a time across users, light ones at once, and each user's in the order they came", async () => {
    const fair = new FairShare()
    try {
      const log: string[] = []
      let finishFirst!: () => void
      const first = fair.admit(heavyUser, true, () => {
        log.push("heavy 1 starts")
        return new Promise<void>((resolve) => {
          finishFirst = resolve
        })
      })
      const second = fair.admit(other, true, async () => {
        log.push("heavy 2 starts")
      })
      // The heavy user's light update after their heavy one goes once that one started (it reaches its
      // document behind it), not before.
      const behind = fair.admit(heavyUser, false, async () => {
        log.push("heavy user's light one starts")
      })
      const light = fair.admit(honest, false, async () => {
        log.push("honest light one starts")
      })
      await Promise.all([light, behind])
      await tick()
      expect(log).toContain("honest light one starts")
      expect(log.indexOf("heavy user's light one starts")).toBeGreaterThan(log.indexOf("heavy 1 starts"))
      // The second heavy frame waits for the first to finish.
      expect(log).not.toContain("heavy 2 starts")
      finishFirst()
      await Promise.all([first, second])
      expect(log.at(-1)).toBe("heavy 2 starts")
    } finally {
      fair.close()
    }
  })

  it("lets one user's heavy updates share the slot while nobody else waits (a backlog in parts is stored in batches)", async () => {
    const fair = new FairShare()
    try {
      const started: number[] = []
      const finish: (() => void)[] = []
      const part = (n: number) =>
        fair.admit(heavyUser, true, () => {
          started.push(n)
          return new Promise<void>((resolve) => finish.push(resolve))
        })
      const parts = [part(1), part(2), part(3)]
      await tick()
      await tick()
      expect(started).toEqual([1, 2, 3])
      // Another user's heavy frame waits for all of them.
      let otherStarted = false
      const otherOne = fair.admit(other, true, async () => {
        otherStarted = true
      })
      await tick()
      expect(otherStarted).toBe(false)
      for (const resolve of finish) resolve()
      await Promise.all([...parts, otherOne])
      expect(otherStarted).toBe(true)
    } finally {
      fair.close()
    }
  })
})
