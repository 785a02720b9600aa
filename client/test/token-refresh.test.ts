import "fake-indexeddb/auto"
import { ErrorCode, type ParleyError } from "@parley/shared"
import { SignJWT } from "jose"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import { expiryOfToken, refreshDelay, resolveToken } from "../src/token.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

const secret = "token-refresh-test-secret-token-refresh-test-secret"
/** Tokens live this long: short enough that a test outlives several, long enough to refresh in time on a loaded machine (the SDK refreshes half a short lifetime ahead). */
const LIFETIME_S = 6

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay({ args: ["--auth-secret", secret] })
})
afterAll(async () => {
  await relay?.stop()
})
// Clients are destroyed when the file ends, not after each test: the tests below that connect go
// concurrently, and destroying after one would destroy the other's. Each test has users of its own.
afterAll(destroyClients)

let unique = 0
const name = (base: string) => `${base}${++unique}`

/** A token source of `user` handing out short-lived tokens, recording each. */
function shortLived(user: string) {
  const issued: string[] = []
  const source = async () => {
    const now = Math.floor(Date.now() / 1000)
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(user)
      .setIssuedAt(now)
      .setExpirationTime(now + LIFETIME_S)
      .sign(new TextEncoder().encode(secret))
    issued.push(token)
    return token
  }
  return { issued, source }
}

/** `ws`, counting the sockets opened per document. */
function countingWebSocket() {
  const opened: string[] = []
  class Counting extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols)
      opened.push(new URL(String(url)).pathname.slice(1))
    }
  }
  return { opened, WebSocket: Counting }
}

const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("a token source that fails", () => {
  it("is UNAVAILABLE (retryable) when its server cannot be reached, UNAUTHORIZED otherwise", async () => {
    // A real fetch to a port nobody listens on: what an app's token function meets offline.
    const unreachable = () => fetch("http://127.0.0.1:9/token").then((r) => r.text())
    await expect(resolveToken(unreachable)).rejects.toMatchObject({
      code: ErrorCode.UNAVAILABLE,
      message: "the token source could not reach its server",
    })
    await expect(resolveToken(() => Promise.reject(new Error("signed out")))).rejects.toMatchObject({
      code: ErrorCode.UNAUTHORIZED,
      message: "the token source failed: signed out",
    })
    await expect(resolveToken(() => "")).rejects.toMatchObject({ code: ErrorCode.UNAUTHORIZED })
  })
})

// This suite and the next are concurrent, so that the next one's tests run beside the long ones here
// (suites not marked so run one after the other, whatever their tests are).
describe("token refresh", { concurrent: true }, () => {
  it("plans a refresh a fifth of the lifetime ahead, at least a minute (or half) before expiry", () => {
    const token = (iat: number, exp: number) =>
      `${btoa(JSON.stringify({ alg: "HS256" }))}.${btoa(JSON.stringify({ sub: "a", iat, exp }))}.sig`
    const now = 1_000_000_000_000
    const at = now / 1000
    expect(expiryOfToken(token(at, at + 3600))).toBe(now + 3_600_000)
    expect(refreshDelay(token(at, at + 3600), now)).toBe(2_880_000)
    expect(refreshDelay(token(at, at + 180), now)).toBe(120_000)
    expect(refreshDelay(token(at, at + 4), now)).toBe(2_000)
    expect(refreshDelay(token(at - 10, at - 1), now)).toBe(0)
    expect(refreshDelay("not a token", now)).toBeUndefined()
  })

  // Each run waits out several token lifetimes (15 s): the two run concurrently, on users of their own.
  it.concurrent.each([
    ["its one multiplexed socket", true],
    ["one socket per document", false],
  ])(
    "keeps %s open across several token expiries, and keeps sending",
    async (_, multiplex) => {
      const [a, b] = [name("alice"), name("bob")]
      const tokens = shortLived(a)
      const sockets = countingWebSocket()
      const alice = await connectClient(relay, a, {
        token: tokens.source,
        WebSocket: sockets.WebSocket as never,
        multiplex,
      })
      const bob = await connectClient(relay, b, { token: shortLived(b).source })
      const chat = await alice.createConversation({ participants: [b] })
      await eventually(() => expect(alice.status).toBe("online"))
      const errors: ParleyError[] = []
      alice.on("error", ({ error }) => errors.push(error))
      const began = Date.now()
      const sent: string[] = []
      // Every token alive when this began has expired twice over by the end.
      while (Date.now() < began + 2.5 * LIFETIME_S * 1000) {
        const body = `message ${sent.length}`
        const message = chat.send(body)
        await eventually(() => expect(chat.status(message.id)).toBe("sent"))
        sent.push(body)
        const count = tokens.issued.length
        await eventually(() => expect(tokens.issued.length).toBeGreaterThan(count))
      }
      const bobChat = await bob.conversation(chat.id).ready()
      await eventually(() => expect(bobChat.messages({ last: 50 }).map((m) => m.body)).toEqual(sent))
      expect(sent.length).toBeGreaterThanOrEqual(4)
      if (multiplex) expect(sockets.opened).toEqual([""])
      else {
        expect(sockets.opened.filter((doc) => doc === chat.id)).toHaveLength(1)
        expect(sockets.opened.filter((doc) => doc.startsWith("inbox~"))).toHaveLength(1)
      }
      expect(errors).toEqual([])
    },
    60_000,
  )

  // Users of its own too: it waits out a token's expiry beside the two runs above.
  it.concurrent("survives a token source that fails at refresh time: an error event, backoff, and back online once it works", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const tokens = shortLived(a)
    let failing = false
    let calls = 0
    const alice = await connectClient(relay, a, {
      token: () => {
        calls++
        return failing ? Promise.reject(new Error("token service down")) : tokens.source()
      },
    })
    const bob = await connectClient(relay, b, { token: shortLived(b).source })
    const chat = await alice.createConversation({ participants: [b] })
    await eventually(() => expect(alice.status).toBe("online"))
    const errors: ParleyError[] = []
    alice.on("error", ({ error }) => errors.push(error))

    failing = true
    const failedAt = Date.now()
    const callsBefore = calls
    await eventually(() =>
      expect(errors.some((e) => e.message === "the token source failed: token service down")).toBe(true),
    )
    // Nothing refreshed the token: at its expiry the relay closes the sockets, and reconnecting needs a token.
    await eventually(() => expect(alice.status).not.toBe("online"))
    const during = chat.send("while the token service is down")
    await wait(1_000)
    expect(chat.status(during.id)).toBe("pending")
    expect(errors.every((e) => e.code === ErrorCode.UNAUTHORIZED)).toBe(true)
    // Backoff, not a storm: each of the two documents waits at least half the 50 ms minimum delay between tries.
    expect(calls - callsBefore).toBeLessThanOrEqual(2 * ((Date.now() - failedAt) / 25) + 4)

    failing = false
    await eventually(() => expect(alice.status).toBe("online"))
    await eventually(() => expect(chat.status(during.id)).toBe("sent"))
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() =>
      expect(bobChat.messages({ last: 10 }).map((m) => m.body)).toEqual(["while the token service is down"]),
    )
  }, 60_000)

  it.concurrent("does not send a refresh naming another user: the client reports it and refreshes with its own token once it can", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const own = shortLived(a)
    const other = shortLived(b)
    let wrong = false
    const alice = await connectClient(relay, a, { token: () => (wrong ? other.source() : own.source()) })
    const chat = await alice.createConversation({ participants: [b] })
    await eventually(() => expect(alice.status).toBe("online"))
    const errors: ParleyError[] = []
    alice.on("error", ({ error }) => errors.push(error))
    wrong = true
    await eventually(() => expect(errors.some((e) => e.message.includes(`is for ${b}`))).toBe(true))
    wrong = false
    const message = chat.send("with my own token again")
    await eventually(() => expect(chat.status(message.id)).toBe("sent"))
  }, 60_000)
})

describe("a token the relay or the client refuses", { concurrent: true }, () => {
  // Users of their own, beside the runs above.
  it.concurrent.each([
    ["its one multiplexed socket", true],
    ["one socket per document", false],
  ])(
    "is told once on %s, naming why the relay refused it, not once per reconnect; fixed, the client gets back online",
    async (_, multiplex) => {
      const a = name("alice")
      // Two days: over the relay's default cap of a day, so that every fresh token is refused the same.
      let lifetimeS = 2 * 86_400
      const source = () => {
        const now = Math.floor(Date.now() / 1000)
        return new SignJWT({})
          .setProtectedHeader({ alg: "HS256" })
          .setSubject(a)
          .setExpirationTime(now + lifetimeS)
          .sign(new TextEncoder().encode(secret))
      }
      const alice = await connectClient(relay, a, { token: source, multiplex })
      const errors: ParleyError[] = []
      alice.on("error", ({ error }) => errors.push(error))
      const chat = await alice.createConversation({ participants: [name("bob")] })
      await eventually(() => expect(errors).toHaveLength(1))
      // Reconnects go on (every 400 ms at most here) without telling it again.
      await wait(3_000)
      expect(errors).toHaveLength(1)
      expect(errors[0]).toMatchObject({ code: ErrorCode.UNAUTHORIZED })
      expect(errors[0]!.message).toBe(
        "the relay refused the token: the token's lifetime exceeds 86400 s (it expires too far ahead); asking the token source again with backoff",
      )
      lifetimeS = 600
      await eventually(() => expect(alice.status).toBe("online"))
      const message = chat.send("once the token is right")
      await eventually(() => expect(chat.status(message.id)).toBe("sent"))
    },
    60_000,
  )

  it.concurrent("tells a token source handing out another user's token once, not on every reconnect", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const own = shortLived(a)
    const other = shortLived(b)
    let wrong = true
    const alice = await connectClient(relay, a, { token: () => (wrong ? other.source() : own.source()) })
    const errors: ParleyError[] = []
    alice.on("error", ({ error }) => errors.push(error))
    const chat = alice.conversation((await alice.createConversation({ participants: [b] })).id)
    await eventually(() => expect(errors).toHaveLength(1))
    const asked = other.issued.length
    await wait(3_000)
    // Asked again with backoff (a source may come right), told once.
    expect(other.issued.length).toBeGreaterThan(asked)
    expect(errors.map((e) => [e.code, e.message])).toEqual([
      [ErrorCode.UNAUTHORIZED, `the token is for ${b}, not ${a}`],
    ])
    wrong = false
    const message = chat.send("with my own token")
    await eventually(() => expect(chat.status(message.id)).toBe("sent"))
  }, 60_000)
})
