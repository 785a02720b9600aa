import { ErrorCode, ParleyError, type UserId, UserLimit } from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import type { LinkPreview } from "../src/attachments/link-preview.js"
import { DEFAULT_LINK_PREVIEW_LIMITS, LinkPreviewGate } from "../src/attachments/link-preview-gate.js"
import type { Principal } from "../src/principal.js"
import { DEFAULT_USER_LIMITS, UserLedger } from "../src/user-limits.js"

const user = (name: string): Principal => ({ kind: "user", user: name as UserId })
const mallory = user("mallory")

afterEach(() => {
  vi.useRealTimers()
})

describe("UserLedger.admitRequest", () => {
  it("holds a user's HTTP requests to the budget, says when the next fits, and forgets the user once refilled", () => {
    vi.useFakeTimers()
    let now = 0
    const refused: string[] = []
    const l = new UserLedger(
      { ...DEFAULT_USER_LIMITS, userHttpRequestsPerSecond: 2, userHttpRequestBurst: 3 },
      () => now,
      (limit) => refused.push(limit),
    )
    const advance = (ms: number) => {
      now += ms
      vi.advanceTimersByTime(ms)
    }
    expect([1, 2, 3].map(() => l.admitRequest(mallory))).toEqual([0, 0, 0])
    expect(l.admitRequest(mallory)).toBe(500)
    expect(refused).toEqual([UserLimit.httpRequests])
    // Another user's budget is their own; services (API keys) are not counted per user.
    expect(l.admitRequest(user("alice"))).toBe(0)
    for (let i = 0; i < 10; i++) expect(l.admitRequest({ kind: "service", subject: "backend" })).toBe(0)
    advance(500)
    expect(l.admitRequest(mallory)).toBe(0)
    // Alice's one request was refilled by now: she is forgotten; mallory is still spending.
    expect(l.size).toBe(1)
    // Once her budget refilled, nothing of mallory is kept either.
    advance(2000)
    expect(l.size).toBe(0)
  })

  it("turns off with a rate of 0", () => {
    const l = new UserLedger({ ...DEFAULT_USER_LIMITS, userHttpRequestsPerSecond: 0 })
    for (let i = 0; i < 1000; i++) expect(l.admitRequest(mallory)).toBe(0)
  })
})

describe("LinkPreviewGate", () => {
  const page = (url: string): LinkPreview => ({ url, title: `title of ${url}` })

  it("keeps at most cacheEntries answers, and forgets a user once their budget refilled", async () => {
    vi.useFakeTimers()
    let now = 0
    const fetched: string[] = []
    const gate = new LinkPreviewGate(
      async (url) => {
        fetched.push(url)
        return page(url)
      },
      { ...DEFAULT_LINK_PREVIEW_LIMITS, perUserPerMinute: 60, cacheEntries: 2 },
      undefined,
      () => now,
    )
    const alice = "alice" as UserId
    for (const path of ["a", "b", "c"]) await gate.preview(alice, `https://example.com/${path}`)
    // The oldest answer made room: asked again, it is fetched again; the newest is not.
    await gate.preview(alice, "https://example.com/c")
    await gate.preview(alice, "https://example.com/a")
    expect(fetched).toEqual([
      "https://example.com/a",
      "https://example.com/b",
      "https://example.com/c",
      "https://example.com/a",
    ])
    expect(gate.trackedUsers).toBe(1)
    now += 60_000
    vi.advanceTimersByTime(60_000)
    expect(gate.trackedUsers).toBe(0)
    expect(gate.inFlight).toBe(0)
  })

  it("serves an answer until it expires, and a failure for a shorter time", async () => {
    let now = 0
    let calls = 0
    const gate = new LinkPreviewGate(
      async (url) => {
        calls++
        if (url.includes("down")) throw new ParleyError(ErrorCode.UNAVAILABLE, "cannot preview the link")
        return page(url)
      },
      { ...DEFAULT_LINK_PREVIEW_LIMITS, perUserPerMinute: 0, cacheMs: 10_000, failureCacheMs: 1_000 },
      undefined,
      () => now,
    )
    const bob = "bob" as UserId
    await gate.preview(bob, "https://example.com/up")
    await expect(gate.preview(bob, "https://example.com/down")).rejects.toThrow(ParleyError)
    await expect(gate.preview(bob, "https://example.com/down")).rejects.toThrow(ParleyError)
    await gate.preview(bob, "https://example.com/up")
    expect(calls).toBe(2)
    now += 1_001
    await expect(gate.preview(bob, "https://example.com/down")).rejects.toThrow(ParleyError)
    await gate.preview(bob, "https://example.com/up")
    expect(calls).toBe(3)
    now += 10_000
    await gate.preview(bob, "https://example.com/up")
    expect(calls).toBe(4)
  })
})
