import {
  createConversation,
  ErrorCode,
  encodeSyncStep1,
  listMessages,
  newConversationId,
  Rule,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { MAX_UNKNOWN_CLIENTS } from "../src/connection.js"
import { TestClient } from "./helpers/clients.js"
import { stateVectorOf } from "./helpers/costly-frames.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

// A state vector that does not decode: it claims five entries and holds none.
const BAD_STATE_VECTOR = Uint8Array.of(0x05)

let relay: RelayProcess
beforeAll(async () => {
  // A small answer budget: after its first sync, a user's next sync request is answered from a timer.
  relay = await startRelayProcess({
    args: ["--user-answer-bytes-per-second", "100", "--user-answer-burst-bytes", "100"],
  })
})
afterAll(() => stopRelayProcesses())
const clients: TestClient[] = []
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
})

async function open(name: string, user: string): Promise<TestClient> {
  const c = new TestClient(relay.url, name, await relay.token(user))
  clients.push(c)
  await c.synced()
  return c
}

describe("a sync request whose state vector does not decode", () => {
  it("closes its connection with 4400 even when its answer waits (answer budget, unsaved change), and the relay keeps serving", async () => {
    const mallory = "mallory" as UserId
    const bob = "bob" as UserId
    const id = newConversationId()
    const own = await open(id, mallory)
    createConversation(own.doc, mallory, { kind: "group", id, participants: [bob] })
    sendMessage(own.doc, mallory, { body: "before" })
    await own.allSaved()
    // Spends the user's answer budget: the next answer waits.
    own.send(encodeSyncStep1(new Uint8Array([0])))
    const bad = await open(id, mallory)
    bad.send(encodeSyncStep1(BAD_STATE_VECTOR))
    expect(await bad.closed).toEqual({ code: 4400, reason: "Malformed frame" })
    // Still up: another user joins and reads.
    const watcher = await open(id, bob)
    await watcher.until(() => watcher.frames.length > 1)
    expect(relay.child.exitCode).toBeNull()
    expect(relay.child.signalCode).toBeNull()
  })
})

describe("a sync request listing more clients than the document has", () => {
  it("is refused before its state vector is decoded (rebuild), while one listing the document's clients and its own sessions is answered", async () => {
    const mallory = "mallory" as UserId
    const bob = "bob" as UserId
    const id = newConversationId()
    const own = await open(id, bob)
    createConversation(own.doc, bob, { kind: "group", id, participants: [mallory] })
    sendMessage(own.doc, bob, { body: "hello" })
    await own.allSaved()

    // A megabyte of state vector: 130,000 entries, 60-110 ms of CPU to decode, sent again and again.
    const flood = await open(id, mallory)
    const huge = stateVectorOf(130_000)
    expect(huge.length).toBeGreaterThan(1_000_000)
    for (let i = 0; i < 20; i++) flood.send(encodeSyncStep1(huge))
    await flood.until(() => flood.errors.length > 0)
    expect(flood.errors[0]).toMatchObject({ code: ErrorCode.INVALID_UPDATE, rule: Rule.epoch })
    // The relay keeps serving the conversation.
    const honest = await open(id, bob)
    expect(listMessages(honest.doc, { last: 10 }).map((m) => m.body)).toEqual(["hello"])

    // A replica with sessions the relay has not heard of (an offline device restarted many times) is answered.
    const offline = await open(id, mallory)
    const framesBefore = offline.frames.length
    offline.send(encodeSyncStep1(stateVectorOf(MAX_UNKNOWN_CLIENTS)))
    await offline.until(() => offline.frames.length > framesBefore)
    expect(offline.errors).toEqual([])
  })
})
