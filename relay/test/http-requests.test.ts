import { connect, type Socket } from "node:net"
import { AddressLimit } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { MAX_PIPELINED } from "../src/ws-transport.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

afterEach(() => stopRelayProcesses())

/** Writes `count` pipelined GETs of `path` in one write; resolves with what came back once the relay closed or 3 s passed. */
function pipelined(
  port: number,
  path: string,
  count: number,
  from: string,
): Promise<{ answers: number; closed: boolean }> {
  const request = `GET ${path} HTTP/1.1\r\nHost: relay\r\nX-Forwarded-For: ${from}\r\n\r\n`
  return new Promise((resolve) => {
    const socket: Socket = connect(port, "127.0.0.1")
    let received = ""
    let closed = false
    const done = () => resolve({ answers: received.split("HTTP/1.1 ").length - 1, closed })
    const timer = setTimeout(() => {
      socket.destroy()
      done()
    }, 3000)
    socket.on("data", (chunk) => {
      received += chunk.toString("latin1")
    })
    socket.on("error", () => {})
    socket.on("close", () => {
      closed = true
      clearTimeout(timer)
      done()
    })
    socket.write(request.repeat(count))
  })
}

describe("HTTP requests before the user is known", () => {
  it("closes a connection that pipelines, after a few answers, and answers the others (before: 1,000 pipelined requests were all served, seconds of work)", async () => {
    const relay = await startRelayProcess({ args: ["--trust-proxy"] })
    const port = Number(new URL(relay.url).port)
    const burst = await pipelined(port, "/v1/openapi.json", 1000, "203.0.113.7")
    expect(burst.closed).toBe(true)
    expect(burst.answers).toBeLessThanOrEqual(MAX_PIPELINED)
    // One request at a time on a connection (what browsers and HTTP libraries do) is served as before.
    for (let i = 0; i < 3; i++) {
      const response = await fetch(`${relay.httpUrl}/v1/openapi.json`, {
        headers: { "x-forwarded-for": "203.0.113.8" },
      })
      expect(response.status).toBe(200)
      expect(((await response.json()) as { openapi?: string }).openapi).toMatch(/^3\./)
    }
  })

  it("answers 429 to an address past its budget of requests without credentials, and serves other addresses", async () => {
    const relay = await startRelayProcess({ args: ["--trust-proxy", "--address-requests-per-second", "5"] })
    const get = (path: string, from: string) =>
      fetch(`${relay.httpUrl}${path}`, { headers: { "x-forwarded-for": from } })
    // A bucket of ten seconds' worth (50), then refused with the limit's name.
    const statuses: number[] = []
    for (let i = 0; i < 60; i++) statuses.push((await get("/healthz", "203.0.113.9")).status)
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(50)
    expect(statuses.filter((s) => s === 200).length).toBeLessThan(55)
    const refused = await get("/metrics", "203.0.113.9")
    expect(refused.status).toBe(429)
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    expect((await refused.text()).trim()).toBe(AddressLimit.requests)
    expect((await get("/healthz", "203.0.113.10")).status).toBe(200)
    expect((await get("/metrics", "203.0.113.10")).status).toBe(200)
  })

  it("charges a request whose credentials verify nothing, and gives back one whose credentials verify (before: any Authorization header skipped the budget)", async () => {
    const relay = await startRelayProcess({
      args: [
        "--trust-proxy",
        "--address-requests-per-second",
        "5",
        "--metrics-token",
        "metrics-secret-0123456789",
      ],
    })
    const get = (path: string, from: string, authorization: string) =>
      fetch(`${relay.httpUrl}${path}`, { headers: { "x-forwarded-for": from, authorization } })
    // Routes that never read the header: a made-up one buys nothing past the address's budget.
    // Its bucket: 50 (ten seconds of 5 a second), refilled at 5 a second while the requests go (on a
    // loaded machine 60 requests took long enough for the refill to serve them all: CI).
    const statuses: number[] = []
    const started = performance.now()
    for (let i = 0; i < 150; i++) statuses.push((await get("/healthz", "203.0.113.20", "Bearer x")).status)
    const seconds = (performance.now() - started) / 1000
    expect(statuses.filter((s) => s === 200).length).toBeLessThanOrEqual(50 + Math.ceil(5 * seconds) + 1)
    expect(statuses).toContain(429)
    // The metrics token verifies: held to nothing of the address's (twice its bucket, all served).
    for (let i = 0; i < 100; i++)
      expect((await get("/metrics", "203.0.113.21", "Bearer metrics-secret-0123456789")).status).toBe(200)
  })
})
