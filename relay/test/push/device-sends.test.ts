import type { UserId } from "@parley/shared"
import pino from "pino"
import { describe, expect, it, vi } from "vitest"
import { InFlightLimit, USER_CHOSEN_REQUESTS_IN_FLIGHT } from "../../src/outbound.js"
import {
  type DeviceJob,
  DeviceSends,
  MAX_ASIDE_TRIES_IN_FLIGHT,
  MAX_FRESH_TRIES_PER_USER,
  MAX_PUSH_RETRY_AFTER_MS,
  type SendOutcome,
} from "../../src/push/device-sends.js"
import type { PushNotification } from "../../src/push/notification.js"
import { MemoryPushSubscriptionStore, type PushSubscriptionRecord } from "../../src/push/store.js"
import { RetryAfterError } from "../../src/retry-after.js"

const sub: PushSubscriptionRecord = {
  user: "bob" as UserId,
  device: "phone",
  endpoint: "https://push.example/x",
  p256dh: "k",
  auth: "a",
  createdAt: 1,
  credentialsUntil: null,
}
const job = (conversation: string, body: string, expiresAt = Date.now() + 60_000): DeviceJob => ({
  conversation,
  payload: body,
  // The message id is the body here: a purge names messages by id.
  notification: { messageId: body } as PushNotification,
  expiresAt,
})

/** Sends to {@link sub}'s device, whose push service fails until told `answer("sent")`. */
async function failingDevice() {
  const store = new MemoryPushSubscriptionStore()
  await store.put(sub)
  const sent: string[] = []
  let answer: SendOutcome = new Error("push service answered 503")
  const sends = new DeviceSends({
    send: async (_sub, j) => {
      sent.push(j.payload)
      return answer
    },
    store,
    retryDelay: (failures) => (failures < 5 ? 30 : undefined),
    timeoutMs: 1_000,
    log: pino({ level: "silent" }),
  })
  return { sends, sent, answer: (next: SendOutcome) => (answer = next) }
}

describe("a set-aside device", () => {
  it("waits with the newest notification per conversation, drops expired ones, and gets the rest once it answers", async () => {
    const { sends, sent, answer } = await failingDevice()
    const signal = new AbortController().signal
    // Fails: set aside at once; the offers after it are not even tried, nobody waits for them.
    await sends.offer(sub, job("g~a", "a1"), signal)
    await sends.offer(sub, job("g~a", "a2"), signal)
    await sends.offer(sub, job("g~b", "b1", Date.now() - 1), signal)
    await sends.offer(sub, job("g~c", "c1"), signal)
    expect(sent).toEqual(["a1"])
    answer("sent")
    await vi.waitFor(() => expect(sent.slice(-2)).toEqual(["a2", "c1"]))
    expect(sent).not.toContain("b1")
    expect(sent.filter((s) => s === "a1")).toHaveLength(1)
  })
})

describe("a user whose device failed", () => {
  it("has fresh devices served in the background: registering new ones on a hanging endpoint holds up nobody", async () => {
    const store = new MemoryPushSubscriptionStore()
    const tried: string[] = []
    const sends = new DeviceSends({
      // Mallory's endpoints accept and never answer.
      send: (s, _j, signal) =>
        new Promise<SendOutcome>((resolve) => {
          tried.push(s.device)
          signal.addEventListener("abort", () => resolve(new Error("aborted")), { once: true })
        }),
      store,
      retryDelay: () => 60_000,
      timeoutMs: 200,
      log: pino({ level: "silent" }),
    })
    const signal = new AbortController().signal
    const offer = async (device: string, body: string) => {
      const fresh = { ...sub, user: "mallory" as UserId, device }
      await store.put(fresh)
      const started = Date.now()
      await sends.offer(fresh, job("g~a", body), signal)
      return Date.now() - started
    }
    // The first hang costs one timeout; a fresh device id before each later message cost one more each.
    expect(await offer("d1", "m1")).toBeGreaterThanOrEqual(190)
    for (let i = 2; i <= 5; i++) expect(await offer(`d${i}`, `m${i}`)).toBeLessThan(50)
    // Still sent to, in the background.
    await vi.waitFor(() => expect(tried).toEqual(["d1", "d2", "d3", "d4", "d5"]))
  })
})

describe("many users' devices on hanging endpoints", () => {
  it("take few of the relay's outbound slots, so that an honest device's notification goes at once", async () => {
    const store = new MemoryPushSubscriptionStore()
    // The relay's one limit of requests to user-chosen addresses (USER_CHOSEN_REQUESTS_IN_FLIGHT).
    const outbound = new InFlightLimit(USER_CHOSEN_REQUESTS_IN_FLIGHT)
    let inFlight = 0
    let most = 0
    const sends = new DeviceSends({
      send: (s, _j, signal) =>
        outbound.run(signal, async () => {
          if (!s.user.startsWith("mallory")) return "sent"
          inFlight++
          most = Math.max(most, inFlight)
          // Accepts and never answers.
          return new Promise<SendOutcome>((resolve) => {
            signal.addEventListener(
              "abort",
              () => {
                inFlight--
                resolve(new Error("aborted"))
              },
              { once: true },
            )
          })
        }),
      store,
      retryDelay: () => 50,
      timeoutMs: 2_000,
      log: pino({ level: "silent" }),
    })
    const signal = new AbortController().signal
    // Ten accounts of twenty devices each, one endpoint origin per device: a message to all of them.
    const attackers: Promise<void>[] = []
    for (let u = 0; u < 10; u++)
      for (let d = 0; d < 20; d++) {
        const device = { ...sub, user: `mallory${u}` as UserId, device: `d${d}` }
        await store.put(device)
        attackers.push(sends.offer(device, job("g~a", `m${u}-${d}`), signal))
      }
    const honest = { ...sub, user: "bob" as UserId, device: "phone" }
    await store.put(honest)
    const started = Date.now()
    await sends.offer(honest, job("g~a", "hello"), signal)
    // Before: 200 hanging first tries took all 64 slots, and bob's waited for a timeout (2 s here).
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(most).toBeLessThanOrEqual(10 * MAX_FRESH_TRIES_PER_USER)
    await Promise.all(attackers)
    // Set aside, their retries take no more than their share while bob's next notification goes.
    await new Promise((resolve) => setTimeout(resolve, 300))
    const again = Date.now()
    await sends.offer(honest, job("g~b", "again"), signal)
    expect(Date.now() - again).toBeLessThan(1_000)
    expect(inFlight).toBeLessThanOrEqual(MAX_ASIDE_TRIES_IN_FLIGHT)
  })
})

describe("a push service asking for time", () => {
  it("is tried again no sooner than its Retry-After asked, within an hour", async () => {
    vi.useFakeTimers()
    try {
      const store = new MemoryPushSubscriptionStore()
      await store.put(sub)
      const sent: number[] = []
      const answers: SendOutcome[] = [
        new RetryAfterError("push service answered 429", 120_000),
        new RetryAfterError("push service answered 503", 86_400_000),
        "sent",
      ]
      const sends = new DeviceSends({
        send: async () => {
          sent.push(Date.now())
          return answers.shift()!
        },
        store,
        retryDelay: (failures) => (failures < 5 ? 30 : undefined),
        timeoutMs: 1_000,
        log: pino({ level: "silent" }),
      })
      const start = Date.now()
      // Its time to live outlasts the waits.
      await sends.offer(sub, job("g~a", "a1", start + 86_400_000), new AbortController().signal)
      await vi.advanceTimersByTimeAsync(119_000)
      expect(sent).toHaveLength(1)
      await vi.advanceTimersByTimeAsync(1_100)
      expect(sent).toHaveLength(2)
      // A day asked for: an hour at most.
      await vi.advanceTimersByTimeAsync(MAX_PUSH_RETRY_AFTER_MS - 1_000)
      expect(sent).toHaveLength(2)
      await vi.advanceTimersByTimeAsync(2_000)
      expect(sent).toHaveLength(3)
      expect(sent[1]! - start).toBeGreaterThanOrEqual(120_000)
    } finally {
      vi.useRealTimers()
    }
  })
})

describe("a purge", () => {
  it("drops the notifications of purged messages and conversations a set-aside device waits with, and any offered later", async () => {
    const { sends, sent, answer } = await failingDevice()
    const signal = new AbortController().signal
    await sends.offer(sub, job("g~a", "a1"), signal)
    await sends.offer(sub, job("g~a", "a2"), signal)
    await sends.offer(sub, job("g~b", "b1"), signal)
    await sends.offer(sub, job("g~c", "c1"), signal)
    sends.purged("g~a", { kind: "messages", ids: new Set(["a2"]) })
    sends.purged("g~c", { kind: "conversation" })
    expect(sends.waitingBytes()).toBe(2)
    // Built from an event before the purge reached it, offered after: not sent, not kept.
    await sends.offer(sub, job("g~c", "c2"), signal)
    expect(sends.waitingBytes()).toBe(2)
    answer("sent")
    await vi.waitFor(() => expect(sent.at(-1)).toBe("b1"))
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(sent).toEqual(["a1", "b1"])
  })
})

describe("devices that fail together", () => {
  const failing = (
    store: MemoryPushSubscriptionStore,
    sent: string[],
    gate: Promise<void>,
    maxWaitingBytes?: number,
  ) => {
    let answer: SendOutcome = new Error("push service answered 503")
    const sends = new DeviceSends({
      send: async (_sub, j) => {
        sent.push(j.payload)
        await gate
        return answer
      },
      store,
      retryDelay: (failures) => (failures < 5 ? 30 : undefined),
      timeoutMs: 1_000,
      log: pino({ level: "silent" }),
      ...(maxWaitingBytes !== undefined ? { maxWaitingBytes } : {}),
    })
    return { sends, answer: (a: SendOutcome) => (answer = a) }
  }

  it("keeps both conversations' notifications when two first tries fail at once", async () => {
    const store = new MemoryPushSubscriptionStore()
    await store.put(sub)
    const sent: string[] = []
    let open!: () => void
    const gate = new Promise<void>((resolve) => (open = resolve))
    const { sends, answer } = failing(store, sent, gate)
    const signal = new AbortController().signal
    // Both tries are in flight before either fails.
    const both = Promise.all([
      sends.offer(sub, job("g~a", "a1"), signal),
      sends.offer(sub, job("g~b", "b1"), signal),
    ])
    await vi.waitFor(() => expect(sent).toEqual(["a1", "b1"]))
    open()
    await both
    answer("sent")
    await vi.waitFor(() => expect(sent.slice(2).sort()).toEqual(["a1", "b1"]))
  })

  it("holds at most the byte budget for all set-aside devices and drops what comes beyond", async () => {
    const store = new MemoryPushSubscriptionStore()
    const subs = Array.from({ length: 4 }, (_, i) => ({ ...sub, user: `user${i}` as UserId }))
    for (const s of subs) await store.put(s)
    const sent: string[] = []
    const { sends, answer } = failing(store, sent, Promise.resolve(), 10_000)
    const signal = new AbortController().signal
    const big = (c: string) => job(c, c.padEnd(3_000, "x"))
    for (const s of subs) await sends.offer(s, big(`g~${s.user}-1`), signal)
    expect(sends.waitingBytes()).toBe(9_000)
    for (const s of subs) await sends.offer(s, big(`g~${s.user}-2`), signal)
    expect(sends.waitingBytes()).toBeLessThanOrEqual(10_000)
    answer("sent")
    await vi.waitFor(() => expect(sends.waitingBytes()).toBe(0))
    // The first three devices' first notifications were kept and sent again; the rest did not fit.
    expect(sent.slice(4).sort()).toEqual(subs.slice(0, 3).map((s) => big(`g~${s.user}-1`).payload))
  })
})
