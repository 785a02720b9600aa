import "fake-indexeddb/auto"
import { createECDH, randomBytes } from "node:crypto"
import { SignJWT } from "jose"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { isPushWake, WAKE_NOTIFICATION } from "../src/index.js"
import type { PushDevice } from "../src/push.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

const secret = "push-test-secret-push-test-secret-push-test-secret"
let relay: RelayProcess
beforeAll(async () => {
  // Dev mode makes throwaway VAPID keys; the endpoints below are local, which only this flag allows.
  // The app's secret too: the renewal tests sign tokens with the expiry they need.
  relay = await startRelay({ args: ["--dev", "--push-allow-insecure-endpoints", "--auth-secret", secret] })
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

/** A subscription as `PushSubscription.toJSON()` gives it (keys made here, as a browser would). */
function subscription(path: string) {
  const ecdh = createECDH("prime256v1")
  ecdh.generateKeys()
  return {
    endpoint: `http://127.0.0.1:9/push/${path}`,
    expirationTime: null,
    keys: { p256dh: ecdh.getPublicKey().toString("base64url"), auth: randomBytes(16).toString("base64url") },
  }
}

describe("client push registrations", () => {
  it("gives the relay's public key, registers this device for the signed-in user only, and unregisters it", async () => {
    const dana = await connectClient(relay, "danap")
    const erin = await connectClient(relay, "erinp")
    const key = await dana.push.publicKey()
    // An uncompressed P-256 point, as PushManager.subscribe takes for applicationServerKey.
    expect(Buffer.from(key, "base64url")).toHaveLength(65)
    const phone = subscription("dana-phone")
    const registered = await dana.registerPush("phone-1", phone)
    expect(registered).toMatchObject({ device: "phone-1", endpoint: phone.endpoint })
    expect((await dana.push.devices()).map((d) => d.device)).toEqual(["phone-1"])
    expect(await erin.push.devices()).toEqual([])
    expect(await erin.unregisterPush("phone-1")).toBe(false)
    expect(await dana.unregisterPush("phone-1")).toBe(true)
    expect(await dana.push.devices()).toEqual([])
  })

  it("rejects a malformed subscription with a typed error", async () => {
    const dana = await connectClient(relay, "danaq")
    const bad = { ...subscription("x"), keys: { p256dh: "nope", auth: "nope" } }
    await expect(dana.registerPush("phone-1", bad)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" })
    await expect(
      dana.registerPush("phone-1", { ...subscription("y"), endpoint: "ftp://x/y" }),
    ).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    })
  })
})

/** A token of `user` expiring `seconds` from now, signed as the app's backend would. */
async function tokenFor(user: string, seconds: number): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(user)
    .setIssuedAt(now)
    .setExpirationTime(now + seconds)
    .sign(new TextEncoder().encode(secret))
}

/** The user's devices as the relay lists them, asked with a token of the test's own (not the client's). */
async function devicesOf(user: string): Promise<PushDevice[]> {
  const response = await fetch(`${relay.httpUrl}/v1/me/push-subscriptions`, {
    headers: { authorization: `Bearer ${await tokenFor(user, 600)}` },
  })
  return ((await response.json()) as { devices: PushDevice[] }).devices
}

describe("client push renewals", () => {
  it("renews this device's registration when it connects again with a token that lives longer", async () => {
    // Each token the app's backend hands out expires ten minutes later than the one before.
    let lifetime = 600
    const issued: number[] = []
    const frank = await connectClient(relay, "frankr", {
      token: async () => {
        lifetime += 600
        const token = await tokenFor("frankr", lifetime)
        issued.push(Math.floor(Date.now() / 1000) + lifetime)
        return token
      },
    })
    await frank.registerPush("phone-1", subscription("frank-phone"))
    const [registered] = await devicesOf("frankr")
    expect(registered!.credentialsUntil).not.toBeNull()
    frank.disconnect()
    frank.connect()
    // The relay would send this device only wake-ups after the registering token's expiry: the
    // reconnect's fresh token moves that later.
    await eventually(async () => {
      const [renewed] = await devicesOf("frankr")
      expect(renewed!.credentialsUntil).toBeGreaterThan(registered!.credentialsUntil! + 60_000)
    })
    // Still the same subscription, not a new one.
    const [renewed] = await devicesOf("frankr")
    expect(renewed).toMatchObject({ device: "phone-1", createdAt: registered!.createdAt })
  })
})

describe("client push renewals with short-lived tokens", () => {
  it("renews this device's registration with each token refreshed ahead of expiry on an open connection", async () => {
    // Tokens of 8 s: the open connection refreshes each about halfway through its life.
    const henry = await connectClient(relay, "henryr", { token: () => tokenFor("henryr", 8) })
    await henry.registerPush("phone-1", subscription("henry-phone"))
    const [registered] = await devicesOf("henryr")
    const chat = await henry.directConversation("ivyr")
    await eventually(async () => {
      const [renewed] = await devicesOf("henryr")
      expect(renewed!.credentialsUntil).toBeGreaterThan(registered!.credentialsUntil!)
    })
    chat.close()
  })
})

describe("push payloads in the service worker", () => {
  it("tells a content-free wake-up from a notification, and shows nothing of a message for it", () => {
    expect(isPushWake({ wake: true })).toBe(true)
    expect(isPushWake({ title: "Launch", body: "Ship it" })).toBe(false)
    expect(isPushWake(undefined)).toBe(false)
    expect(WAKE_NOTIFICATION.title).toBe("New messages")
  })
})
