import { createHash } from "node:crypto"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  inboxDocumentName,
  type Priority,
  sendMessage,
  setMuted,
  type UserId,
} from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import webpush from "web-push"
import { TestClient } from "../helpers/clients.js"
import {
  pushRelayArgs,
  type ReceivedPush,
  startPushReceiver,
  type TestSubscription,
} from "../helpers/push-receiver.js"
import {
  hooksApi,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../helpers/relay-process.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId

// A hook that vetoes notifications of messages containing "secret" and brands the others' titles.
const REWRITER = `import { defineHooks } from ${JSON.stringify(hooksApi())}
export default defineHooks({
  onPushNotification(notification, { recipient }) {
    if (notification.body.includes("secret")) return false
    return { ...notification, title: "Acme: " + notification.title, sender: { ...notification.sender, name: notification.sender.id.toUpperCase() } }
  },
})
`

describe("Web Push notifications from a relay process", () => {
  let relay: RelayProcess
  let receiver: Awaited<ReturnType<typeof startPushReceiver>>
  let hooks: string
  const vapid = webpush.generateVAPIDKeys()

  beforeAll(async () => {
    receiver = await startPushReceiver()
    hooks = mkdtempSync(join(tmpdir(), "parley-push-hooks-"))
    writeFileSync(join(hooks, "brand.mjs"), REWRITER)
    relay = await startRelayProcess({
      hooksUseHooksApi: true,
      args: [
        "--hooks",
        hooks,
        ...pushRelayArgs(true, vapid),
        "--push-retry-base-ms",
        "50",
        "--push-attempts",
        "3",
      ],
    })
  })
  afterAll(async () => {
    await stopRelayProcesses()
    await receiver.close()
    rmSync(hooks, { recursive: true, force: true })
  })

  const call = async (method: string, path: string, token: string | undefined, body?: unknown) => {
    const response = await fetch(`${relay.httpUrl}${path}`, {
      method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    const text = await response.text()
    return { status: response.status, body: text ? JSON.parse(text) : undefined }
  }
  const register = async (user: UserId, device: string, subscription: TestSubscription) =>
    call("POST", "/v1/me/push-subscriptions", await relay.token(user), { device, subscription })
  const devicesOf = async (user: UserId) =>
    (
      (await call("GET", "/v1/me/push-subscriptions", await relay.token(user))).body.devices as {
        device: string
      }[]
    ).map((d) => d.device)

  /** A group of alice, bob and carol, alice connected to it; returns her client. */
  async function group(id: ConversationId): Promise<TestClient> {
    const client = new TestClient(relay.url, id, await relay.token(alice))
    await client.opened
    await client.synced()
    createConversation(client.doc, alice, { kind: "group", id, title: "Launch", participants: [bob, carol] })
    await client.allSaved()
    return client
  }
  const send = async (client: TestClient, body: string, priority?: Priority) => {
    sendMessage(client.doc, alice, { body, ...(priority ? { priority } : {}) })
    await client.allSaved()
  }
  const pushesTo = (name: string) => receiver.received.filter((r: ReceivedPush) => r.subscription === name)

  it("registers, lists and removes a user's devices, and nobody else's", async () => {
    const phone = receiver.subscribe("lifecycle-phone")
    expect(
      (await call("POST", "/v1/me/push-subscriptions", undefined, { device: "x", subscription: phone }))
        .status,
    ).toBe(401)
    const service = await relay.token("ops", { role: "service" })
    expect(
      (await call("POST", "/v1/me/push-subscriptions", service, { device: "x", subscription: phone })).status,
    ).toBe(403)
    const malformed = await register(carol, "phone", { ...phone, keys: { ...phone.keys, p256dh: "short" } })
    expect(malformed.status).toBe(400)
    expect(malformed.body.code).toBe("INVALID_ARGUMENT")

    const created = await register(carol, "phone", phone)
    expect(created.status).toBe(200)
    expect(created.body).toMatchObject({ device: "phone", endpoint: phone.endpoint })
    expect(JSON.stringify(created.body)).not.toContain(phone.keys.auth)
    expect(await devicesOf(carol)).toEqual(["phone"])
    expect(await devicesOf(bob)).toEqual([])
    expect((await call("DELETE", "/v1/me/push-subscriptions/phone", await relay.token(bob))).status).toBe(404)
    expect(await devicesOf(carol)).toEqual(["phone"])
    expect((await call("DELETE", "/v1/me/push-subscriptions/phone", await relay.token(carol))).status).toBe(
      204,
    )
    expect(await devicesOf(carol)).toEqual([])
    const key = await call("GET", "/v1/push/public-key", undefined)
    expect(key.body).toEqual({ publicKey: vapid.publicKey })
  })

  it("sends each other participant's devices an encrypted, VAPID-signed notification with their badge, not the author", async () => {
    await register(alice, "a-phone", receiver.subscribe("n-alice"))
    await register(bob, "b-phone", receiver.subscribe("n-bob-phone"))
    await register(bob, "b-laptop", receiver.subscribe("n-bob-laptop"))
    await register(carol, "c-phone", receiver.subscribe("n-carol"))
    const client = await group("g~push-notify" as ConversationId)
    await send(client, "Ship it at noon")
    // The badge is the unread total when the notification goes out: the second message waits for the first push.
    await until(
      () => ["n-bob-phone", "n-bob-laptop", "n-carol"].map((n) => pushesTo(n).length),
      (counts) => counts.every((c) => c === 1),
    )
    await send(client, "and bring cake")
    await until(
      () => ["n-bob-phone", "n-bob-laptop", "n-carol"].map((n) => pushesTo(n).length),
      (counts) => counts.every((c) => c === 2),
    )
    expect(pushesTo("n-alice")).toEqual([])
    expect(receiver.rejected).toEqual([])
    const [first, second] = pushesTo("n-bob-phone")
    expect(first!.payload).toMatchObject({
      title: "Acme: Launch",
      body: "Ship it at noon",
      sender: { id: "alice", name: "ALICE" },
      conversationId: "g~push-notify",
      priority: "normal",
      urgency: "normal",
    })
    // The badge is bob's unread total: one, then two.
    expect([first!.payload.badge, second!.payload.badge]).toEqual([1, 2])
    expect(first!.headers.urgency).toBe("normal")
    expect(Number(first!.headers.ttl)).toBeGreaterThan(0)
    // The Topic (sent in the clear) is the same for a device's notifications of one conversation, so
    // its push service keeps only the latest, but names nothing: not the conversation id's hash,
    // and not the same on another device, so that the push service cannot link them.
    const topic = first!.headers.topic
    expect(topic).toMatch(/^[\w-]{32}$/)
    expect(second!.headers.topic).toBe(topic)
    expect(topic).not.toBe(createHash("sha256").update("g~push-notify").digest("base64url").slice(0, 32))
    const others = [...pushesTo("n-bob-laptop"), ...pushesTo("n-carol")].map((p) => p.headers.topic)
    expect(new Set([topic, ...others]).size).toBe(3)
    expect(first!.vapid).toMatchObject({ sub: "mailto:ops@example.com", k: vapid.publicKey })
    expect(first!.vapid.aud).toBe(new URL(receiver.subscribe("unused").endpoint).origin)
    client.close()
  })

  it("skips a recipient connected to the conversation, and pushes again once they left", async () => {
    await register(bob, "b-phone", receiver.subscribe("a-bob"))
    await register(carol, "c-phone", receiver.subscribe("a-carol"))
    const id = "g~push-active" as ConversationId
    const client = await group(id)
    const bobThere = new TestClient(relay.url, id, await relay.token(bob))
    await bobThere.opened
    await bobThere.synced()
    await send(client, "you are here")
    await until(
      () => pushesTo("a-carol").length,
      (n) => n === 1,
    )
    expect(pushesTo("a-bob")).toEqual([])
    bobThere.close()
    // The close reaches the relay asynchronously.
    await new Promise((r) => setTimeout(r, 200))
    await send(client, "now you are not")
    await until(
      () => pushesTo("a-carol").length,
      (n) => n === 2,
    )
    await until(
      () => pushesTo("a-bob").map((p) => p.payload.body),
      (b) => b.length === 1,
    )
    expect(pushesTo("a-bob").map((p) => p.payload.body)).toEqual(["now you are not"])
    client.close()
  })

  it("respects a mute, except for an emergency, which goes at high urgency", async () => {
    await register(bob, "b-phone", receiver.subscribe("m-bob"))
    await register(carol, "c-phone", receiver.subscribe("m-carol"))
    const id = "g~push-mute" as ConversationId
    const client = await group(id)
    const inbox = new TestClient(relay.url, inboxDocumentName(bob), await relay.token(bob))
    await inbox.opened
    await inbox.synced()
    setMuted(inbox.doc, id, true)
    await inbox.allSaved()
    inbox.close()
    await send(client, "routine")
    await send(client, "the server room is on fire", "emergency")
    await until(
      () => pushesTo("m-carol").length,
      (n) => n === 2,
    )
    await until(
      () => pushesTo("m-bob").length,
      (n) => n === 1,
    )
    const [emergency] = pushesTo("m-bob")
    expect(emergency!.payload).toMatchObject({
      body: "the server room is on fire",
      priority: "emergency",
      urgency: "high",
    })
    expect(emergency!.headers.urgency).toBe("high")
    expect(pushesTo("m-carol").map((p) => p.headers.urgency)).toEqual(["normal", "high"])
    client.close()
  })

  it("lets a hook veto a notification", async () => {
    await register(bob, "b-phone", receiver.subscribe("v-bob"))
    const client = await group("g~push-veto" as ConversationId)
    await send(client, "the secret plan")
    await send(client, "public news")
    await until(
      () => pushesTo("v-bob").length,
      (n) => n >= 1,
    )
    await new Promise((r) => setTimeout(r, 200))
    expect(pushesTo("v-bob").map((p) => p.payload.body)).toEqual(["public news"])
    client.close()
  })

  it("drops a subscription its push service says is gone (410), and keeps the user's others", async () => {
    await register(bob, "b-old", receiver.subscribe("g-old", [410]))
    await register(bob, "b-new", receiver.subscribe("g-new"))
    const client = await group("g~push-gone" as ConversationId)
    await send(client, "hello")
    await until(
      () => devicesOf(bob),
      (devices) => !devices.includes("b-old"),
    )
    expect(await devicesOf(bob)).toContain("b-new")
    expect(pushesTo("g-new").length).toBe(1)
    client.close()
  })

  it("retries a device whose push service failed on its own, holding up nobody else, and drops its notification after the last try", async () => {
    for (const device of await devicesOf(bob))
      await call("DELETE", `/v1/me/push-subscriptions/${device}`, await relay.token(bob))
    await register(bob, "b-flaky", receiver.subscribe("r-flaky", [500, 503, 201]))
    await register(bob, "b-fine", receiver.subscribe("r-fine"))
    await register(carol, "c-down", receiver.subscribe("r-down", [500]))
    const client = await group("g~push-retry" as ConversationId)
    const dropped = relay.waitForLog(
      (line) => line.msg === "push to a device kept failing: its notifications were dropped",
    )
    await send(client, "eventually")
    await until(
      () => pushesTo("r-flaky").map((p) => p.status),
      (s) => s.length === 3,
    )
    expect(pushesTo("r-flaky").map((p) => p.status)).toEqual([500, 503, 201])
    expect(pushesTo("r-fine").length).toBe(1)
    // Three tries (--push-attempts), then carol's notification is dropped (stale by then), not dead-lettered:
    // the event was delivered, to every device that could take it.
    expect((await dropped).user).toBe(carol)
    expect(pushesTo("r-down").length).toBe(3)
    const service = await relay.token("ops", { role: "service" })
    const dead = (await (
      await fetch(`${relay.httpUrl}/admin/dead-letters`, { headers: { authorization: `Bearer ${service}` } })
    ).json()) as { deadLetters: { target: string }[] }
    expect(dead.deadLetters.filter((d) => d.target === "push")).toEqual([])
    // The conversation's next message reaches bob's devices though carol's service is still down.
    await send(client, "next")
    await until(
      () => pushesTo("r-fine").length,
      (n) => n === 2,
    )
    client.close()
  })
})
