import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  CloseCode,
  type ConversationId,
  createConversation,
  ErrorCode,
  listMessages,
  sendMessage,
  typesOf,
  type UserId,
  type WireError,
} from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { type RunningRelay, startRelay } from "../src/index.js"
import { TestClient } from "./helpers/clients.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

/** Update budget of the test relay: 200 at once, 100 a second (a 100-value frame costs 7 once checked). */
const BURST = 200
const PER_SECOND = 100

let relay: RunningRelay
let dataDir: string
beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-refused-cost-"))
  relay = await startRelay({
    port: 0,
    warmUp: false,
    dataDir,
    log: "silent",
    dev: true,
    limits: {
      // Per socket, generous: what holds the sender here is their update budget.
      maxMessagesPerSecond: 5_000,
      messageBurst: 5_000,
      userUpdatesPerSecond: PER_SECOND,
      userUpdateBurst: BURST,
    },
  })
})
afterAll(async () => {
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
})

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Fails naming `what` when `promise` hangs, instead of a bare test timeout. */
function step<T>(what: string, promise: Promise<T>, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`stuck: ${what}`)), ms)
    }),
  ])
}

async function conversation(id: ConversationId, sender: UserId): Promise<void> {
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: [sender, bob] })
  })
}

async function open(id: ConversationId, user: UserId, doc?: Y.Doc): Promise<TestClient> {
  const c = new TestClient(relay.url, id, await relay.auth.mintDev(user, {}), doc ? { doc } : {})
  await step(`${user} syncs`, Promise.race([c.synced(), c.closed]))
  return c
}

/** An update of `sender`'s, written on a copy of `c`'s replica (so that `c`'s own stays clean). */
function updateBy(c: TestClient, write: (doc: Y.Doc) => void): Uint8Array {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(c.doc))
  const before = Y.encodeStateVector(copy)
  copy.transact(() => write(copy))
  return Y.encodeStateAsUpdate(copy, before)
}

/** Refused frames of about 7 KB, each of a hundred values, one per refusal path. */
const refusals: {
  readonly name: string
  readonly frame: (c: TestClient, sender: UserId) => Uint8Array
  readonly refusal: Partial<WireError>
}[] = [
  {
    name: "the rules (messages in another member's name)",
    frame: (c) =>
      updateBy(c, (doc) => {
        for (let i = 0; i < 100; i++) sendMessage(doc, alice, { body: `forged ${i} ${"x".repeat(20)}` })
      }),
    refusal: { code: ErrorCode.FORBIDDEN, rule: "author-is-sender" },
  },
  {
    name: "the schema (records that are no messages)",
    frame: (c) =>
      updateBy(c, (doc) => {
        for (let i = 0; i < 100; i++) typesOf(doc).messages.push([{ nonsense: `${i} ${"x".repeat(50)}` }])
      }),
    refusal: { code: ErrorCode.FORBIDDEN, rule: "schema" },
  },
  {
    name: "a decode failure (a hundred messages, then a delete set cut short)",
    frame: (c, sender) => {
      const update = updateBy(c, (doc) => {
        for (let i = 0; i < 100; i++) sendMessage(doc, sender, { body: `cut ${i} ${"x".repeat(20)}` })
      })
      // The last byte is the delete set's client count (0): say five, and end there.
      const cut = update.slice()
      cut[cut.length - 1] = 5
      return cut
    },
    refusal: { code: ErrorCode.INVALID_UPDATE },
  },
  {
    name: "a gap (built on a change of its client the relay never got)",
    frame: (c, sender) => {
      const copy = new Y.Doc()
      Y.applyUpdate(copy, Y.encodeStateAsUpdate(c.doc))
      sendMessage(copy, sender, { body: "never sent" })
      const before = Y.encodeStateVector(copy)
      copy.transact(() => {
        for (let i = 0; i < 100; i++)
          sendMessage(copy, sender, { body: `after a gap ${i} ${"x".repeat(18)}` })
      })
      return Y.encodeStateAsUpdate(copy, before)
    },
    refusal: { code: ErrorCode.UNAVAILABLE, rule: "missing-changes" },
  },
  {
    name: "a cost limit (one text of 7,000 characters: more values than an update may write)",
    frame: (c) => updateBy(c, (doc) => doc.getText("scratch").insert(0, "y".repeat(7_000))),
    refusal: { code: ErrorCode.INVALID_UPDATE, rule: "update-values" },
  },
]

/**
 * Sends `frame` over `c` again and again, 10 at a time, until the relay
 * closes `c` or `times` were sent; returns the refusals it answered.
 */
async function resend(c: TestClient, frame: Uint8Array, times: number): Promise<number> {
  for (let sent = 0; sent < times && !c.closeEvent; sent += 10) {
    for (let i = 0; i < 10; i++) c.sendUpdate(frame)
    await sleep(5)
  }
  // Every frame read before the close is answered (refused) or dropped with the socket.
  await step("the refusals", Promise.race([c.closed, c.until(() => c.errors.length >= times)]))
  return c.errors.length
}

/**
 * Sends `body` as `user` the way the SDK does: on a connection closed for a
 * user limit, again on a new one (the same replica) after a pause; resolves
 * once the relay stored it.
 */
async function sendHonestly(id: ConversationId, user: UserId, body: string): Promise<TestClient> {
  const doc = new Y.Doc()
  let c = await open(id, user, doc)
  sendMessage(doc, user, { body })
  for (;;) {
    await Promise.race([c.allSaved(), c.closed])
    if (!c.closeEvent) return c
    expect(c.closeEvent).toEqual(CloseCode.TooManyUpdates)
    await sleep(250)
    c = await open(id, user, doc)
  }
}

describe("an update the relay refuses", () => {
  for (const [n, { name, frame, refusal }] of refusals.entries()) {
    it(`refused by ${name} costs its sender what checking it cost: a loop of it is stopped like accepted frames, and the sender's next message is stored once the budget allows`, async () => {
      const id = `g~refusedcost${n}` as ConversationId
      const sender = `sender${n}` as UserId
      await conversation(id, sender)
      const c = await open(id, sender)
      const bytes = frame(c, sender)
      expect(bytes.length).toBeGreaterThan(1_000)
      expect(bytes.length).toBeLessThan(8 * 1024)
      const other = await open(id, bob)

      // 150 frames fit a budget of 200 at one token each (before: every one of them was checked, and
      // the loop went on unhindered); at what checking a hundred values costs, about 30 do.
      const answered = await resend(c, bytes, 150)
      expect(c.errors[0]).toMatchObject(refusal)
      expect(c.closeEvent).toEqual(CloseCode.TooManyUpdates)
      expect(answered).toBeLessThan(60)

      // Another user is not held by it.
      sendMessage(other.doc, bob, { body: `bob after ${n}` })
      await step("bob's message", other.allSaved())
      expect(other.closeEvent).toBeUndefined()

      // The sender's honest message is stored once the debt is paid (at most the burst: two seconds).
      const started = performance.now()
      const honest = await step("the sender's honest message", sendHonestly(id, sender, `honest ${n}`))
      expect(performance.now() - started).toBeLessThan((BURST / PER_SECOND) * 1000 * 2)
      expect(
        listMessages(honest.doc, { last: 5 }).some((m) => m.body === `honest ${n}` && m.author === sender),
      ).toBe(true)
      honest.close()
      other.close()
    })
  }
})
