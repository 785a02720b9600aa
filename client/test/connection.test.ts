import { ErrorCode, type ParleyError } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import WebSocket, { WebSocketServer } from "ws"
import { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import { DocumentConnection } from "../src/connection.js"
import { ownSockets } from "../src/provider/document-socket.js"
import { resolveToken } from "../src/token.js"
import { eventually } from "./support.js"

/**
 * A WebSocket server that closes every connection at once with `code`, recording the tokens it saw.
 * `code` may depend on the token: a connection it gives no code for is left open.
 */
async function closingServer(code: number | ((token: string) => number | undefined)) {
  const tokens: string[] = []
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" })
  await new Promise((resolve) => server.once("listening", resolve))
  server.on("connection", (socket, request) => {
    const token = new URL(request.url ?? "/", "http://x").searchParams.get("token") ?? ""
    tokens.push(token)
    const closeWith = typeof code === "number" ? code : code(token)
    if (closeWith !== undefined) socket.close(closeWith, "test")
  })
  const { port } = server.address() as { port: number }
  return { url: `ws://127.0.0.1:${port}`, tokens, close: () => new Promise((r) => server.close(r)) }
}

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn()
})

function connectionTo(url: string, token: () => Promise<string>) {
  const doc = new Y.Doc()
  const awareness = new Awareness(doc)
  const connection = new DocumentConnection({
    url,
    name: "g~connection-test",
    doc,
    awareness,
    user: "tester",
    token,
    sockets: ownSockets(url, WebSocket as never),
    reconnect: { minDelay: 10, maxDelay: 40 },
  })
  cleanup.push(() => {
    connection.destroy()
    awareness.destroy()
    doc.destroy()
  })
  return connection
}

describe("DocumentConnection", () => {
  it("asks for a fresh token after each 4401, tells UNAUTHORIZED once after three, and keeps asking with backoff", async () => {
    const server = await closingServer(4401)
    cleanup.push(server.close)
    let issued = 0
    const connection = connectionTo(server.url, async () => `token-${++issued}`)
    const told: ParleyError[] = []
    const unavailable: ParleyError[] = []
    connection.on("tokenFailed", ({ error }) => told.push(error))
    connection.on("unavailable", ({ error }) => unavailable.push(error))
    connection.start()
    await eventually(() => expect(server.tokens.length).toBeGreaterThanOrEqual(6))
    expect(server.tokens.slice(0, 3)).toEqual(["token-1", "token-2", "token-3"])
    expect(told.map((e) => e.code)).toEqual([ErrorCode.UNAUTHORIZED])
    // Before: it stopped for good ("unavailable"), and the document's changes waited for connect().
    expect(unavailable).toEqual([])
    expect(connection.status).not.toBe("offline")
  })

  it("gets in once the token source hands out a working token again, without a new start()", async () => {
    // The relay refuses every "stale-" token and keeps a "good" one open.
    const server = await closingServer((token) => (token.startsWith("stale-") ? 4401 : undefined))
    cleanup.push(server.close)
    // The token source's answers, in order: refused for a while (a key rotation, say), then good.
    const answers = ["stale-1", "stale-2", "stale-3", "stale-4", "stale-5"]
    const connection = connectionTo(server.url, async () => answers.shift() ?? "good")
    const told: ParleyError[] = []
    connection.on("tokenFailed", ({ error }) => told.push(error))
    connection.start()
    await eventually(() =>
      expect(server.tokens).toEqual(["stale-1", "stale-2", "stale-3", "stale-4", "stale-5", "good"]),
    )
    // The working token's socket stays open: nothing more is asked.
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(server.tokens).toHaveLength(6)
    expect(told).toHaveLength(1)
  })

  it("stops for good on 4403 with FORBIDDEN", async () => {
    const server = await closingServer(4403)
    cleanup.push(server.close)
    const connection = connectionTo(server.url, async () => "token")
    const unavailable = new Promise<ParleyError>((resolve) =>
      connection.on("unavailable", ({ error }) => resolve(error)),
    )
    connection.start()
    const error = await unavailable
    expect(error.code).toBe(ErrorCode.FORBIDDEN)
    // Says why in words an app developer can act on, not only the close code.
    expect(error.message).toMatch(/not a participant/)
    expect(server.tokens).toHaveLength(1)
  })

  it("stops for good on 4510 with DAMAGED", async () => {
    const server = await closingServer(4510)
    cleanup.push(server.close)
    const connection = connectionTo(server.url, async () => "token")
    const unavailable = new Promise<ParleyError>((resolve) =>
      connection.on("unavailable", ({ error }) => resolve(error)),
    )
    connection.start()
    expect((await unavailable).code).toBe(ErrorCode.DAMAGED)
    expect(server.tokens).toHaveLength(1)
  })

  it("keeps retrying a relay that fails, with a fresh token each time, until stopped", async () => {
    const server = await closingServer(4500)
    cleanup.push(server.close)
    let issued = 0
    const connection = connectionTo(server.url, async () => `token-${++issued}`)
    const statuses: string[] = []
    connection.on("status", ({ status }) => statuses.push(status))
    connection.start()
    await eventually(() => expect(server.tokens.length).toBeGreaterThanOrEqual(4))
    expect(new Set(server.tokens).size).toBe(server.tokens.length)
    connection.stop()
    const attempts = server.tokens.length
    // A retry already scheduled must not fire after stop(): wait longer than the longest backoff.
    await new Promise((resolve) => setTimeout(resolve, 150))
    expect(server.tokens.length).toBe(attempts)
    expect(statuses).toEqual(["connecting", "offline"])
  })
})

describe("resolveToken", () => {
  it("fails a token source that never answers as UNAVAILABLE after its time, so the next connect asks again", async () => {
    const started = Date.now()
    const never = () => new Promise<string>(() => {})
    await expect(resolveToken(never, 50)).rejects.toMatchObject({ code: ErrorCode.UNAVAILABLE })
    expect(Date.now() - started).toBeLessThan(5_000)
    await expect(resolveToken(async () => "a-token", 50)).resolves.toBe("a-token")
  })
})
