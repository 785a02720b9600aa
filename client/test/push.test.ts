import "fake-indexeddb/auto"
import { createECDH, randomBytes } from "node:crypto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { connectClient, destroyClients, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  // Dev mode makes throwaway VAPID keys; the endpoints below are local, which only this flag allows.
  relay = await startRelay({ args: ["--dev", "--push-allow-insecure-endpoints"] })
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
