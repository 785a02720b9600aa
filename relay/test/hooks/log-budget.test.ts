import { describe, expect, it } from "vitest"
import { LOG_LINES_PER_SECOND, LogBudget } from "../../src/hooks/worker-protocol.js"

describe("the hook modules' log budget", () => {
  it("says how many lines were dropped at most once a second, the counts summed, however lines trickle through", () => {
    let now = 0
    const budget = new LogBudget(() => now)
    let admitted = 0
    let dropped = 0
    const warnings: { readonly at: number; readonly dropped: number }[] = []
    // A module printing 10,000 lines a second for 10 s, after its burst: one line passes every 10 ms.
    for (let i = 0; i < 100_000; i++) {
      now = i / 10
      if (!budget.admits(100)) {
        dropped++
        continue
      }
      admitted++
      const told = budget.takeDropped()
      if (told > 0) warnings.push({ at: now, dropped: told })
    }
    expect(admitted).toBeLessThan(LOG_LINES_PER_SECOND * 10 + LOG_LINES_PER_SECOND * 10 + 10)
    // Before: a warning with every line that passed, 100 a second.
    expect(warnings.length).toBeGreaterThan(0)
    expect(warnings.length).toBeLessThanOrEqual(10)
    for (const [n, warning] of warnings.entries())
      if (n > 0) expect(warning.at - warnings[n - 1]!.at).toBeGreaterThanOrEqual(1_000)
    // Nothing lost from the count: what is still owed is told with the next line that passes later.
    now += 5_000
    expect(budget.admits(100)).toBe(true)
    const last = budget.takeDropped()
    expect(warnings.reduce((sum, w) => sum + w.dropped, 0) + last).toBe(dropped)
  })
})
