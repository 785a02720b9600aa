import { request } from "node:http"
import { createConversation, ErrorCode, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { decodeJwt, jwtVerify, SignJWT } from "jose"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { parseConfig } from "../src/config.js"
import { TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const alice = "alice" as UserId
const bob = "bob" as UserId

const clients: TestClient[] = []
let shared: RelayProcess
beforeAll(async () => {
  shared = await startRelayProcess()
})
// Clients close when the file ends, not after each test: the expiry tests below run concurrently (each
// waits seconds for a token to run out), and closing after one of them would close the others' too.
// Every test opens its own conversations, so a client left open meanwhile meets no other test.
afterAll(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
})

function client(relay: RelayProcess, name: string, token: string, parley = true) {
  const c = new TestClient(relay.url, name, token, { parley })
  clients.push(c)
  return c
}

/** Seconds since the epoch, as JWTs count. */
const nowS = () => Math.floor(Date.now() / 1000)

/** An HS256 token with exactly these claims (no `exp` unless given). */
const signed = (secret: string, claims: Record<string, unknown>) =>
  new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(secret))

/** A conversation of alice (owner) and bob, created through the relay with long-lived tokens. */
async function conversation(relay: RelayProcess) {
  const id = newConversationId()
  const owner = client(relay, id, await relay.token(alice))
  await owner.synced()
  createConversation(owner.doc, alice, { kind: "group", id, participants: [bob] })
  await owner.allSaved()
  return id
}

/** A GET with the headers a browser (or a DNS-rebinding page) would send. */
function get(url: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: string }>(
    (resolve, reject) => {
      const req = request(url, { headers }, (res) => {
        let body = ""
        res.on("data", (chunk) => {
          body += chunk
        })
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
      })
      req.on("error", reject)
      req.end()
    },
  )
}

const refusedFor = (relay: RelayProcess, reason: RegExp) =>
  relay.waitForLog((line) => line.msg === "connection refused" && reason.test(String(line.reason)))

// Every test here runs at once (the three describes too): each opens conversations of its own, on the
// shared relay or on one it starts, and the longest (waiting out token expiries) sets the file's time.
describe.concurrent("token expiry on open sockets", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  // The first three only wait for expiries on the shared relay: concurrently they take the longest one's time.
  it.concurrent("closes a parley=1 socket when its token expires, with a typed UNAUTHORIZED error first", async () => {
    const relay = shared
    const exp = nowS() + 4
    const c = client(relay, await conversation(relay), await relay.token(alice, { expiresIn: exp }))
    // On a loaded machine the token may expire before the first sync completes: the close is what counts.
    await Promise.race([c.synced(), c.closed])
    const closed = await c.closed
    expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000)
    expect(closed).toEqual({ code: 4401, reason: "Token expired" })
    expect(c.errors).toEqual([{ code: ErrorCode.UNAUTHORIZED, message: "the token expired" }])
  })

  it.concurrent("closes a stock client's socket at its token's expiry with 4401 and no extension frame", async () => {
    const relay = shared
    const exp = nowS() + 4
    const c = client(relay, await conversation(relay), await relay.token(bob, { expiresIn: exp }), false)
    await Promise.race([c.synced(), c.closed])
    expect(await c.closed).toEqual({ code: 4401, reason: "Token expired" })
    expect(c.frames.filter((frame) => frame[0] === 100)).toEqual([])
  })

  it.concurrent("keeps a socket open across several expiries while the client refreshes its token, and it keeps writing", async () => {
    const relay = shared
    const id = await conversation(relay)
    let exp = nowS() + 3
    const a = client(relay, id, await relay.token(alice, { expiresIn: exp }))
    await a.synced()
    for (let round = 0; round < 3; round++) {
      // A witness whose token expires one second after alice's current one: once the relay closed
      // it, alice's socket would have been closed too, had her refresh not moved its expiry.
      const witness = client(relay, id, await relay.token(bob, { expiresIn: exp + 1 }))
      exp += 3
      a.refreshToken(await relay.token(alice, { expiresIn: exp }))
      await a.until(() => a.tokenAccepts.includes(exp))
      expect(await witness.closed).toEqual({ code: 4401, reason: "Token expired" })
      expect(a.closeEvent).toBeUndefined()
      sendMessage(a.doc, alice, { body: `round ${round}` })
      await a.allSaved()
    }
    // Without another refresh, the last token's expiry ends it.
    expect(await a.closed).toEqual({ code: 4401, reason: "Token expired" })
    expect(Date.now()).toBeGreaterThanOrEqual(exp * 1000)
  }, 40_000)

  it("refuses a refresh with another user's, another role's, a forged or a non-expiring token and closes 4401", async () => {
    const relay = shared
    const id = await conversation(relay)
    const refreshes = [
      await relay.token(bob),
      await relay.token(alice, { role: "service" }),
      await relay.token(alice, { secret: "not-the-relay-secret" }),
      await signed(relay.secret, { sub: alice }),
      "not a token",
    ]
    for (const refresh of refreshes) {
      const a = client(relay, id, await relay.token(alice))
      await a.synced()
      a.refreshToken(refresh)
      expect(await a.closed).toEqual({ code: 4401, reason: "Token refresh refused" })
      expect(a.errors.map((e) => e.code)).toEqual([ErrorCode.UNAUTHORIZED])
      expect(a.tokenAccepts).toEqual([])
    }
    // A stock client cannot read the error; it is closed all the same.
    const stock = client(relay, id, await relay.token(alice), false)
    await stock.synced()
    stock.refreshToken(await relay.token(bob))
    expect(await stock.closed).toEqual({ code: 4401, reason: "Token refresh refused" })
  })

  it("charges each refresh verified to the user's connection attempts: a flood of them is closed 4429, another user is not", async () => {
    const relay = await startRelayProcess({ args: ["--user-connection-attempts-per-minute", "30"] })
    // Before the user's first attempt: what refills from then on is at most this old.
    const started = performance.now()
    const id = await conversation(relay)
    // Four sockets (the owner's and three): four of the thirty attempts.
    const sockets = [0, 1, 2].map(async () => {
      const c = client(relay, id, await relay.token(alice))
      await c.synced()
      return c
    })
    const flooders = await Promise.all(sockets)
    const refresh = await relay.token(alice, { expiresIn: nowS() + 600 })
    // Each refresh is verified once the one before it is: sent one after another's answer, each is.
    let accepted = 0
    for (let i = 0; i < 40 && flooders.every((c) => c.closeEvent === undefined); i++) {
      const c = flooders[i % 3]!
      const before = c.tokenAccepts.length
      c.refreshToken(refresh)
      await c.until(() => c.tokenAccepts.length > before || c.closeEvent !== undefined)
      if (c.tokenAccepts.length > before) accepted++
    }
    // Twenty-six left, and what refilled meanwhile (half an attempt a second, however slow the machine).
    expect(accepted).toBeGreaterThanOrEqual(26)
    expect(accepted).toBeLessThanOrEqual(26 + Math.ceil((performance.now() - started) / 2_000))
    const closed = flooders.find((c) => c.closeEvent !== undefined)!
    expect(await closed.closed).toEqual({ code: 4429, reason: "connection-attempts-per-user" })
    expect(closed.errors.map((e) => e.code)).toEqual([ErrorCode.RATE_LIMITED])
    // Bob's budget is his own.
    const b = client(relay, id, await relay.token(bob))
    await b.synced()
    b.refreshToken(await relay.token(bob, { expiresIn: nowS() + 600 }))
    await b.until(() => b.tokenAccepts.length > 0)
    expect(b.closeEvent).toBeUndefined()
  })

  it("accepts a refresh from a service token for the same service, which keeps reading", async () => {
    const relay = shared
    const id = await conversation(relay)
    const service = client(relay, id, await relay.token("audit", { role: "service" }))
    await service.synced()
    const exp = nowS() + 600
    service.refreshToken(await relay.token("audit", { role: "service", expiresIn: exp }))
    await service.until(() => service.tokenAccepts.length > 0)
    expect(service.tokenAccepts).toEqual([exp])
    expect(service.closeEvent).toBeUndefined()
  })
})

describe.concurrent("token claims", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("reads the exp rules from flags and environment variables, refusing tokens without exp by default", () => {
    expect(parseConfig(["--auth-secret", "s"], {})).toMatchObject({
      allowTokensWithoutExp: false,
      maxTokenLifetimeMs: 86_400_000,
    })
    expect(
      parseConfig(["--auth-secret", "s", "--allow-tokens-without-exp", "--max-token-lifetime-ms", "0"], {}),
    ).toMatchObject({ allowTokensWithoutExp: true, maxTokenLifetimeMs: 0 })
    expect(
      parseConfig(["--auth-secret", "s"], {
        PARLEY_ALLOW_TOKENS_WITHOUT_EXP: "true",
        PARLEY_MAX_TOKEN_LIFETIME_MS: "3600000",
      }),
    ).toMatchObject({ allowTokensWithoutExp: true, maxTokenLifetimeMs: 3_600_000 })
  })

  it("refuses a token without exp with 4401: tokens must expire", async () => {
    const relay = shared
    const c = client(relay, newConversationId(), await signed(relay.secret, { sub: alice }))
    expect((await c.closed).code).toBe(4401)
    await refusedFor(relay, /tokens must expire/)
  })

  it("refuses a token whose exp is more than a day ahead", async () => {
    const relay = shared
    const c = client(relay, newConversationId(), await relay.token(alice, { expiresIn: nowS() + 2 * 86_400 }))
    expect((await c.closed).code).toBe(4401)
    await refusedFor(relay, /expires too far ahead/)
  })

  it("accepts tokens without exp with PARLEY_ALLOW_TOKENS_WITHOUT_EXP, and caps lifetimes by --max-token-lifetime-ms", async ({
    onTestFinished,
  }) => {
    const relay = await startRelayProcess({
      args: ["--max-token-lifetime-ms", "600000"],
      env: { PARLEY_ALLOW_TOKENS_WITHOUT_EXP: "1" },
    })
    onTestFinished(() => relay.kill())
    const forever = client(relay, newConversationId(), await signed(relay.secret, { sub: alice }))
    await forever.synced()
    const fiveMinutes = client(relay, newConversationId(), await relay.token(alice, { expiresIn: "5m" }))
    await fiveMinutes.synced()
    const anHour = client(relay, newConversationId(), await relay.token(alice, { expiresIn: "1h" }))
    expect((await anHour.closed).code).toBe(4401)
    await refusedFor(relay, /lifetime exceeds 600 s/)
    expect(forever.closeEvent).toBeUndefined()
    expect(fiveMinutes.closeEvent).toBeUndefined()
  })
})

describe.concurrent("why a token is refused", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("tells the client in the 4401 close reason why its token was refused at connect, naming nothing secret", async ({
    onTestFinished,
  }) => {
    const relay = await startRelayProcess({
      args: [
        "--auth-audience",
        "chat-app",
        "--auth-issuer",
        "https://id.example",
        "--max-token-lifetime-ms",
        "600000",
      ],
    })
    onTestFinished(() => relay.kill())
    const claims = { sub: alice, aud: "chat-app", iss: "https://id.example" }
    const cases: [string, string | undefined][] = [
      ["the token expired", await signed(relay.secret, { ...claims, exp: nowS() - 120 })],
      [
        "the token's lifetime exceeds 600 s (it expires too far ahead)",
        await signed(relay.secret, { ...claims, exp: nowS() + 3600 }),
      ],
      [
        "the token's audience (aud) is wrong",
        await signed(relay.secret, { ...claims, aud: "other", exp: nowS() + 60 }),
      ],
      [
        "the token's issuer (iss) is wrong",
        await signed(relay.secret, { ...claims, iss: "https://x", exp: nowS() + 60 }),
      ],
      ["tokens must expire (no exp claim)", await signed(relay.secret, claims)],
      [
        "the token's signature is invalid",
        await signed("not-the-relay-secret", { ...claims, exp: nowS() + 60 }),
      ],
      [
        "the token has no sub claim",
        await signed(relay.secret, { ...claims, sub: undefined, exp: nowS() + 60 }),
      ],
      ["the token is not a signed JWT", "not a token"],
      ["a token is required", undefined],
    ]
    for (const [reason, token] of cases) {
      // A Parley client and a stock one alike: the close is all a stock client reads.
      for (const parley of [true, false]) {
        const c = new TestClient(relay.url, newConversationId(), token, { parley })
        clients.push(c)
        expect(await c.closed).toEqual({ code: 4401, reason })
      }
    }
  })

  it("tells the client why a refresh was refused, in the error frame before the 4401 close", async () => {
    const relay = shared
    const id = await conversation(relay)
    const cases: [string, string][] = [
      ["the refreshed token is for another user or role", await relay.token(bob)],
      ["the token expired", await relay.token(alice, { expiresIn: nowS() - 120 })],
      ["the token's signature is invalid", await relay.token(alice, { secret: "not-the-relay-secret" })],
    ]
    for (const [message, refresh] of cases) {
      const a = client(relay, id, await relay.token(alice))
      await a.synced()
      a.refreshToken(refresh)
      expect(await a.closed).toEqual({ code: 4401, reason: "Token refresh refused" })
      expect(a.errors).toEqual([{ code: ErrorCode.UNAUTHORIZED, message }])
    }
  })
})

describe.concurrent("--dev", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("signs dev tokens with a secret of its own, marked as dev, and still verifies --auth-secret tokens", async ({
    onTestFinished,
  }) => {
    const relay = await startRelayProcess({ args: ["--dev"] })
    onTestFinished(() => relay.kill())
    const response = await get(`${relay.httpUrl}/dev/token?user=alice`)
    expect(response.status).toBe(200)
    const { token } = JSON.parse(response.body) as { token: string }
    expect(decodeJwt(token)).toMatchObject({ sub: "alice", iss: "parley-dev" })
    await expect(jwtVerify(token, new TextEncoder().encode(relay.secret))).rejects.toThrow(/signature/)

    const dev = client(relay, newConversationId(), token)
    await dev.synced()
    await relay.waitForLog((line) => line.msg === "dev token" && line.dev === true)
    const app = client(relay, newConversationId(), await relay.token(bob))
    await app.synced()
    // The app's secret cannot mint a dev token: one claiming the dev issuer is checked with the dev key.
    const claimed = await signed(relay.secret, { sub: alice, iss: "parley-dev", exp: nowS() + 60 })
    expect((await client(relay, newConversationId(), claimed).closed).code).toBe(4401)
    expect(dev.closeEvent).toBeUndefined()
  })

  it("refuses a role it does not mint with 400 naming what it takes, instead of minting a user token", async ({
    onTestFinished,
  }) => {
    const relay = await startRelayProcess({ args: ["--dev"] })
    onTestFinished(() => relay.kill())
    const admin = await get(`${relay.httpUrl}/dev/token?user=alice&role=admin`)
    expect(admin.status).toBe(400)
    expect(JSON.parse(admin.body)).toEqual({
      error:
        "?role=\"admin\" is not a role dev tokens have: /dev/token takes ?user=NAME (a user's token) or ?role=service (a service's, ?user= optional), and ?name= and ?picture= (profile claims)",
    })
    const service = await get(`${relay.httpUrl}/dev/token?user=audit&role=service`)
    expect(service.status).toBe(200)
    expect(decodeJwt((JSON.parse(service.body) as { token: string }).token)).toMatchObject({
      sub: "audit",
      role: "service",
    })
    // An empty role is no role: a user's token.
    const user = await get(`${relay.httpUrl}/dev/token?user=alice&role=`)
    expect(user.status).toBe(200)
    expect(decodeJwt((JSON.parse(user.body) as { token: string }).token).role).toBeUndefined()
    // A user token the relay would refuse (API keys' participants are service.<name>): before, minted.
    const posing = await get(`${relay.httpUrl}/dev/token?user=service.backend`)
    expect(posing.status).toBe(400)
    expect((JSON.parse(posing.body) as { error: string }).error).toMatch(
      /^\?user= may not start with "service\."/,
    )
  })

  it("refuses unknown or repeated query parameters with 400 naming what it takes, instead of ignoring them", async ({
    onTestFinished,
  }) => {
    const relay = await startRelayProcess({ args: ["--dev"] })
    onTestFinished(() => relay.kill())
    const takes =
      "/dev/token takes ?user=NAME (a user's token) or ?role=service (a service's, ?user= optional), and ?name= and ?picture= (profile claims)"
    // A misspelt ?user= would otherwise mint nothing useful; a misspelt ?role= a user's token.
    const misspelt = await get(`${relay.httpUrl}/dev/token?user=alice&roles=service`)
    expect(misspelt.status).toBe(400)
    expect(JSON.parse(misspelt.body)).toEqual({ error: `unknown parameter ?roles=: ${takes}` })
    const two = await get(`${relay.httpUrl}/dev/token?usr=alice&Name=Alice&usr=bob`)
    expect(two.status).toBe(400)
    expect(JSON.parse(two.body)).toEqual({ error: `unknown parameters ?usr=, ?Name=: ${takes}` })
    const repeated = await get(`${relay.httpUrl}/dev/token?user=alice&user=bob`)
    expect(repeated.status).toBe(400)
    expect(JSON.parse(repeated.body)).toEqual({ error: `?user= given more than once: ${takes}` })
    // Every parameter it takes, once each: a token.
    const all = await get(`${relay.httpUrl}/dev/token?user=audit&role=service&name=Audit&picture=`)
    expect(all.status).toBe(200)
  })

  it("answers /dev/token to its own origin only: no CORS header, other origins and hosts refused", async ({
    onTestFinished,
  }) => {
    const relay = await startRelayProcess({ args: ["--dev"] })
    onTestFinished(() => relay.kill())
    const sameOrigin = await get(`${relay.httpUrl}/dev/token?user=alice`, { origin: relay.httpUrl })
    expect(sameOrigin.status).toBe(200)
    expect(sameOrigin.headers["access-control-allow-origin"]).toBeUndefined()
    const crossOrigin = await get(`${relay.httpUrl}/dev/token?user=alice`, { origin: "https://evil.example" })
    expect(crossOrigin.status).toBe(403)
    expect(crossOrigin.body).not.toMatch(/token"/)
    // A page whose name was rebound to 127.0.0.1 is same-origin with itself, not with the relay.
    const rebound = await get(`${relay.httpUrl}/dev/token?user=alice`, {
      host: `evil.example:${relay.port}`,
      origin: `http://evil.example:${relay.port}`,
    })
    expect(rebound.status).toBe(403)
    expect(
      (await get(`${relay.httpUrl}/dev/token?user=alice`, { host: `localhost:${relay.port}` })).status,
    ).toBe(200)
    for (const path of ["/healthz", "/metrics", "/nowhere"]) {
      expect((await get(`${relay.httpUrl}${path}`)).headers["access-control-allow-origin"]).toBeUndefined()
    }
  })
})
