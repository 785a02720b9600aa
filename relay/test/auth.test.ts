import { writeFileSync } from "node:fs"
import { createServer, type Server } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  createConversation,
  ErrorCode,
  listMessages,
  newConversationId,
  removeParticipants,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { exportJWK, exportSPKI, generateKeyPair, SignJWT } from "jose"
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from "vitest"
import * as Y from "yjs"
import { TestClient } from "./helpers/clients.js"
import { awarenessRemovals } from "./helpers/costly-frames.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const clients: TestClient[] = []
const servers: Server[] = []
let shared: RelayProcess
// One relay for the tests that need no special flags: spawning one per test would dominate the run time.
beforeAll(async () => {
  shared = await startRelayProcess()
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
  for (const s of servers.splice(0)) s.close()
})

function client(relay: RelayProcess, name: string, token: string | undefined, parley = true) {
  const c = new TestClient(relay.url, name, token, { parley })
  clients.push(c)
  return c
}

/** A conversation of alice (owner) and bob, created and saved through the relay. */
async function conversation(relay: RelayProcess) {
  const id = newConversationId()
  const owner = client(relay, id, await relay.token(alice))
  await owner.synced()
  createConversation(owner.doc, alice, { kind: "group", id, participants: [bob] })
  sendMessage(owner.doc, alice, { body: "welcome" })
  await owner.allSaved()
  return { id, owner }
}

/**
 * A relay verifying tokens with the key set of a local JWKS server that
 * answers after `delayMs`, and a token for bob signed with its key.
 */
async function relayWithKeySet(delayMs: number): Promise<{ relay: RelayProcess; token: string }> {
  const { publicKey, privateKey } = await generateKeyPair("RS256")
  const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "RS256", use: "sig" }
  const server = createServer((_req, res) => {
    setTimeout(() => {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ keys: [jwk] }))
    }, delayMs)
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as { port: number }).port
  const relay = await startRelayProcess({
    args: ["--auth-jwks-url", `http://127.0.0.1:${port}/jwks.json`],
  })
  onTestFinished(() => relay.kill())
  const token = await new SignJWT({})
    .setProtectedHeader({ alg: "RS256", kid: "k1" })
    .setSubject(bob)
    .setExpirationTime("1h")
    .sign(privateKey)
  return { relay, token }
}

describe("authentication", () => {
  it("closes a connection without a token with 4401", async () => {
    const relay = shared
    expect((await client(relay, newConversationId(), undefined).closed).code).toBe(4401)
  })

  it("closes a connection whose token has a bad signature with 4401", async () => {
    const relay = shared
    const forged = await relay.token(alice, { secret: "not-the-relay-secret" })
    expect((await client(relay, newConversationId(), forged).closed).code).toBe(4401)
  })

  it("closes a connection with an expired token with 4401", async () => {
    const relay = shared
    const expired = await relay.token(alice, { expiresIn: Math.floor(Date.now() / 1000) - 60 })
    expect((await client(relay, newConversationId(), expired).closed).code).toBe(4401)
  })

  it("closes a connection with a token that is not a JWT with 4401", async () => {
    const relay = shared
    expect((await client(relay, newConversationId(), "garbage").closed).code).toBe(4401)
  })

  it("accepts tokens signed with the key whose public half it was given (PEM)", async () => {
    const { publicKey, privateKey } = await generateKeyPair("ES256")
    const pem = join(tmpdir(), `parley-key-${process.pid}-${Date.now()}.pem`)
    writeFileSync(pem, await exportSPKI(publicKey))
    const relay = await startRelayProcess({ args: ["--auth-public-key", pem] })
    onTestFinished(() => relay.kill())
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: "ES256" })
      .setSubject(alice)
      .setExpirationTime("1h")
      .sign(privateKey)
    const c = client(relay, newConversationId(), token)
    await c.synced()
    expect(c.closeEvent).toBeUndefined()
    const hs256 = await relay.token(alice)
    expect((await client(relay, newConversationId(), hs256).closed).code).toBe(4401)
  })

  it("accepts tokens signed with a key from a JWKS URL", async () => {
    const { relay, token } = await relayWithKeySet(0)
    const c = client(relay, newConversationId(), token)
    await c.synced()
    expect(c.closeEvent).toBeUndefined()
  })

  it("tells connections 4503 (try again), not 4401, while its JWKS cannot be fetched, and locks no address for it", async () => {
    const { publicKey, privateKey } = await generateKeyPair("RS256")
    const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "RS256", use: "sig" }
    let up = false
    const server = createServer((_req, res) => {
      res.writeHead(up ? 200 : 503, { "content-type": "application/json" })
      res.end(up ? JSON.stringify({ keys: [jwk] }) : "{}")
    })
    servers.push(server)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as { port: number }).port
    const relay = await startRelayProcess({
      // Two failed verifications lock an address: the outage's refusals must not count as such.
      args: [
        "--auth-jwks-url",
        `http://127.0.0.1:${port}/jwks.json`,
        "--address-auth-failures-per-minute",
        "2",
      ],
    })
    onTestFinished(() => relay.kill())
    const token = await new SignJWT({})
      .setProtectedHeader({ alg: "RS256", kid: "k1" })
      .setSubject(bob)
      .setExpirationTime("1h")
      .sign(privateKey)
    for (let i = 0; i < 4; i++) {
      const closed = await client(relay, newConversationId(), token).closed
      expect(closed.code).toBe(4503)
      // Its HTTP routes taking a user's token say the same: 503, not 401 (which counts against the address).
      const answer = await fetch(`${relay.httpUrl}/v1/uploads/none`, {
        headers: { authorization: `Bearer ${token}` },
      })
      expect(answer.status).toBe(503)
    }
    // A stock y-websocket client stops reconnecting on 4400-4499; 4503 it retries, and now it gets in
    // (once the relay tries the key set again: every 5 s while it never had it).
    up = true
    await new Promise((resolve) => setTimeout(resolve, 5_000))
    const c = client(relay, newConversationId(), token, false)
    await c.synced()
    expect(c.closeEvent).toBeUndefined()
  })
})

describe("while a token is being verified", () => {
  it("reads nothing more of the socket, and serves it once its user is known, however much it sent", async () => {
    // A key set that takes a second and a half to answer, as a slow identity provider does.
    const { relay, token } = await relayWithKeySet(1_500)
    const c = client(relay, newConversationId(), token)
    await c.opened
    // Eight megabytes of awareness frames the moment the socket opens, while the token waits for its key
    // set: a relay that read them meanwhile would hold them (it closed such a socket at 4 MB). Now it
    // reads nothing until the user is known, and then no more than it can pass on at once.
    const junk = awarenessRemovals(80_000)
    for (let i = 0; i < 8; i++) c.send(junk)
    await c.synced()
    expect(c.closeEvent).toBeUndefined()
  })
})

describe("access", () => {
  it("lets a user open an empty document and create a conversation in it", async () => {
    const relay = shared
    const { id } = await conversation(relay)
    const b = client(relay, id, await relay.token(bob))
    await b.synced()
    expect(listMessages(b.doc, { last: 10 }).map((m) => [m.body, m.seq])).toEqual([["welcome", 1]])
  })

  it("refuses a user who is not a participant with 4403", async () => {
    const relay = shared
    const { id } = await conversation(relay)
    expect((await client(relay, id, await relay.token("carol")).closed).code).toBe(4403)
  })

  it("disconnects a participant with 4403 as soon as they are removed", async () => {
    const relay = shared
    const { id, owner } = await conversation(relay)
    const b = client(relay, id, await relay.token(bob))
    await b.synced()
    removeParticipants(owner.doc, alice, [bob])
    expect((await b.closed).code).toBe(4403)
    await owner.allSaved()
    expect((await client(relay, id, await relay.token(bob)).closed).code).toBe(4403)
  })

  it("lets a service token read any conversation but refuses its updates with a typed error", async () => {
    const relay = shared
    const { id, owner } = await conversation(relay)
    const service = client(relay, id, await relay.token("moderation", { role: "service" }))
    await service.synced()
    expect(listMessages(service.doc, { last: 10 }).map((m) => m.body)).toEqual(["welcome"])
    const before = Y.encodeStateVector(owner.doc)
    sendMessage(service.doc, alice, { body: "written by a service" })
    await service.until(() => service.errors.length > 0)
    expect(service.errors[0]!.code).toBe(ErrorCode.FORBIDDEN)
    expect(service.closeEvent).toBeUndefined()
    // The refused update reached nobody: alice's next message is saved and is all she sees.
    sendMessage(owner.doc, alice, { body: "still here" })
    await owner.allSaved()
    expect(listMessages(owner.doc, { last: 10 }).map((m) => m.body)).toEqual(["welcome", "still here"])
    expect(Y.encodeStateVector(owner.doc)).not.toEqual(before)
    await service.until(() => listMessages(service.doc, { last: 10 }).some((m) => m.body === "still here"))
  })

  it("closes a stock client (no parley=1) that writes with a read-only token with 4403", async () => {
    const relay = shared
    const { id } = await conversation(relay)
    const service = client(relay, id, await relay.token("moderation", { role: "service" }), false)
    await service.synced()
    sendMessage(service.doc, alice, { body: "nope" })
    // The rule the shared README names for it, not the one for users outside a conversation.
    expect(await service.closed).toEqual({ code: 4403, reason: "read-only" })
  })

  it("opens an inbox to its user and services only, and refuses their writes", async () => {
    const relay = shared
    const own = client(relay, "inbox~alice", await relay.token(alice))
    await own.synced()
    own.doc.getMap("x").set("k", 1)
    await own.until(() => own.errors.length > 0)
    expect(own.errors[0]!.code).toBe(ErrorCode.FORBIDDEN)
    const service = client(relay, "inbox~alice", await relay.token("admin", { role: "service" }))
    await service.synced()
    expect(service.doc.getMap("x").size).toBe(0)
    expect((await client(relay, "inbox~alice", await relay.token(bob)).closed).code).toBe(4403)
  })

  it("closes a connection to a name that is not a document with 4404", async () => {
    const relay = shared
    expect((await client(relay, "not a valid/name", await relay.token(alice)).closed).code).toBe(4404)
  })
})
