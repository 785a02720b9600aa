import { createServer, type Server } from "node:http"
import { ErrorCode, ParleyError } from "@parley/shared"
import { exportJWK, generateKeyPair, SignJWT } from "jose"
import { afterEach, describe, expect, it, vi } from "vitest"
import { Authenticator } from "../src/auth.js"

const servers: Server[] = []
afterEach(() => {
  vi.useRealTimers()
  for (const s of servers.splice(0)) s.close()
})

async function signer(kid: string) {
  const { publicKey, privateKey } = await generateKeyPair("RS256")
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: "RS256", use: "sig" }
  const sign = (sub: string) =>
    new SignJWT({})
      .setProtectedHeader({ alg: "RS256", kid })
      .setSubject(sub)
      .setExpirationTime("1h")
      .sign(privateKey)
  return { jwk, sign }
}

/** A JWKS server whose answer the test sets: the keys, or a failing status. */
async function keySetServer() {
  const state: { keys: object[]; status: number; requests: number } = { keys: [], status: 200, requests: 0 }
  const server = createServer((_req, res) => {
    state.requests++
    res.writeHead(state.status, { "content-type": "application/json" })
    res.end(state.status === 200 ? JSON.stringify({ keys: state.keys }) : "{}")
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/jwks.json`
  return { state, url }
}

async function refusal(promise: Promise<unknown>): Promise<ParleyError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(ParleyError)
  return error as ParleyError
}

describe("a JWKS that cannot be fetched", () => {
  it("is the retryable UNAVAILABLE, not UNAUTHORIZED, before the keys were ever fetched", async () => {
    const { state, url } = await keySetServer()
    const k1 = await signer("k1")
    state.keys = [k1.jwk]
    state.status = 503
    const told: boolean[] = []
    const auth = new Authenticator({
      key: { kind: "jwks", url },
      keySet: { onUnreachable: (_e, stale) => told.push(stale) },
    })
    const start = Date.now()
    vi.useFakeTimers({ toFake: ["Date"], now: start })
    const token = await k1.sign("bob")
    expect((await refusal(auth.verify(token))).code).toBe(ErrorCode.UNAVAILABLE)
    expect(told).toEqual([false])
    // The host is not asked again at every connection meanwhile (it was: 89 fetches for 100 connects).
    for (const user of ["carol", "dave", "erin"])
      expect((await refusal(auth.verify(await k1.sign(user)))).code).toBe(ErrorCode.UNAVAILABLE)
    expect(state.requests).toBe(1)
    // Once it answers, and the retry's time came, the same token verifies.
    state.status = 200
    vi.setSystemTime(start + 5_000)
    expect(await auth.verify(token)).toEqual({ kind: "user", user: "bob" })
  })

  it("takes a body over a megabyte for a key set that cannot be fetched", async () => {
    const { state, url } = await keySetServer()
    const k1 = await signer("k1")
    state.keys = [k1.jwk, { pad: "x".repeat(2 * 1024 * 1024) }]
    const auth = new Authenticator({ key: { kind: "jwks", url } })
    expect((await refusal(auth.verify(await k1.sign("bob")))).code).toBe(ErrorCode.UNAVAILABLE)
  })

  it("says UNAVAILABLE, not a bad signature, for a key id the set it fetched moments ago lacks (a key just added)", async () => {
    const { state, url } = await keySetServer()
    const k1 = await signer("k1")
    const k2 = await signer("k2")
    state.keys = [k1.jwk]
    const auth = new Authenticator({ key: { kind: "jwks", url } })
    const start = Date.now()
    vi.useFakeTimers({ toFake: ["Date"], now: start })
    expect(await auth.verify(await k1.sign("bob"))).toEqual({ kind: "user", user: "bob" })
    state.keys = [k1.jwk, k2.jwk]
    // jose fetches the set again for an unknown key id only 30 s after its last fetch.
    expect((await refusal(auth.verify(await k2.sign("carol")))).code).toBe(ErrorCode.UNAVAILABLE)
    vi.setSystemTime(start + 31_000)
    expect(await auth.verify(await k2.sign("carol"))).toEqual({ kind: "user", user: "carol" })
    // A key id the set still lacks once fetched again is a bad token.
    vi.setSystemTime(start + 62_000)
    const k3 = await signer("k3")
    expect((await refusal(auth.verify(await k3.sign("mallory")))).code).toBe(ErrorCode.UNAUTHORIZED)
  })

  it("keeps verifying with the keys fetched before once jose's copy is old, and says UNAVAILABLE for a key it never saw", async () => {
    const { state, url } = await keySetServer()
    const k1 = await signer("k1")
    const k2 = await signer("k2")
    state.keys = [k1.jwk]
    const told: boolean[] = []
    const auth = new Authenticator({
      key: { kind: "jwks", url },
      keySet: { onUnreachable: (_e, stale) => told.push(stale) },
    })
    expect(await auth.verify(await k1.sign("bob"))).toEqual({ kind: "user", user: "bob" })
    state.status = 500
    // jose fetches its key set again once its copy is 10 minutes old, and refused every token while
    // that failed; a token of a user who was never verified before (not in the relay's own cache).
    vi.useFakeTimers({ toFake: ["Date"], now: Date.now() + 11 * 60_000 })
    const carol = await k1.sign("carol")
    expect(await auth.verify(carol)).toEqual({ kind: "user", user: "carol" })
    expect(told).toEqual([true])
    // A token signed by a key added since: it may be good, so not "invalid signature".
    expect((await refusal(auth.verify(await k2.sign("dave")))).code).toBe(ErrorCode.UNAVAILABLE)
    // A forged one (a key the set never had, with a kid the set has) is still refused as bad.
    const forger = await signer("k1")
    expect((await refusal(auth.verify(await forger.sign("mallory")))).code).toBe(ErrorCode.UNAUTHORIZED)
  })

  it("stops a key taken out of the set within a minute or so, and stands in with the old keys for an hour at most", async () => {
    const { state, url } = await keySetServer()
    const k1 = await signer("k1")
    const k2 = await signer("k2")
    state.keys = [k1.jwk, k2.jwk]
    const auth = new Authenticator({ key: { kind: "jwks", url } })
    const start = Date.now()
    vi.useFakeTimers({ toFake: ["Date"], now: start })
    expect(await auth.verify(await k1.sign("bob"))).toEqual({ kind: "user", user: "bob" })
    // k1 revoked: a fresh token it signed is refused once the copy is a minute old (jose kept it 10 minutes).
    state.keys = [k2.jwk]
    vi.setSystemTime(start + 61_000)
    expect((await refusal(auth.verify(await k1.sign("carol")))).code).toBe(ErrorCode.UNAUTHORIZED)
    expect(await auth.verify(await k2.sign("dave"))).toEqual({ kind: "user", user: "dave" })
    // The host goes down: the keys fetched last stand in, and the host is not asked again for every token.
    state.status = 503
    vi.setSystemTime(start + 5 * 60_000)
    const asked = state.requests
    for (const user of ["erin", "frank", "grace"])
      expect(await auth.verify(await k2.sign(user))).toEqual({ kind: "user", user })
    expect(state.requests - asked).toBe(1)
    // An hour after the last fetch, they no longer do.
    vi.setSystemTime(start + 61_000 + 60 * 60_000 + 1_000)
    expect((await refusal(auth.verify(await k2.sign("heidi")))).code).toBe(ErrorCode.UNAVAILABLE)
  })
})
