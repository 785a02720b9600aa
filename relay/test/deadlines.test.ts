import { afterEach, describe, expect, it, vi } from "vitest"
import { Deadlines } from "../src/deadlines.js"

afterEach(() => {
  vi.useRealTimers()
})

describe("Deadlines", () => {
  it("calls each item once its time has passed, in time order, on one timer", () => {
    vi.useFakeTimers({ now: 0 })
    const deadlines = new Deadlines()
    const fired: string[] = []
    const item = (name: string) => ({ due: () => fired.push(name) })
    const times = [500, 100, 300, 200, 400]
    for (const t of times) deadlines.set(item(`at ${t}`), t)
    expect(vi.getTimerCount()).toBe(1)
    vi.advanceTimersByTime(250)
    expect(fired).toEqual(["at 100", "at 200"])
    vi.advanceTimersByTime(300)
    expect(fired).toEqual(["at 100", "at 200", "at 300", "at 400", "at 500"])
    expect(deadlines.size).toBe(0)
    expect(vi.getTimerCount()).toBe(0)
  })

  it("never calls a cleared item, and a new deadline replaces the old one", () => {
    vi.useFakeTimers({ now: 0 })
    const deadlines = new Deadlines()
    const fired: string[] = []
    const a = { due: () => fired.push("a") }
    const b = { due: () => fired.push("b") }
    const c = { due: () => fired.push("c") }
    deadlines.set(a, 100)
    deadlines.set(b, 200)
    deadlines.set(c, 300)
    deadlines.clear(a)
    // Moved later, past c (a token refresh moves the expiry).
    deadlines.set(b, 400)
    vi.advanceTimersByTime(350)
    expect(fired).toEqual(["c"])
    vi.advanceTimersByTime(100)
    expect(fired).toEqual(["c", "b"])
    deadlines.clear(c)
    expect(deadlines.size).toBe(0)
  })

  it("keeps serving the others when one item throws, and says so", () => {
    vi.useFakeTimers({ now: 0 })
    const failures: unknown[] = []
    const deadlines = new Deadlines((error) => failures.push(error))
    const fired: string[] = []
    deadlines.set(
      {
        due: () => {
          throw new Error("boom")
        },
      },
      10,
    )
    deadlines.set({ due: () => fired.push("after") }, 10)
    vi.advanceTimersByTime(10)
    expect(fired).toEqual(["after"])
    expect(failures).toEqual([new Error("boom")])
  })

  it("treats a time that is no number as due at once, never as never", () => {
    vi.useFakeTimers({ now: 1_000 })
    const deadlines = new Deadlines()
    let fired = 0
    deadlines.set({ due: () => fired++ }, Number.NaN)
    vi.advanceTimersByTime(1)
    expect(fired).toBe(1)
    expect(vi.getTimerCount()).toBe(0)
  })

  it("reaches a deadline beyond a Node timer's range in steps, never early", () => {
    vi.useFakeTimers({ now: 0 })
    const deadlines = new Deadlines()
    let fired = 0
    const far = 2 ** 31 + 5_000
    deadlines.set({ due: () => fired++ }, far)
    vi.advanceTimersByTime(2 ** 31 - 1)
    expect(fired).toBe(0)
    vi.advanceTimersByTime(far - (2 ** 31 - 1))
    expect(fired).toBe(1)
  })
})
