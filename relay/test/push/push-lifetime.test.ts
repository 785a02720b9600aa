import { join } from "node:path"
import { type ConversationId, createConversation, sendMessage, type UserId } from "@parley/shared"
import Database from "better-sqlite3"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { SQLITE_FILE } from "../../src/backend/sqlite.js"
import { TestClient } from "../helpers/clients.js"
import { pushRelayArgs, startPushReceiver, type TestSubscription } from "../helpers/push-receiver.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId

// A token that leaked once must not read the user's messages after it expired: a push subscription
// it registered gets full notifications only while it (or a renewal's token) holds, content-free
// wake-ups after, for `--push-wake-days`, and is then deleted.
describe("push subscriptions outlive no token", () => {
  let receiver: Awaited<ReturnType<typeof startPushReceiver>>
  const vapidArgs = pushRelayArgs()
  const start = (extra: readonly string[] = []) =>
    startRelayProcess({
      args: [...vapidArgs, ...extra],
    })
  let relay: RelayProcess
  let dropping: RelayProcess

  beforeAll(async () => {
    receiver = await startPushReceiver()
    ;[relay, dropping] = await Promise.all([start(), start(["--push-wake-days", "0"])])
  })
  afterAll(async () => {
    await stopRelayProcesses()
    await receiver.close()
  })

  const call = async (on: RelayProcess, method: string, path: string, token: string, body?: unknown) => {
    const response = await fetch(`${on.httpUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    const text = await response.text()
    return { status: response.status, body: text ? JSON.parse(text) : undefined }
  }
  const register = (on: RelayProcess, token: string, device: string, subscription: TestSubscription) =>
    call(on, "POST", "/v1/me/push-subscriptions", token, { device, subscription })
  const devicesOf = async (on: RelayProcess, user: UserId) =>
    (
      (await call(on, "GET", "/v1/me/push-subscriptions", await on.token(user))).body.devices as {
        device: string
        credentialsUntil: number | null
      }[]
    ).map((d) => d.device)
  /** Resolves once the relay refuses `token` (it expired). */
  const expired = (on: RelayProcess, token: string) =>
    until(
      async () => (await call(on, "GET", "/v1/me/push-subscriptions", token)).status,
      (status) => status === 401,
    )
  /** A group of alice's with `others`; returns her client. */
  async function group(on: RelayProcess, id: ConversationId, others: UserId[]): Promise<TestClient> {
    const client = new TestClient(on.url, id, await on.token(alice))
    await client.opened
    await client.synced()
    createConversation(client.doc, alice, { kind: "group", id, title: "Door", participants: others })
    await client.allSaved()
    return client
  }
  const send = async (client: TestClient, body: string) => {
    sendMessage(client.doc, alice, { body })
    await client.allSaved()
  }
  const pushesTo = (name: string) => receiver.received.filter((r) => r.subscription === name)

  it("sends a device whose registering token expired a content-free wake-up, and full notifications again once renewed", async () => {
    const bob = "bob-renews" as UserId
    const phone = receiver.subscribe("l-bob")
    const leaked = await relay.token(bob, { expiresIn: "2s" })
    expect((await register(relay, leaked, "phone", phone)).status).toBe(200)
    await expired(relay, leaked)
    const client = await group(relay, "g~lifetime-wake" as ConversationId, [bob])
    await send(client, "the door code is 4711")
    await until(
      () => pushesTo("l-bob").length,
      (n) => n === 1,
    )
    const [wake] = pushesTo("l-bob")
    // Nothing of the message, the conversation or the user's activity: not even in the headers.
    expect(wake!.payload).toEqual({ wake: true })
    expect(wake!.headers.topic).toBe("wake")
    expect(wake!.headers.urgency).toBe("normal")

    // The device registers the same subscription again with a fresh token: a renewal.
    const fresh = await relay.token(bob)
    const renewed = await register(relay, fresh, "phone", phone)
    expect(renewed.status).toBe(200)
    expect(renewed.body.credentialsUntil).toBeGreaterThan(Date.now())
    await send(client, "and the alarm code is 1234")
    await until(
      () => pushesTo("l-bob").length,
      (n) => n === 2,
    )
    expect(pushesTo("l-bob")[1]!.payload).toMatchObject({
      body: "and the alarm code is 1234",
      conversationId: "g~lifetime-wake",
    })
    // An expired token renews nothing: the relay refuses it.
    expect((await register(relay, leaked, "phone", phone)).status).toBe(401)
    // A renewal only (what the SDK sends) creates nothing: a device removed elsewhere stays removed.
    expect((await call(relay, "DELETE", "/v1/me/push-subscriptions/phone", fresh)).status).toBe(204)
    const renewOnly = await call(relay, "POST", "/v1/me/push-subscriptions", fresh, {
      device: "phone",
      subscription: phone,
      renew: true,
    })
    expect(renewOnly.status).toBe(404)
    expect(await devicesOf(relay, bob)).toEqual([])
    client.close()
  })

  it("does not let a leaked token carry its lifetime to an endpoint it swaps into the user's device", async () => {
    const bob = "bob-swapped" as UserId
    const own = receiver.subscribe("s-own")
    const theirs = receiver.subscribe("s-theirs")
    expect((await register(relay, await relay.token(bob), "phone", own)).status).toBe(200)
    // While it holds, the leaked token replaces the device's subscription with the attacker's.
    const leaked = await relay.token(bob, { expiresIn: "2s" })
    expect((await register(relay, leaked, "phone", theirs)).status).toBe(200)
    await expired(relay, leaked)
    const client = await group(relay, "g~lifetime-swap" as ConversationId, [bob])
    await send(client, "the door code is 4711")
    await until(
      () => pushesTo("s-theirs").length,
      (n) => n === 1,
    )
    expect(pushesTo("s-theirs")[0]!.payload).toEqual({ wake: true })
    client.close()
  })

  it("deletes a subscription not renewed within the grace after its token expired, sending it nothing", async () => {
    const bob = "bob-dropped" as UserId
    const carol = "carol-dropped" as UserId
    const leaked = await dropping.token(bob, { expiresIn: "2s" })
    expect((await register(dropping, leaked, "phone", receiver.subscribe("d-bob"))).status).toBe(200)
    expect(
      (await register(dropping, await dropping.token(carol), "phone", receiver.subscribe("d-carol"))).status,
    ).toBe(200)
    await expired(dropping, leaked)
    const dropped = dropping.waitForLog(
      (line) => line.msg === "push subscription not renewed since its credentials expired: dropped",
    )
    const client = await group(dropping, "g~lifetime-drop" as ConversationId, [bob, carol])
    await send(client, "the door code is 4711")
    expect((await dropped).user).toBe(bob)
    await until(
      () => pushesTo("d-carol").length,
      (n) => n === 1,
    )
    expect(pushesTo("d-bob")).toEqual([])
    expect(await devicesOf(dropping, bob)).toEqual([])
    client.close()
  })

  it("deletes the subscriptions past their grace at start, also those of users nobody writes to", async () => {
    const bob = "bob-swept" as UserId
    const carol = "carol-swept" as UserId
    const first = await start(["--push-wake-days", "0"])
    const leaked = await first.token(bob, { expiresIn: "2s" })
    expect((await register(first, leaked, "phone", receiver.subscribe("w-bob"))).status).toBe(200)
    expect(
      (await register(first, await first.token(carol), "phone", receiver.subscribe("w-carol"))).status,
    ).toBe(200)
    await expired(first, leaked)
    await first.kill()
    await startRelayProcess({
      args: [...vapidArgs, "--push-wake-days", "0"],
      dataDir: first.dataDir,
      secret: first.secret,
    })
    // Read from the table, not through the API (a listing drops lapsed ones itself): no message and no
    // request of bob's comes, and his leaked token's endpoint and keys are still deleted.
    const stored = () => {
      const db = new Database(join(first.dataDir, SQLITE_FILE), { readonly: true })
      try {
        return (db.prepare("SELECT user_id FROM parley_push_subscriptions").all() as { user_id: string }[])
          .map((row) => row.user_id)
          .sort()
      } finally {
        db.close()
      }
    }
    await until(stored, (users) => !users.includes(bob))
    expect(stored()).toEqual([carol])
  })

  it("lets the user register a device after a leaked token that filled the device limit expired", async () => {
    const bob = "bob-locked" as UserId
    const leaked = await relay.token(bob, { expiresIn: "2s" })
    for (let i = 0; i < 20; i++)
      expect((await register(relay, leaked, `attacker-${i}`, receiver.subscribe(`f-${i}`))).status).toBe(200)
    // While the leaked token holds, the limit holds against it.
    expect((await register(relay, leaked, "attacker-20", receiver.subscribe("f-20"))).status).toBe(409)
    await expired(relay, leaked)
    const own = await register(relay, await relay.token(bob), "own-phone", receiver.subscribe("f-own"))
    expect(own.status).toBe(200)
    const devices = await devicesOf(relay, bob)
    expect(devices).toContain("own-phone")
    // The attacker's oldest made room; the limit still bounds what is stored.
    expect(devices).toHaveLength(20)
    expect(devices).not.toContain("attacker-0")
  })
})
