import type { ConversationId, MessageId, UserId } from "@parley/shared"
import pino from "pino"
import { Registry } from "prom-client"
import { describe, expect, it } from "vitest"
import webpush from "web-push"
import * as Y from "yjs"
import type { RunningCore } from "../../src/extension.js"
import { Dispatcher } from "../../src/hooks/dispatcher.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { HookMetrics } from "../../src/hooks/metrics.js"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { redactEvent } from "../../src/purge/redact.js"
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
/** A store holding one device of bob's, at a public address. */
async function storeWithBobsDevice(): Promise<MemoryPushSubscriptionStore> {
  const store = new MemoryPushSubscriptionStore()
  await store.put({
    user: bob,
    device: "d",
    endpoint: "https://93.184.215.14/push/x",
    ...keys(),
    createdAt: 1,
    credentialsUntil: null,
  })
  return store
}

/** A push target whose push services all accept, recording the endpoints sent to in `sent`. */
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

describe("the push target's endpoint checks at send time", () => {
  it("drops a subscription whose endpoint is now refused (a private address), sending nothing", async () => {
    const store = new MemoryPushSubscriptionStore()
    await store.put({
      user: bob,
      device: "d",
      endpoint: "https://10.0.0.5/push",
      ...keys(),
      createdAt: 1,
      credentialsUntil: null,
    })
    const sent: string[] = []
    await target(store, sent).deliver(event, attempt)
    expect(sent).toEqual([])
    expect(await store.list(bob)).toEqual([])
  })

  it("keeps, and retries on its own, a subscription whose host does not resolve right now", async () => {
    const store = new MemoryPushSubscriptionStore()
    await store.put({
      user: bob,
      device: "d",
      endpoint: "https://push.invalid/x",
      ...keys(),
      createdAt: 1,
      credentialsUntil: null,
    })
    const sent: string[] = []
    // The event is delivered: the device is set aside and retried by its own schedule.
    await target(store, sent).deliver(event, attempt)
    expect(sent).toEqual([])
    expect((await store.list(bob)).length).toBe(1)
  })
})

describe("the push target's answer from a push service", () => {
  it("reads only a little of an endless body (the endpoint is any user's choice), and counts the push as sent", async () => {
    const store = await storeWithBobsDevice()
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

describe("the push target and purged events", () => {
  it("sends nothing for a message purged before the attempt, nor for a purged conversation's messages", async () => {
    const store = await storeWithBobsDevice()
    const sent: string[] = []
    const accepting = target(store, sent)
    await accepting.deliver(redactEvent(event, { kind: "messages", ids: new Set(["m1"]) }), attempt)
    await accepting.deliver(redactEvent(event, { kind: "conversation" }), attempt)
    expect(sent).toEqual([])
    // The same event, not purged, is sent.
    await accepting.deliver(event, attempt)
    expect(sent).toHaveLength(1)
  })
})

describe("one member's failing push service", () => {
  const victim = "victim" as UserId
  const attacker = "aaa-attacker" as UserId
  const conversation = "g~hol" as ConversationId
  const message = (n: number) =>
    ({
      ...event,
      event: { ...event.event, id: `e${n}`, conversationId: conversation },
      subject: { message: { ...(event.subject as { message: object }).message, id: `m${n}` as MessageId } },
      conversation: {
        ...event.conversation,
        id: conversation,
        participants: [{ user: "alice" }, { user: attacker }, { user: victim }],
      },
    }) as unknown as HookEvent

  /**
   * A dispatcher delivering to a push target whose push services are stubs: the attacker's devices
   * answer as `bad` says, every other one 201. Returns what each endpoint was sent, in order.
   */
  async function setup(bad: (signal: AbortSignal) => Promise<Response>) {
    const store = new MemoryPushSubscriptionStore()
    for (const device of ["phone", "laptop"])
      await store.put({
        user: attacker,
        device,
        endpoint: `http://127.0.0.1/bad/${device}`,
        ...keys(),
        createdAt: 1,
        credentialsUntil: null,
      })
    await store.put({
      user: victim,
      device: "phone",
      endpoint: "http://127.0.0.1/good/phone",
      ...keys(),
      createdAt: 2,
      credentialsUntil: null,
    })
    await store.put({
      user: victim,
      device: "tablet",
      endpoint: "http://127.0.0.1/good/tablet",
      ...keys(),
      createdAt: 3,
      credentialsUntil: null,
    })
    const sent: { endpoint: string; at: number }[] = []
    const push = pushTarget(core, {
      store,
      vapid: { ...webpush.generateVAPIDKeys(), subject: "mailto:ops@example.com" },
      log: pino({ level: "silent" }),
      isActive: () => false,
      endpoints: { allowHttp: true, allowPrivate: true },
      deviceTimeoutMs: 300,
      fetch: (async (url: string, init: RequestInit) => {
        sent.push({ endpoint: url, at: Date.now() })
        if (url.includes("/bad/")) return bad(init.signal!)
        return new Response(null, { status: 201 })
      }) as unknown as typeof fetch,
    })
    const outbox = new MemoryOutbox()
    // The hook timeout: before the fix, a hanging device held each message up this long, per try.
    const dispatcher = new Dispatcher({
      outbox,
      targets: [push],
      log: pino({ level: "silent" }),
      metrics: new HookMetrics(new Registry()),
      timeoutMs: 5_000,
    })
    const started = Date.now()
    for (const n of [1, 2, 3])
      dispatcher.add(
        await outbox.enqueue({ document: conversation, events: [{ event: message(n), targets: ["push"] }] }),
      )
    return { sent, dispatcher, outbox, started }
  }
  const to = (sent: { endpoint: string; at: number }[], path: string) =>
    sent.filter((s) => s.endpoint.endsWith(path))

  it("answering 503 holds up neither other members' notifications nor the conversation's next message", async () => {
    const { sent, dispatcher, outbox, started } = await setup(async () => new Response(null, { status: 503 }))
    await dispatcher.idle()
    // Each of the victim's devices got the three messages at once, each once; nothing is left owed.
    expect(to(sent, "/good/phone")).toHaveLength(3)
    expect(to(sent, "/good/tablet")).toHaveLength(3)
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(await outbox.pending()).toEqual([])
    expect(await outbox.deadLetters()).toEqual([])
    // The attacker's devices were tried once, each, then set aside (retried on their own schedule).
    expect(to(sent, "/bad/phone")).toHaveLength(1)
  })

  it("that never answers costs the others one device timeout, not a hook timeout per message", async () => {
    const { sent, dispatcher, started } = await setup(
      (signal) => new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason))),
    )
    await dispatcher.idle()
    const victimsPhone = to(sent, "/good/phone").map((s) => s.at - started)
    expect(victimsPhone).toHaveLength(3)
    // The first message waited for the attacker's devices' timeout (300 ms, together); the next ones for nothing.
    expect(victimsPhone[2]!).toBeLessThan(1_500)
  })
})
