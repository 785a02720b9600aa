import type { UserId } from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

describe("a user's token on the HTTP API's routes, and on push routes of a relay without push", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess({})
  })
  afterAll(() => stopRelayProcesses())

  it("answer 404 'push is off' to a user's token, as many times as an app asks, without locking its address out", async () => {
    const token = await relay.token(alice)
    // Past the address's 120 failed sign-ins a minute: before, each was a 401 "a valid API key is
    // required" counted as one, and the next user behind the same address was refused 429.
    for (let i = 0; i < 130; i++) {
      const answer = await fetch(`${relay.httpUrl}/v1/me/push-subscriptions`, {
        headers: { authorization: `Bearer ${token}` },
      })
      expect(answer.status).toBe(404)
      expect(await answer.json()).toMatchObject({
        code: "NOT_FOUND",
        detail: expect.stringContaining("push is off"),
      })
    }
    // The HTTP API's other routes too: a user's token is no API key, told 403, not a failed sign-in.
    for (const path of ["/v1/conversations/g~push-off", "/v1/me/x", "/v1/events"]) {
      for (let i = 0; i < 50; i++) {
        const answer = await fetch(`${relay.httpUrl}${path}`, {
          headers: { authorization: `Bearer ${token}` },
        })
        expect(answer.status).toBe(403)
        expect(await answer.json()).toMatchObject({
          code: "FORBIDDEN",
          detail: expect.stringContaining("API key"),
        })
      }
    }
    const key = await fetch(`${relay.httpUrl}/v1/push/public-key`)
    expect(key.status).toBe(404)
    // Another user of the same address gets in.
    const client = new TestClient(relay.url, "g~push-off", await relay.token(bob))
    try {
      await client.synced()
      expect(client.closeEvent).toBeUndefined()
    } finally {
      client.close()
    }
  })
})
