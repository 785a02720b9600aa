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
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { SYNC_ANSWER_INTERVAL_MS } from "../src/connection.js"
import { type RunningRelay, startRelay } from "../src/index.js"
import { TestClient } from "./helpers/clients.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const id = "g~syncrequests" as ConversationId

let relay: RunningRelay
let dataDir: string
beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-sync-requests-"))
  relay = await startRelay({ port: 0, dataDir, log: "silent", dev: true })
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: [bob], title: "Two" })
    for (let i = 0; i < 200; i++) sendMessage(doc, alice, { body: `message ${i}` })
  })
})
afterAll(async () => {
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
})

const isAnswer = (frame: Uint8Array) => {
  try {
    const read = readFrame(frame)
    return read.type === "sync" && read.message.type === "syncStep2"
  } catch {
    return false
  }
}
const answers = (client: TestClient) => client.frames.filter(isAnswer).length

describe("sync requests", () => {
  it("answers a client asking again and again once a second, with what it lacks, and keeps it connected", async () => {
    const client = new TestClient(relay.url, id, await relay.auth.mintDev(bob, {}))
    await client.synced()
    // The connection's own sync request was answered just now: the next may come a second later.
    await new Promise((resolve) => setTimeout(resolve, SYNC_ANSWER_INTERVAL_MS))
    const before = answers(client)
    // A state vector naming almost nothing (the document's epoch, when it has one): each answer is the
    // whole document, and not the cold joiners' cached frame.
    const epoch = await relay.core.read(id, (doc) => epochOf(doc))
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, epoch ?? 0x7fffffff)
    encoding.writeVarUint(encoder, 0)
    const almostNothing = encoding.toUint8Array(encoder)
    const started = performance.now()
    for (let i = 0; i < 50; i++) client.send(encodeSyncStep1(almostNothing))
    await client.until(() => answers(client) >= before + 2)
    const elapsed = performance.now() - started
    // The first at once, the 49 others folded into one, a second later.
    expect(elapsed).toBeGreaterThanOrEqual(SYNC_ANSWER_INTERVAL_MS - 50)
    await new Promise((resolve) => setTimeout(resolve, SYNC_ANSWER_INTERVAL_MS + 200))
    expect(answers(client) - before).toBe(2)
    expect(client.closeEvent).toBeUndefined()
    // The answers hold the document: a replica built from them alone has every message.
    const replica = new Y.Doc()
    for (const frame of client.frames.filter(isAnswer)) {
      const read = readFrame(frame)
      if (read.type === "sync" && read.message.type === "syncStep2")
        Y.applyUpdate(replica, read.message.update)
    }
    expect(replica.getArray("messages").length).toBe(client.doc.getArray("messages").length)
    client.close()
  })
})
