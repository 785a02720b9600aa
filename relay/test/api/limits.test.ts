import { connect } from "node:net"
import type { UserId } from "@parley/shared"
import pino from "pino"
import { afterEach, describe, expect, it } from "vitest"
import { newApiKey } from "../../src/api/keys.js"
import type { ApiLimits } from "../../src/api/limits.js"
import { MemoryBackend } from "../../src/backend/index.js"
import { type RunningRelay, startRelay } from "../../src/relay.js"
import { apiClient } from "./helpers.js"

describe("HTTP API limits", () => {
  let relay: RunningRelay | undefined
  afterEach(async () => {
    await relay?.close()
  })

  /** The raw key of the last client `start`'s function made. */
  let lastKey = ""

  async function start(limits: Partial<ApiLimits>) {
    const backend = new MemoryBackend()
    relay = await startRelay({ port: 0, warmUp: false, backend, dev: true, log: "silent", apiLimits: limits })
    const key = async (name: string) => {
      const made = newApiKey(name, ["conversations:read", "conversations:write"])
      await backend.keys.create(made.record)
      lastKey = made.key
      return apiClient(() => relay!.httpUrl, made.key)
    }
    return key
  }

  it("closes the connection of a request whose body does not arrive in time, on every JSON route", async () => {
    const key = await start({ bodyTimeoutMs: 500 })
    await key("slow")
    const user = await relay!.auth.mintDev("slowpoke" as UserId, {})
    /** How long until the relay closed a request whose 1,000-byte body comes a byte every 100 ms. */
    const trickle = async (path: string, token: string): Promise<number | undefined> => {
      const socket = connect({ host: "127.0.0.1", port: relay!.port })
      let closed = false
      socket.on("error", () => {})
      socket.on("close", () => {
        closed = true
      })
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ${token}\r\n` +
          "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
      )
      // A byte at a time: before, read at that pace for Node's 300 s request timeout.
      const timer = setInterval(() => {
        if (!closed) socket.write(" ")
      }, 100)
      const started = performance.now()
      try {
        while (!closed && performance.now() - started < 5_000) await new Promise((r) => setTimeout(r, 50))
      } finally {
        clearInterval(timer)
        socket.destroy()
      }
      return closed ? performance.now() - started : undefined
    }
    // The API's own routes, upload creation and push registration (routes of their own, answered first).
    for (const [path, token] of [
      ["/v1/conversations", lastKey],
      ["/v1/conversations/g~slow/uploads", user],
      ["/v1/me/push-subscriptions", user],
    ] as const) {
      const took = await trickle(path, token)
      expect(took, path).toBeDefined()
      expect(took!, path).toBeLessThan(3_000)
    }
  })

  it("logs a request its client aborted mid-body as no failure of the relay (before: an error line with a stack, each)", async () => {
    const lines: { level: number; msg: string }[] = []
    const log = pino({ level: "debug" }, { write: (line: string) => lines.push(JSON.parse(line)) })
    const backend = new MemoryBackend()
    relay = await startRelay({ port: 0, warmUp: false, backend, dev: true, log })
    const made = newApiKey("aborts", ["conversations:read", "conversations:write"])
    await backend.keys.create(made.record)
    for (let i = 0; i < 5; i++) {
      const socket = connect({ host: "127.0.0.1", port: relay.port })
      socket.on("error", () => {})
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
      socket.write(
        `POST /v1/conversations HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ${made.key}\r\n` +
          "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
      )
      await new Promise((resolve) => setTimeout(resolve, 50))
      socket.destroy()
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(lines.filter((l) => l.msg === "API request failed")).toEqual([])
    expect(lines.filter((l) => l.msg === "API request aborted by its client")).toHaveLength(5)
  })

  it("charges a body's shares of its key's rate as declared, before it arrives (before: a body one byte short paid none)", async () => {
    const key = await start({ requestsPerSecond: 0.5, requestBurst: 20, bodyTimeoutMs: 5_000 })
    await key("bodies")
    /** The status a request declaring 256 KiB and sending 1 byte is answered within 500 ms, if any. */
    const slowBody = async (): Promise<number | undefined> => {
      const socket = connect({ host: "127.0.0.1", port: relay!.port })
      socket.on("error", () => {})
      let answer = ""
      socket.on("data", (chunk) => {
        answer += chunk.toString("latin1")
      })
      await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
      socket.write(
        `POST /v1/conversations HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ${lastKey}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${256 * 1024}\r\n\r\n{`,
      )
      await new Promise((resolve) => setTimeout(resolve, 500))
      socket.destroy()
      const status = /^HTTP\/1\.1 (\d+)/.exec(answer)?.[1]
      return status === undefined ? undefined : Number(status)
    }
    const answers = await Promise.all(Array.from({ length: 5 }, () => slowBody()))
    // Each declares 17 shares of a bucket of 20: two are taken in, the rest refused at once.
    expect(answers.filter((a) => a === 429).length).toBeGreaterThanOrEqual(3)
  })

  it("rate-limits each key on its own with 429 and Retry-After", async () => {
    const key = await start({ requestsPerSecond: 0.5, requestBurst: 3 })
    const busy = await key("busy")
    const statuses = []
    for (let i = 0; i < 4; i++) statuses.push((await busy("GET", "/v1/conversations/g~x")).status)
    expect(statuses).toEqual([404, 404, 404, 429])
    const limited = await busy("GET", "/v1/conversations/g~x")
    expect(limited.body).toMatchObject({ code: "RATE_LIMITED", status: 429 })
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    expect((await (await key("calm"))("GET", "/v1/conversations/g~x")).status).toBe(404)
  })

  it("holds each key to its participants added a minute, in groups it creates and to existing ones", async () => {
    const key = await start({ participantsPerMinute: 300 })
    const importer = await key("importer")
    const members = (from: number, n: number) =>
      Array.from({ length: n }, (_, i) => ({ user: `member${from + i}` }))
    expect(
      (await importer("POST", "/v1/conversations", { id: "g~big1", participants: members(0, 200) })).status,
    ).toBe(201)
    // 200 of 300 spent: a second group of 200 is refused, nothing created.
    const refused = await importer("POST", "/v1/conversations", {
      id: "g~big2",
      participants: members(200, 200),
    })
    expect(refused.status).toBe(429)
    expect(refused.body).toMatchObject({ code: "RATE_LIMITED", rule: "participants-per-minute" })
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    expect((await importer("GET", "/v1/conversations/g~big2")).status).toBe(404)
    // Adding to an existing group counts the same.
    const added = await importer("POST", "/v1/conversations/g~big1/participants", {
      users: members(400, 150).map((m) => m.user),
    })
    expect(added.status).toBe(429)
    expect(
      (await importer("POST", "/v1/conversations/g~big1/participants", { users: ["member999"] })).status,
    ).toBe(200)
    // Another key's budget is its own.
    const other = await key("other")
    expect(
      (await other("POST", "/v1/conversations", { id: "g~big3", participants: members(0, 200) })).status,
    ).toBe(201)
  })

  it("counts the other user of each direct conversation a key creates among its participants added", async () => {
    const key = await start({ participantsPerMinute: 3 })
    const importer = await key("directs")
    const statuses = []
    for (let i = 0; i < 4; i++)
      statuses.push((await importer("POST", "/v1/conversations/direct", { with: `stranger${i}` })).status)
    // Each would write an inbox entry for a user who may never have signed in.
    expect(statuses).toEqual([201, 201, 201, 429])
  })

  it("refuses a body above the configured size before reading it, and keeps serving", async () => {
    const key = await start({ maxBodyBytes: 1024 })
    const api = await key("small")
    const big = await api("POST", "/v1/conversations", { title: "t".repeat(150), participants: [] })
    expect(big.status).toBe(201)
    const huge = await api("POST", "/v1/conversations", { title: "t".repeat(2000), participants: [] })
    expect([huge.status, huge.body.code]).toEqual([413, "TOO_LARGE"])
    expect((await api("GET", "/v1/conversations/g~x")).status).toBe(404)
  })

  it("refuses a body holding more JSON values than any request needs before building it, and names a few unknown keys only", async () => {
    const api = await (await start({}))("bulky")
    // The largest body a route takes: a group with 999 others, each with a role.
    const participants = Array.from({ length: 999 }, (_, i) => ({ user: `user-${i}`, role: "member" }))
    expect((await api("POST", "/v1/conversations", { id: "g~big", participants })).status).toBe(201)
    // 120,000 zeros in 240 KB: refused for its count, not walked value by value.
    const zeros = await api("POST", "/v1/conversations", `[${"0,".repeat(119_999)}0]`)
    expect([zeros.status, zeros.body.code]).toEqual([400, "INVALID_ARGUMENT"])
    expect(zeros.body.detail).toContain("at most 10000 JSON values")
    // Unknown keys under the count: refused by the schema, whose answer does not echo all 9,000 of them.
    const unknown = Object.fromEntries(Array.from({ length: 9_000 }, (_, i) => [`field${i}`, 0]))
    const keys = await api("POST", "/v1/conversations", { participants: [], ...unknown })
    expect([keys.status, keys.body.code]).toEqual([400, "INVALID_ARGUMENT"])
    expect(keys.body.detail.length).toBeLessThan(1_000)
    expect((await api("GET", "/v1/conversations/g~big")).status).toBe(200)
  })

  it("charges a key's rate by the size of its bodies: a 16 KiB share per request", async () => {
    const key = await start({ requestsPerSecond: 0.5, requestBurst: 20 })
    const [big, small] = [await key("big"), await key("small")]
    // 240 KB (refused or not, it was read, parsed and walked): 1 + 14 requests' worth.
    const body = { participants: [], title: "t", metadata: { blob: "x".repeat(240_000) } }
    expect((await big("POST", "/v1/conversations", body)).status).toBe(422)
    const statuses = async (api: typeof big) => {
      const seen: number[] = []
      for (let i = 0; i < 8; i++) seen.push((await api("GET", "/v1/conversations/g~x")).status)
      return seen
    }
    // 5 left of 20 (and half a request a second refilled): the sixth GET is refused.
    expect((await statuses(big)).filter((s) => s === 429).length).toBeGreaterThanOrEqual(2)
    // Another key of the same relay is not charged for it.
    expect(await statuses(small)).toEqual(Array(8).fill(404))
  })

  it("counts a body sent without a length (chunked) as it arrives", async () => {
    const backend = new MemoryBackend()
    relay = await startRelay({
      port: 0,
      warmUp: false,
      backend,
      dev: true,
      log: "silent",
      apiLimits: { maxBodyBytes: 1024 },
    })
    const made = newApiKey("chunked", ["conversations:write"])
    await backend.keys.create(made.record)
    const send = (json: string) =>
      fetch(`${relay!.httpUrl}/v1/conversations`, {
        method: "POST",
        headers: { authorization: `Bearer ${made.key}`, "content-type": "application/json" },
        body: new Blob([json]).stream(),
        duplex: "half",
      } as RequestInit)
    expect((await send(JSON.stringify({ title: "small", participants: [] }))).status).toBe(201)
    const big = await send(JSON.stringify({ title: "t".repeat(4000), participants: [] }))
    expect(big.status).toBe(413)
  })
})
