import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  CloseCode,
  type ConversationId,
  createConversation,
  deleteMessage,
  type MessageId,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type RunningRelay, startRelay } from "../src/index.js"
import { TestClient } from "./helpers/clients.js"

const alice = "alice" as UserId
const mallory = "mallory" as UserId
const id = "g~updatebudget" as ConversationId

let relay: RunningRelay
let dataDir: string
beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-update-budget-"))
  // A budget of 200 updates at once, refilled slowly: what a frame costs is what this test sees.
  relay = await startRelay({
    port: 0,
    warmUp: false,
    dataDir,
    log: "silent",
    dev: true,
    limits: { userUpdatesPerSecond: 1, userUpdateBurst: 200 },
  })
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: [mallory], title: "Budget" })
  })
})
afterAll(async () => {
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
})

describe("the update budget", () => {
  it("charges a frame of many messages like many messages, not like one small frame", async () => {
    const c = new TestClient(relay.url, id, await relay.auth.mintDev(mallory, {}))
    await c.synced()
    // Each frame is a few kilobytes (one token by its bytes) and holds 150 messages (150 values).
    let frames = 0
    while (!c.closeEvent && frames < 50) {
      c.doc.transact(() => {
        for (let i = 0; i < 150; i++) sendMessage(c.doc, mallory, { body: `m${frames}.${i}` })
      })
      frames++
      await Promise.race([c.allSaved(), c.closed])
    }
    // Charged by bytes alone, all 50 frames (7,500 messages) would fit in 200 updates.
    expect(c.closeEvent).toEqual(CloseCode.TooManyUpdates)
    // 150 values cost 10 tokens: 20 frames spend the budget, the next overdraws it and is refused.
    expect(frames).toBeLessThanOrEqual(22)
    expect(c.errors).toEqual([])
  })

  it("charges a fleeting message for its expiry too, a deletion nobody sends", async () => {
    const user = "trudy" as UserId
    const conversation = "g~fleetingbudget" as ConversationId
    await relay.core.write(conversation, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id: conversation, participants: [user] })
    })
    const c = new TestClient(relay.url, conversation, await relay.auth.mintDev(user, {}))
    await c.synced()
    let frames = 0
    while (!c.closeEvent && frames < 50) {
      c.doc.transact(() => {
        for (let i = 0; i < 150; i++)
          sendMessage(c.doc, user, { body: `f${frames}.${i}`, priority: "fleeting" })
      })
      frames++
      await Promise.race([c.allSaved(), c.closed])
    }
    expect(c.closeEvent).toEqual(CloseCode.TooManyUpdates)
    // 150 messages and their 150 expiries cost 19 tokens: 11 frames spend the budget (22 without expiries).
    expect(frames).toBeLessThanOrEqual(12)
    expect(c.errors).toEqual([])
  })

  it("charges a deletion in a big room for the members' inboxes it purges", async () => {
    const user = "victor" as UserId
    const room = "g~deletionbudget" as ConversationId
    const members = Array.from({ length: 198 }, (_, i) => `member${i}` as UserId)
    const sent: MessageId[] = []
    await relay.core.write(room, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id: room, participants: [user, ...members] })
    })
    await relay.core.write(room, { kind: "user", user }, (doc) => {
      for (let i = 0; i < 150; i++) {
        const id = newMessageId()
        sendMessage(doc, user, { id, body: `d${i}` })
        sent.push(id)
      }
    })
    const c = new TestClient(relay.url, room, await relay.auth.mintDev(user, {}))
    await c.synced()
    let frames = 0
    while (!c.closeEvent && frames < sent.length) {
      deleteMessage(c.doc, user, sent[frames]!)
      frames++
      await Promise.race([c.allSaved(), c.closed])
    }
    // 200 members: a deletion costs 1 + 2 tokens, 67 spend the budget (before: 1 token, all 150 passed).
    expect(c.closeEvent).toEqual(CloseCode.TooManyUpdates)
    expect(frames).toBeLessThanOrEqual(80)
    expect(c.errors).toEqual([])
  })
})
