import type { UserId } from "@parley/shared"
import pino from "pino"
import { describe, expect, it, vi } from "vitest"
import { type DeviceJob, DeviceSends, type SendOutcome } from "../../src/push/device-sends.js"
import type { PushNotification } from "../../src/push/notification.js"
import { MemoryPushSubscriptionStore, type PushSubscriptionRecord } from "../../src/push/store.js"

const sub: PushSubscriptionRecord = {
  user: "bob" as UserId,
  device: "phone",
  endpoint: "https://push.example/x",
  p256dh: "k",
  auth: "a",
  createdAt: 1,
}
const job = (conversation: string, body: string, expiresAt = Date.now() + 60_000): DeviceJob => ({
  conversation,
  payload: body,
  notification: {} as PushNotification,
  expiresAt,
})

describe("a set-aside device", () => {
  it("waits with the newest notification per conversation, drops expired ones, and gets the rest once it answers", async () => {
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
    const signal = new AbortController().signal
    // Fails: set aside at once; the offers after it are not even tried, nobody waits for them.
    await sends.offer(sub, job("g~a", "a1"), signal)
    await sends.offer(sub, job("g~a", "a2"), signal)
    await sends.offer(sub, job("g~b", "b1", Date.now() - 1), signal)
    await sends.offer(sub, job("g~c", "c1"), signal)
    expect(sent).toEqual(["a1"])
    answer = "sent"
    await vi.waitFor(() => expect(sent.slice(-2)).toEqual(["a2", "c1"]))
    expect(sent).not.toContain("b1")
    expect(sent.filter((s) => s === "a1")).toHaveLength(1)
  })
})
