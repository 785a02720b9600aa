import { ErrorCode, ParleyError } from "@parley/shared"
import { SignJWT } from "jose"
import { afterEach, describe, expect, it, vi } from "vitest"
import { Authenticator } from "../src/auth.js"

const secret = "a-secret-of-at-least-thirty-two-bytes!!"
const key = new TextEncoder().encode(secret)
const sign = (subject: string, expiresInS: number) =>
  new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(subject)
    .setExpirationTime(Math.floor(Date.now() / 1000) + expiresInS)
    .sign(key)

afterEach(() => {
  vi.useRealTimers()
})

describe("Authenticator", () => {
  it("verifies a token presented again once for a while, and never takes it past its expiry", async () => {
    vi.useFakeTimers({ toFake: ["Date"] })
    const auth = new Authenticator({ key: { kind: "secret", secret } })
    const token = await sign("alice", 90)
    const first = await auth.verifyToken(token)
    expect(first.principal).toEqual({ kind: "user", user: "alice" })
    // Every channel of a socket and every refresh present the same token: not verified again.
    expect(await auth.verifyToken(token)).toBe(first)
    // Another token is its own.
    const bob = await auth.verifyToken(await sign("bob", 90))
    expect(bob.principal).toEqual({ kind: "user", user: "bob" })
    // A minute on, it is verified again (a key removed from a JWKS stops its tokens within a minute).
    vi.advanceTimersByTime(61_000)
    const again = await auth.verifyToken(token)
    expect(again).not.toBe(first)
    expect(again.principal).toEqual(first.principal)
    // Past its expiry, the token taken on trust a moment ago is refused.
    vi.advanceTimersByTime(30_000)
    const error = await auth.verifyToken(token).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ParleyError)
    expect((error as ParleyError).code).toBe(ErrorCode.UNAUTHORIZED)
  })

  it("does not take a bad token on trust after a good one", async () => {
    const auth = new Authenticator({ key: { kind: "secret", secret } })
    const token = await sign("alice", 90)
    await auth.verifyToken(token)
    const forged = `${token.slice(0, -4)}AAAA`
    await expect(auth.verifyToken(forged)).rejects.toMatchObject({ code: ErrorCode.UNAUTHORIZED })
    await expect(auth.verifyToken(forged)).rejects.toMatchObject({ code: ErrorCode.UNAUTHORIZED })
  })

  it("knows a token it verified as verified before until the token expires, past the minute it is taken on trust", async () => {
    vi.useFakeTimers({ toFake: ["Date"] })
    const auth = new Authenticator({ key: { kind: "secret", secret } })
    const token = await sign("alice", 600)
    expect(auth.verifiedBefore(token)).toBe(false)
    await auth.verifyToken(token)
    expect(auth.verifiedBefore(token)).toBe(true)
    // Only that exact token: another of the same user, or a forged one, was never verified.
    expect(auth.verifiedBefore(await sign("alice", 300))).toBe(false)
    expect(auth.verifiedBefore(`${token.slice(0, -4)}AAAA`)).toBe(false)
    // Past the minute the verification is taken on trust (a user who reconnects later).
    vi.advanceTimersByTime(5 * 60_000)
    expect(auth.knownPrincipal(token)).toBeUndefined()
    expect(auth.verifiedBefore(token)).toBe(true)
    // Not past its expiry.
    vi.advanceTimersByTime(5 * 60_000 + 1000)
    expect(auth.verifiedBefore(token)).toBe(false)
  })
})
