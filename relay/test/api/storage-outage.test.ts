import { ErrorCode } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { newApiKey } from "../../src/api/keys.js"
import { PostgresBackend } from "../../src/backend/postgres.js"
import { startRelay } from "../../src/relay.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { startTcpProxy } from "../helpers/tcp-proxy.js"
import { type Answer, apiClient } from "./helpers.js"

const cleanups: (() => Promise<unknown>)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {})
})

/** The storage deadline of these relays: every answer during the outage must come well before it. */
const TIMEOUT_MS = 1500

/** A relay on PostgreSQL behind a proxy the test can stall (a database that stops answering), with API keys. */
async function relayBehindProxy() {
  const scratch = await scratchSchema()
  cleanups.push(() => scratch.drop())
  const target = new URL(DATABASE_URL)
  const proxy = await startTcpProxy(target.hostname || "127.0.0.1", Number(target.port || 5432))
  cleanups.push(() => proxy.close())
  const proxied = new URL(scratch.url)
  proxied.hostname = "127.0.0.1"
  proxied.port = String(proxy.port)
  const backend = await PostgresBackend.open(proxied.toString(), { timeoutMs: TIMEOUT_MS })
  const used = newApiKey("backend", [
    "conversations:read",
    "conversations:write",
    "messages:write",
    "act-as-user",
  ])
  const unused = newApiKey("other", ["conversations:read"])
  await backend.keys.create(used.record)
  await backend.keys.create(unused.record)
  const relay = await startRelay({
    port: 0,
    warmUp: false,
    backend,
    dev: true,
    log: "silent",
    storageTimeoutMs: TIMEOUT_MS,
  })
  // Resumed first: a relay closing on a stalled database would wait for it.
  cleanups.push(async () => {
    proxy.resume()
    await relay.close()
  })
  return {
    relay,
    proxy,
    api: apiClient(() => relay.httpUrl, used.key),
    unusedKey: apiClient(() => relay.httpUrl, unused.key),
  }
}

/** The answer and how long it took, in ms. */
async function timed(request: Promise<Answer>): Promise<Answer & { ms: number }> {
  const started = performance.now()
  const answer = await request
  return { ...answer, ms: performance.now() - started }
}

const unreachable = await postgresUnreachable()
if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("the HTTP API while PostgreSQL does not answer", () => {
    it.skip(`skipped: PostgreSQL unreachable (${unreachable})`, () => {})
  })
} else {
  describe("the HTTP API while PostgreSQL does not answer", () => {
    it("refuses writes at once with a retryable 503, still answers reads of a loaded conversation, and writes again once it answers", async () => {
      const { relay, proxy, api, unusedKey } = await relayBehindProxy()
      const conversation = "g~outage"
      expect(
        (await api("POST", "/v1/conversations", { id: conversation, participants: [{ user: "alice" }] }))
          .status,
      ).toBe(201)
      expect(
        (await api("POST", `/v1/conversations/${conversation}/messages`, { body: "before", asUser: "alice" }))
          .status,
      ).toBe(201)

      proxy.stall()
      // Found by the first call that waits for its deadline (here loading a conversation; else the
      // relay's probe, within seconds): from then on /readyz says so, and no API request waits.
      const found = await api("GET", "/v1/conversations/g~not-loaded")
      expect([found.status, found.body.code]).toEqual([503, ErrorCode.STORAGE_UNAVAILABLE])
      await expect
        .poll(async () => (await fetch(`${relay.httpUrl}/readyz`)).status, { timeout: 4 * TIMEOUT_MS + 3000 })
        .toBe(503)

      const path = `/v1/conversations/${conversation}`
      const writes = [
        await timed(
          api("POST", `${path}/messages`, { body: "k", asUser: "alice" }, { "idempotency-key": "k1" }),
        ),
        await timed(api("POST", `${path}/messages`, { body: "n", asUser: "alice" })),
        await timed(api("PATCH", path, { title: "renamed" })),
        await timed(api("POST", `${path}/read`, { asUser: "alice" })),
      ]
      for (const write of writes) {
        expect(write.status).toBe(503)
        expect(write.body.code).toBe(ErrorCode.STORAGE_UNAVAILABLE)
        expect(Number(write.headers.get("retry-after"))).toBeGreaterThan(0)
      }
      // The conversation is in memory and the key was read a moment ago: served without the database.
      const read = await timed(api("GET", path))
      expect(read.status).toBe(200)
      // A key the relay has not read cannot be checked: refused as retryable, not as a wrong key.
      const unchecked = await timed(unusedKey("GET", path))
      expect([unchecked.status, unchecked.body.code]).toEqual([503, ErrorCode.STORAGE_UNAVAILABLE])
      const slowest = Math.max(...[...writes, read, unchecked].map((a) => a.ms))
      console.log(
        `[api during storage outage] slowest of ${writes.length + 2} answers ${slowest.toFixed(0)} ms (storage timeout ${TIMEOUT_MS} ms)`,
      )
      expect(slowest).toBeLessThan(TIMEOUT_MS / 3)

      proxy.resume()
      await expect
        .poll(
          async () =>
            (
              await api(
                "POST",
                `${path}/messages`,
                { body: "k", asUser: "alice" },
                { "idempotency-key": "k1" },
              )
            ).status,
          { timeout: 4 * TIMEOUT_MS + 3000, interval: 200 },
        )
        .toBe(201)
    })
  })
}
