import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  encodeSyncStep1,
  epochOf,
  readFrame,
  sendMessage,
  type UserId,
  UserLimit,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { type RunningRelay, startRelay } from "../src/index.js"
import { TestClient } from "./helpers/clients.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId
const id = "g~syncrequests" as ConversationId

// Small budgets, so that a few answers of this document spend them.
const ANSWER_BYTES_PER_SECOND = 80_000
const ANSWER_BURST_BYTES = 240_000

let relay: RunningRelay
let dataDir: string
beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-sync-requests-"))
  relay = await startRelay({
    port: 0,
    warmUp: false,
    dataDir,
    log: "silent",
    dev: true,
    limits: { userAnswerBytesPerSecond: ANSWER_BYTES_PER_SECOND, userAnswerBurstBytes: ANSWER_BURST_BYTES },
  })
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: [bob, carol], title: "Three" })
    for (let i = 0; i < 1500; i++) sendMessage(doc, alice, { body: `message ${i} ${"x".repeat(200)}` })
  })
})
afterAll(async () => {
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
})

const answersOf = (client: TestClient): Uint8Array[] =>
  client.frames.filter((frame) => {
    try {
      const read = readFrame(frame)
      return read.type === "sync" && read.message.type === "syncStep2"
    } catch {
      return false
    }
  })
const bytesOf = (frames: Uint8Array[]) => frames.reduce((sum, frame) => sum + frame.length, 0)
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("sync requests", () => {
  it("holds what one user is answered across connections to a rate, folds the requests meanwhile, and answers the last", async () => {
    const sockets = [
      new TestClient(relay.url, id, await relay.auth.mintDev(bob, {})),
      new TestClient(relay.url, id, await relay.auth.mintDev(bob, {})),
    ]
    const started = performance.now()
    await Promise.all(sockets.map((s) => s.synced()))
    // A state vector naming almost nothing (the document's epoch): each answer is the whole live
    // document, encoded anew, not the cold joiners' cached frame.
    const epoch = await relay.core.read(id, (doc) => epochOf(doc))
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, epoch ?? 0x7fffffff)
    encoding.writeVarUint(encoder, 0)
    const almostNothing = encodeSyncStep1(encoding.toUint8Array(encoder))
    const asked = 2 * 60
    for (let round = 0; round < 60; round++) {
      for (const s of sockets) s.send(almostNothing)
      await sleep(10)
    }
    const live = await relay.core.read(id, (doc) => doc.getArray("messages").length)
    const whole = Math.max(...sockets.flatMap(answersOf).map((frame) => frame.length))
    expect(whole).toBeGreaterThan(50_000)

    // Meanwhile another member joins: her budget is her own.
    const other = new TestClient(relay.url, id, await relay.auth.mintDev(carol, {}))
    await other.synced()
    expect(other.doc.getArray("messages").length).toBe(live)

    // Each socket's requests fold into one waiting answer; it comes once the budget allows.
    await Promise.all(sockets.map((s) => s.until(() => answersOf(s).length >= 2)))
    await sleep(500)
    const elapsed = (performance.now() - started) / 1000
    const answered = sockets.flatMap(answersOf)
    // What bob was sent is what his budget allows (plus the one answer that overdraws it), not a
    // whole document per request (the relay encoding ~120 documents).
    expect(bytesOf(answered)).toBeLessThanOrEqual(
      ANSWER_BURST_BYTES + ANSWER_BYTES_PER_SECOND * elapsed + whole,
    )
    expect(answered.length).toBeLessThan(asked / 4)
    for (const s of sockets) expect(s.closeEvent).toBeUndefined()
    // The answers hold the live document: a replica built from the last one has each of its messages.
    const replica = new Y.Doc()
    const last = answersOf(sockets[0]!).at(-1)!
    const read = readFrame(last)
    if (read.type === "sync" && read.message.type === "syncStep2") Y.applyUpdate(replica, read.message.update)
    expect(replica.getArray("messages").length).toBe(live)
    const limited = await (await fetch(`${relay.httpUrl}/metrics`)).text()
    expect(limited).toMatch(new RegExp(`parley_user_limit_total\\{limit="${UserLimit.answers}"\\} [1-9]`))
    for (const s of [...sockets, other]) s.close()
  })

  it("charges every answer a base cost, so that up-to-date requests from many sockets cannot be answered without end", async () => {
    // A small conversation: an up-to-date request's answer is a few bytes, and walks a few structs.
    const small = "g~syncrequestssmall" as ConversationId
    await relay.core.write(small, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id: small, participants: [carol], title: "Small" })
      sendMessage(doc, alice, { body: "hello" })
    })
    const sockets = await Promise.all(
      Array.from(
        { length: 10 },
        async () => new TestClient(relay.url, small, await relay.auth.mintDev(carol, {})),
      ),
    )
    await Promise.all(sockets.map((s) => s.synced()))
    const upToDate = encodeSyncStep1(await relay.core.read(small, (doc) => Y.encodeStateVector(doc)))
    const before = sockets.reduce((sum, s) => sum + answersOf(s).length, 0)
    const started = performance.now()
    const asked = 10 * 30
    for (let round = 0; round < 30; round++) {
      for (const s of sockets) s.send(upToDate)
      await sleep(10)
    }
    // Every socket's last request is answered (folded, not dropped).
    await Promise.all(sockets.map((s) => s.until(() => answersOf(s).length >= 2)))
    await sleep(300)
    const elapsed = (performance.now() - started) / 1000
    const answered = sockets.reduce((sum, s) => sum + answersOf(s).length, 0) - before
    // Charged their few bytes, all 300 were answered at once; charged at least 4 KiB each, no more than
    // the budget's worth of answers.
    expect(answered).toBeLessThanOrEqual(
      Math.ceil((ANSWER_BURST_BYTES + ANSWER_BYTES_PER_SECOND * elapsed) / 4096) + 10,
    )
    expect(answered).toBeLessThan(asked / 2)
    for (const s of sockets) expect(s.closeEvent).toBeUndefined()
    for (const s of sockets) s.close()
  })
})
