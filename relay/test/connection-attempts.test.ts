import {
  AddressLimit,
  CloseCode,
  createConversation,
  listMessages,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { AddressLimiter, keyOf } from "../src/address-limits.js"
import { apiClient, createKey, freshDataDir } from "./api/helpers.js"
import { stockProvider, synced, TestClient } from "./helpers/clients.js"
import {
  metricLine,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

// Each y-websocket provider in Node listens for the process's exit.
process.setMaxListeners(100)

const clients: TestClient[] = []
const providers: WebsocketProvider[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const p of providers.splice(0)) p.destroy()
  await stopRelayProcesses()
})

async function open(relay: RelayProcess, name: string, user: UserId) {
  const c = new TestClient(relay.url, name, await relay.token(user))
  clients.push(c)
  await c.synced()
  return c
}

/** One connection attempt: how it ended (a close code and reason, or the HTTP status of a refused upgrade). */
function attempt(
  url: string,
  closeWhenOpen = true,
  headers: Record<string, string> = {},
): Promise<{ code?: number; reason?: string; status?: number; body?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers })
    ws.on("unexpected-response", (_req, res) => {
      let body = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        body += chunk
      })
      res.on("end", () => resolve({ status: res.statusCode!, body: body.trim() }))
    })
    ws.on("error", () => {})
    // Open: the relay let it in; close at once, as a reconnect loop does.
    ws.on("open", () => closeWhenOpen && setTimeout(() => ws.close(), 5))
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() }))
  })
}

async function pollUntil(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 20))
}

const bodies = (c: TestClient) => listMessages(c.doc, { last: 1000 }).map((m) => m.body)

describe("connection attempts per user", () => {
  it("holds a reconnect loop to the user's budget with 4429 connection-attempts-per-user while an honest pair keeps chatting", async () => {
    const relay = await startRelayProcess({ args: ["--user-connection-attempts-per-minute", "40"] })
    const id = newConversationId()
    const a = await open(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob, mallory] })
    await a.allSaved()
    const b = await open(relay, id, bob)

    const token = await relay.token(mallory)
    const url = `${relay.url}/${id}?token=${token}`
    const results: { code?: number; reason?: string; status?: number; body?: string }[] = []
    // The attacker opens and closes sockets in a loop, several at a time, while alice writes.
    const loop = (async () => {
      for (let i = 0; i < 30; i++)
        results.push(...(await Promise.all([attempt(url), attempt(url), attempt(url)])))
    })()
    const sent: string[] = []
    for (let i = 0; i < 10; i++) {
      const body = `honest ${i}`
      sendMessage(a.doc, alice, { body })
      sent.push(body)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    await loop
    await b.until(() => sent.every((body) => bodies(b).includes(body)))

    // Refused after the handshake (4429) or, once the relay knows the token, before it (HTTP 429).
    const isRefusal = (r: { code?: number; reason?: string; status?: number; body?: string }) =>
      (r.code === CloseCode.TooManyConnectionAttempts.code && r.reason === "connection-attempts-per-user") ||
      (r.status === 429 && r.body === "connection-attempts-per-user")
    const refused = results.filter(isRefusal)
    const let_in = results.filter((r) => !isRefusal(r))
    // Most refusals cost the relay no handshake.
    expect(results.filter((r) => r.status === 429).length).toBeGreaterThan(refused.length / 2)
    // 40 a minute, bursting: the loop's 90 attempts in a few seconds get about 40 in, the rest refused.
    expect(let_in.length).toBeGreaterThanOrEqual(40)
    expect(let_in.length).toBeLessThan(50)
    expect(refused.length).toBe(90 - let_in.length)
    // The honest pair was never refused.
    expect(a.closeEvent).toBeUndefined()
    expect(b.closeEvent).toBeUndefined()
    const refusals = await relay.waitForLog(
      (line) => line.limit === "connection-attempts-per-user" && line.user === mallory,
    )
    expect(refusals.msg).toBe("refused: per-user limit")
  })

  it("lets a user with many sockets reconnect all of them after network blips, with the default limits", async () => {
    const relay = await startRelayProcess({ args: [] })
    const id = newConversationId()
    const a = await open(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { body: "before the blips" })
    await a.allSaved()
    // Bob's tabs and devices: stock y-websocket providers, which reconnect quickly after a drop.
    const token = await relay.token(bob)
    const closes: number[] = []
    for (let i = 0; i < 60; i++) {
      const p = stockProvider(relay.url, id, token, new Y.Doc())
      p.on("connection-close", (event: CloseEvent | null) => {
        if (event) closes.push(event.code)
      })
      providers.push(p)
    }
    await Promise.all(providers.map(synced))
    for (let blip = 0; blip < 4; blip++) {
      // The network drops every socket at once; each provider reconnects on its own.
      for (const p of providers) (p.ws as unknown as WebSocket | null)?.terminate()
      await new Promise((resolve) => setTimeout(resolve, 50))
      await pollUntil(() => providers.every((p) => p.wsconnected && p.synced))
    }
    sendMessage(a.doc, alice, { body: "after the blips" })
    await pollUntil(() =>
      providers.every((p) => listMessages(p.doc, { last: 10 }).some((m) => m.body === "after the blips")),
    )
    // 240 reconnects within seconds (300 connections with the first ones): none refused.
    expect(closes.length).toBeGreaterThanOrEqual(240)
    expect(closes.filter((code) => code === CloseCode.RateLimited.code)).toEqual([])
  })
})

describe("connection attempts per address before the token is verified", () => {
  it("answers 429 before verifying once an address's bad tokens are spent, while valid tokens take nothing", async () => {
    const relay = await startRelayProcess({ args: ["--address-auth-failures-per-minute", "5"] })
    const id = newConversationId()
    const a = await open(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    await a.allSaved()
    // Valid tokens from the same address cost the address nothing.
    const good = `${relay.url}/${id}?token=${await relay.token(alice)}`
    for (let i = 0; i < 10; i++) expect((await attempt(good)).code).toBe(1005)
    const bad = `${relay.url}/${id}?token=${await relay.token(alice, { secret: "not the relay's secret" })}`
    const before = await Promise.all(Array.from({ length: 5 }, () => attempt(bad, false)))
    expect(before.map((r) => r.code)).toEqual(Array(5).fill(CloseCode.Unauthorized.code))
    const after = await attempt(bad, false)
    expect(after).toEqual({ status: 429, body: AddressLimit.authFailures })
    // The open connection is not affected; the relay still serves it.
    sendMessage(a.doc, alice, { body: "still here" })
    await a.allSaved()
    // A flood of refused attempts is counted, not logged line by line: one line for the first
    // refusal of each kind from the address within ten seconds.
    const flood = await Promise.all(Array.from({ length: 200 }, () => attempt(bad, false)))
    expect(flood.every((r) => r.status === 429)).toBe(true)
    const lines = (msg: string) => relay.lines.filter((line) => JSON.parse(line).msg === msg).length
    expect(lines("refused: per-address limit")).toBe(1)
    expect(lines("connection refused")).toBe(1)
    expect(await metricLine(relay, 'parley_errors_total{code="RATE_LIMITED"}')).toBeGreaterThanOrEqual(201)
  })

  it("still lets in a token and an API key it verified before from an address whose bad tokens are spent, and refuses a credential it never saw with 429", async () => {
    const dataDir = freshDataDir()
    const usedKey = await createKey(dataDir, "backend", ["conversations:read"])
    const neverUsedKey = await createKey(dataDir, "other", ["conversations:read"])
    const relay = await startRelayProcess({ dataDir, args: ["--address-auth-failures-per-minute", "5"] })
    const id = newConversationId()
    const a = await open(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    await a.allSaved()
    const api = apiClient(() => relay.httpUrl, usedKey)
    const path = `/v1/conversations/${id}`
    // Before the lock: alice's token verified (her open socket), the backend's key used once.
    expect((await api("GET", path)).status).toBe(200)
    const known = `${relay.url}/${id}?token=${await relay.token(alice)}`
    expect((await attempt(known)).code).toBe(1005)

    // Another host behind the same address (127.0.0.1) spends its failed verifications.
    const bad = `${relay.url}/${id}?token=${await relay.token(mallory, { secret: "not the relay's secret" })}`
    for (let i = 0; i < 5; i++) expect((await attempt(bad, false)).code).toBe(CloseCode.Unauthorized.code)
    expect(await attempt(bad, false)).toEqual({ status: 429, body: AddressLimit.authFailures })

    // At once, no wait for the bucket: the credentials the relay verified before get in.
    expect((await attempt(known)).code).toBe(1005)
    expect((await api("GET", path)).status).toBe(200)
    // Credentials it never verified still wait: bob's first token, a key it never read.
    const unseen = `${relay.url}/${id}?token=${await relay.token(bob)}`
    expect(await attempt(unseen, false)).toEqual({ status: 429, body: AddressLimit.authFailures })
    expect(await refusal(neverUsedKey)).toEqual({ status: 429, body: AddressLimit.authFailures })
    // Nor is a made-up secret for the known key's id.
    const forged = usedKey.replace(/.$/, (c) => (c === "A" ? "B" : "A"))
    expect(await refusal(forged)).toEqual({ status: 429, body: AddressLimit.authFailures })

    /** The status and text of the API's answer to `key`. */
    async function refusal(key: string) {
      const response = await fetch(`${relay.httpUrl}${path}`, { headers: { authorization: `Bearer ${key}` } })
      return { status: response.status, body: (await response.text()).trim() }
    }
  })

  it("counts each client's address from X-Forwarded-For behind a trusted proxy", async () => {
    const relay = await startRelayProcess({
      args: ["--address-auth-failures-per-minute", "3", "--trust-proxy"],
    })
    const bad = `${relay.url}/${newConversationId()}?token=${await relay.token(alice, { secret: "wrong" })}`
    const from = (address: string) => ({ "x-forwarded-for": `198.51.100.1, ${address}` })
    for (let i = 0; i < 3; i++)
      expect((await attempt(bad, false, from("203.0.113.7"))).code).toBe(CloseCode.Unauthorized.code)
    expect((await attempt(bad, false, from("203.0.113.7"))).status).toBe(429)
    // Another client behind the same proxy keeps its own budget.
    expect((await attempt(bad, false, from("203.0.113.8"))).code).toBe(CloseCode.Unauthorized.code)
  })

  it("forgets an address once its bucket has refilled, so its memory does not grow with every address seen", () => {
    let now = 0
    const limiter = new AddressLimiter(6, () => now)
    for (let i = 0; i < 6; i++) limiter.failed("192.0.2.1")
    limiter.failed("192.0.2.2")
    expect(limiter.allows("192.0.2.1")).toBe(false)
    expect(limiter.allows("192.0.2.2")).toBe(true)
    expect(limiter.size).toBe(2)
    // One attempt back every 10 s (6 a minute).
    now = 10_000
    expect(limiter.allows("192.0.2.1")).toBe(true)
    now = 61_000
    expect(limiter.allows("192.0.2.3")).toBe(true)
    expect(limiter.size).toBe(0)
  })

  it("counts IPv6 addresses per /64 and IPv4-mapped ones as IPv4", () => {
    expect(keyOf("2001:db8:1:2:aaaa::1")).toBe(keyOf("2001:0db8:0001:0002:ffff:1:2:3"))
    expect(keyOf("2001:db8:1:2::1")).not.toBe(keyOf("2001:db8:1:3::1"))
    expect(keyOf("::ffff:10.0.0.1")).toBe("10.0.0.1")
    expect(keyOf("10.0.0.1")).toBe("10.0.0.1")
  })
})
