import type { ConversationId, MessageId, UserId } from "@parley/shared"
import pino from "pino"
import { describe, expect, it } from "vitest"
import webpush from "web-push"
import * as Y from "yjs"
import type { RunningCore } from "../../src/extension.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { pushTarget } from "../../src/push/push-target.js"
import { MemoryPushSubscriptionStore } from "../../src/push/store.js"

const bob = "bob" as UserId
// Every document reads as empty: bob's inbox lists nothing, so his badge is 0 and nothing is muted.
const core = {
  read: async (_name: string, read: (doc: Y.Doc) => unknown) => read(new Y.Doc()),
} as RunningCore
const event = {
  event: {
    id: "e1",
    type: "message.sent",
    time: 1,
    conversationId: "g~t" as ConversationId,
    actor: { kind: "user", user: "alice" },
  },
  subject: {
    message: {
      id: "m1" as MessageId,
      author: "alice",
      body: "hi",
      type: "text",
      createdAt: 1,
      priority: "normal",
      attachments: [],
      metadata: {},
      reactions: {},
    },
  },
  conversation: {
    id: "g~t",
    kind: "group",
    title: "T",
    metadata: {},
    createdBy: "alice",
    createdAt: 1,
    participants: [{ user: "alice" }, { user: "bob" }],
  },
} as unknown as HookEvent
const keys = () => {
  const { publicKey } = webpush.generateVAPIDKeys()
  return { p256dh: publicKey, auth: Buffer.alloc(16, 7).toString("base64url") }
}
const attempt = { attempt: 1, signal: new AbortController().signal }

describe("the push target's endpoint checks at send time", () => {
  const target = (store: MemoryPushSubscriptionStore, sent: string[]) =>
    pushTarget(core, {
      store,
      vapid: { ...webpush.generateVAPIDKeys(), subject: "mailto:ops@example.com" },
      log: pino({ level: "silent" }),
      isActive: () => false,
      fetch: (async (url: string) => {
        sent.push(url)
        return new Response(null, { status: 201 })
      }) as unknown as typeof fetch,
    })

  it("drops a subscription whose endpoint is now refused (a private address), sending nothing", async () => {
    const store = new MemoryPushSubscriptionStore()
    await store.put({ user: bob, device: "d", endpoint: "https://10.0.0.5/push", ...keys(), createdAt: 1 })
    const sent: string[] = []
    await target(store, sent).deliver(event, attempt)
    expect(sent).toEqual([])
    expect(await store.list(bob)).toEqual([])
  })

  it("keeps, and retries, a subscription whose host does not resolve right now", async () => {
    const store = new MemoryPushSubscriptionStore()
    await store.put({ user: bob, device: "d", endpoint: "https://push.invalid/x", ...keys(), createdAt: 1 })
    const sent: string[] = []
    await expect(target(store, sent).deliver(event, attempt)).rejects.toThrow(/push failed/)
    expect(sent).toEqual([])
    expect((await store.list(bob)).length).toBe(1)
  })
})

describe("the push target's answer from a push service", () => {
  it("reads only a little of an endless body (the endpoint is any user's choice), and counts the push as sent", async () => {
    const store = new MemoryPushSubscriptionStore()
    await store.put({
      user: bob,
      device: "d",
      endpoint: "https://93.184.215.14/push/x",
      ...keys(),
      createdAt: 1,
    })
    let pulled = 0
    let cancelled = false
    // Endless as far as the relay can tell: it stops at 64 MiB only so that a relay reading it whole ends.
    const chunk = new Uint8Array(64 * 1024)
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulled >= 64 * 1024 * 1024) return controller.close()
        pulled += chunk.byteLength
        controller.enqueue(chunk)
      },
      cancel() {
        cancelled = true
      },
    })
    const target = pushTarget(core, {
      store,
      vapid: { ...webpush.generateVAPIDKeys(), subject: "mailto:ops@example.com" },
      log: pino({ level: "silent" }),
      isActive: () => false,
      fetch: (async () => new Response(endless, { status: 201 })) as unknown as typeof fetch,
    })
    await target.deliver(event, attempt)
    expect(cancelled).toBe(true)
    expect(pulled).toBeLessThan(1024 * 1024)
    expect((await store.list(bob)).length).toBe(1)
  })
})
