import {
  createConversation,
  ErrorCode,
  encodeSyncStep1,
  lastSequence,
  listMessages,
  MessageType,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import { TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const clients: TestClient[] = []
let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelayProcess({
    args: ["--max-frame-bytes", "65536", "--max-messages-per-second", "20", "--message-burst", "40"],
  })
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
})

async function open(name: string, user: string, options: { parley?: boolean } = {}, target = relay) {
  const c = new TestClient(target.url, name, await target.token(user), options)
  clients.push(c)
  await c.synced()
  return c
}

/** Client updates stored so far (the relay's own writes, such as inbox upkeep, come and go on their own). */
async function storedUpdates(target = relay): Promise<number> {
  const text = await (await fetch(`${target.httpUrl}/metrics`)).text()
  return text
    .split("\n")
    .filter((l) => l.startsWith('parley_updates_total{source="client"}'))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0)
}

/** A conversation with a healthy writer (alice) and a watcher (bob) on it. */
async function scene(target = relay) {
  const id = newConversationId()
  const healthy = await open(id, alice, {}, target)
  createConversation(healthy.doc, alice, { kind: "group", id, participants: [bob, "mallory" as UserId] })
  await healthy.allSaved()
  const watcher = await open(id, bob, {}, target)
  return { id, healthy, watcher, mark: watcher.frames.length, stored: await storedUpdates(target) }
}

/**
 * After the bad input: nothing was stored or broadcast for it, and the relay
 * still serves the healthy client (its next message is saved and reaches the watcher).
 */
async function expectStillServing(s: Awaited<ReturnType<typeof scene>>, bad?: TestClient, target = relay) {
  expect(await storedUpdates(target)).toBe(s.stored)
  sendMessage(s.healthy.doc, alice, { body: "still works" })
  await s.healthy.allSaved()
  await s.watcher.until(() => listMessages(s.watcher.doc, { last: 10 }).some((m) => m.body === "still works"))
  for (const frame of s.watcher.frames.slice(s.mark)) {
    const decoder = decoding.createDecoder(frame)
    const type = decoding.readVarUint(decoder)
    // The watcher's own "saved" acks are for it alone; anything else must be the healthy message.
    if (type === MessageType.parley) continue
    expect(type).toBe(MessageType.sync)
    expect(decoding.readVarUint(decoder)).toBe(syncProtocol.messageYjsUpdate)
    const writers = Y.decodeUpdate(decoding.readVarUint8Array(decoder)).structs.map((x) => x.id.client)
    if (bad) expect(writers).not.toContain(bad.doc.clientID)
  }
  expect(s.watcher.closeEvent).toBeUndefined()
}

const syncUpdateFrame = (payload: Uint8Array) => {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.sync)
  syncProtocol.writeUpdate(encoder, payload)
  return encoding.toUint8Array(encoder)
}

describe("bad input", () => {
  it.each([
    ["bytes that are not a varint", [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
    ["an unknown message type", [42, 1, 2, 3]],
    ["an unknown sync message type", [MessageType.sync, 9, 0]],
    ["a truncated awareness update", [MessageType.awareness, 10, 1, 5]],
    ["an awareness state that is not JSON", [MessageType.awareness, 6, 1, 7, 1, 2, 0x7b, 0x7b]],
    ["an empty frame", []],
    // Held per connection until answered, it was a way to park memory in the relay (no replica sends one).
    [
      "a sync request whose state vector is longer than the clients it declares",
      [...encodeSyncStep1(new Uint8Array(30_000))],
    ],
    // y-protocols sends one message per frame: what follows one is no replica's.
    [
      "a sync request followed by other bytes",
      [...encodeSyncStep1(Uint8Array.of(0)), ...new Uint8Array(30_000)],
    ],
  ])("closes a connection that sends %s with 4400", async (_, bytes) => {
    const s = await scene()
    const bad = await open(s.id, "mallory")
    bad.send(new Uint8Array(bytes))
    expect((await bad.closed).code).toBe(4400)
    await expectStillServing(s, bad)
  })

  it("closes a connection that sends a text frame with 4400", async () => {
    const s = await scene()
    const bad = await open(s.id, "mallory")
    bad.ws.send("hello")
    expect((await bad.closed).code).toBe(4400)
    await expectStillServing(s, bad)
  })

  it("answers an update Yjs cannot decode with a typed INVALID_UPDATE error and keeps the connection", async () => {
    const s = await scene()
    const bad = await open(s.id, "mallory")
    bad.send(syncUpdateFrame(new Uint8Array([5, 200, 1, 2, 3, 255, 255, 255])))
    await bad.until(() => bad.errors.length > 0)
    expect(bad.errors[0]!.code).toBe(ErrorCode.INVALID_UPDATE)
    expect(bad.closeEvent).toBeUndefined()
    await expectStillServing(s, bad)
  })

  it("refuses an update followed by bytes Yjs never reads (INVALID_UPDATE), storing and sending none of it", async () => {
    const s = await scene()
    const bad = await open(s.id, "mallory")
    // A real message of hers, then bytes of her own: Yjs stops reading after the delete set, so they
    // were stored and sent to every member as they came (an outside probe: 1 MB after each message).
    const replica = new Y.Doc()
    Y.applyUpdate(replica, Y.encodeStateAsUpdate(bad.doc))
    const before = Y.encodeStateVector(replica)
    sendMessage(replica, "mallory" as UserId, { body: "a message" })
    const update = Y.encodeStateAsUpdate(replica, before)
    const hidden = new TextEncoder().encode("HIDDEN-PAYLOAD".repeat(100))
    const padded = new Uint8Array(update.length + hidden.length)
    padded.set(update)
    padded.set(hidden, update.length)
    bad.send(syncUpdateFrame(padded))
    await bad.until(() => bad.errors.length > 0)
    expect(bad.errors[0]!.code).toBe(ErrorCode.INVALID_UPDATE)
    expect(bad.errors[0]!.message).toMatch(/1400 bytes after its end/)
    await expectStillServing(s, bad)
    for (const frame of s.watcher.frames) expect(Buffer.from(frame).includes("HIDDEN-PAYLOAD")).toBe(false)
  })

  it("closes a stock client that sends an update Yjs cannot decode with 4400", async () => {
    const s = await scene()
    const bad = await open(s.id, "mallory", { parley: false })
    bad.send(syncUpdateFrame(new Uint8Array([5, 200, 1, 2, 3, 255, 255, 255])))
    expect((await bad.closed).code).toBe(4400)
    await expectStillServing(s, bad)
  })

  it("closes a stock client whose update the rules or caps refuse with 4400 / 4403 and the rule as the reason", async () => {
    // A low value cap stands for the default 1,000: a long offline period of a stock client.
    const target = await startRelayProcess({ args: ["--max-update-values", "50"] })
    const s = await scene(target)
    const offline = await open(s.id, "mallory", { parley: false }, target)
    await offline.synced()
    // Written on a copy: the test client would send each change as it is made.
    const copy = (doc: Y.Doc) => {
      const replica = new Y.Doc()
      Y.applyUpdate(replica, Y.encodeStateAsUpdate(doc))
      return replica
    }
    const device = copy(offline.doc)
    const before = Y.encodeStateVector(device)
    for (let i = 0; i < 51; i++) sendMessage(device, "mallory" as UserId, { body: `offline ${i}` })
    offline.send(syncUpdateFrame(Y.encodeStateAsUpdate(device, before)))
    expect(await offline.closed).toEqual({ code: 4400, reason: "update-values" })
    // A message written as someone else.
    const forger = await open(s.id, "mallory", { parley: false }, target)
    await forger.synced()
    const forged = copy(forger.doc)
    const mark = Y.encodeStateVector(forged)
    sendMessage(forged, alice, { body: "not mallory's to write" })
    forger.send(syncUpdateFrame(Y.encodeStateAsUpdate(forged, mark)))
    expect(await forger.closed).toEqual({ code: 4403, reason: "author-is-sender" })
    await expectStillServing(s, undefined, target)
  })

  it("closes a connection that sends a frame above --max-frame-bytes with 4413", async () => {
    const s = await scene()
    const bad = await open(s.id, "mallory")
    bad.send(new Uint8Array(70_000))
    expect((await bad.closed).code).toBe(4413)
    await expectStillServing(s, bad)
  })

  it("closes a connection that floods frames with 4429", async () => {
    const s = await scene()
    const bad = await open(s.id, "mallory")
    const logged = () => relay.lines.filter((line) => line.includes('"closed: too many frames"')).length
    const before = logged()
    for (let i = 0; i < 200; i++) bad.send(new Uint8Array([MessageType.queryAwareness]))
    expect((await bad.closed).code).toBe(4429)
    await expectStillServing(s, bad)
    // The frames read after the close are dropped: one log line for the socket, not one per frame.
    expect(logged() - before).toBe(1)
  })
})

describe("slow consumers", () => {
  it("lets a joiner take its time over an initial sync larger than the send-queue limit, and counts only what queues behind it", async () => {
    const limit = 1024 * 1024
    const target = await startRelayProcess({
      args: [
        "--max-buffered-bytes",
        String(limit),
        "--max-messages-per-second",
        "1000",
        "--message-burst",
        "1000",
        // The whole history in the live document: the initial sync is what this is about.
        "--history-segment-size",
        "0",
      ],
    })
    const s = await scene(target)
    // About 12 MB of history: more than the kernel's socket buffers take, so most of the
    // joiner's initial sync waits in the relay's send queue while it does not read.
    const body = "x".repeat(15_000)
    for (let frame = 0; frame < 16; frame++) {
      s.healthy.doc.transact(() => {
        for (let i = 0; i < 50; i++) sendMessage(s.healthy.doc, alice, { body })
      })
      await s.healthy.allSaved()
    }
    const joiner = new TestClient(target.url, s.id, await target.token(bob))
    clients.push(joiner)
    await joiner.opened
    joiner.ws.pause()
    await new Promise((r) => setTimeout(r, 1000))
    expect(target.lines.some((l) => l.includes("reads too slowly"))).toBe(false)
    expect(joiner.closeEvent).toBeUndefined()

    // What queues behind the initial sync does count: two more megabytes and the joiner is dropped.
    let total = 800
    for (let frame = 0; frame < 3 && !joiner.closeEvent; frame++) {
      s.healthy.doc.transact(() => {
        for (let i = 0; i < 50; i++) sendMessage(s.healthy.doc, alice, { body })
      })
      total += 50
      await s.healthy.allSaved()
    }
    await target.waitForLog((line) => String(line.msg).includes("reads too slowly"))
    joiner.ws.resume()
    expect((await joiner.closed).code).toBe(4429)

    // A joiner that reads gets the whole conversation through the same limit.
    const reader = await open(s.id, bob, {}, target)
    expect(listMessages(reader.doc, { last: 5000 }).length).toBe(total)

    // Only one initial sync at a time is exempt: asking for the whole conversation again and
    // again without reading piles up copies, and those count.
    const greedy = new TestClient(target.url, s.id, await target.token(bob))
    clients.push(greedy)
    await greedy.opened
    greedy.ws.pause()
    const askAgain = encoding.createEncoder()
    encoding.writeVarUint(askAgain, MessageType.sync)
    syncProtocol.writeSyncStep1(askAgain, new Y.Doc())
    for (let i = 0; i < 5; i++) greedy.send(encoding.toUint8Array(askAgain))
    greedy.ws.resume()
    expect((await greedy.closed).code).toBe(4429)
  }, 60_000)

  it("disconnects a client that does not read with 4429 instead of queueing without bound", async () => {
    const target = await startRelayProcess({
      args: ["--max-buffered-bytes", "65536", "--max-messages-per-second", "1000", "--message-burst", "1000"],
    })
    const s = await scene(target)
    const slow = await open(s.id, "mallory", {}, target)
    slow.ws.pause()
    const body = "x".repeat(15_000)
    const dropped = () => target.lines.some((l) => l.includes("reads too slowly"))
    // Broadcasts pile up once the kernel's socket buffers are full (a few MB); write until the
    // relay gives up on the slow reader, paced like a real writer (the relay bounds bytes waiting).
    let sent = 0
    for (let frame = 0; frame < 60 && !dropped(); frame++) {
      s.healthy.doc.transact(() => {
        for (let i = 0; i < 60; i++) sendMessage(s.healthy.doc, alice, { body })
      })
      sent += 60
      if (frame % 2 === 1) await s.healthy.allSaved()
    }
    await s.healthy.allSaved()
    await target.waitForLog((line) => String(line.msg).includes("reads too slowly"))
    slow.ws.resume()
    expect((await slow.closed).code).toBe(4429)
    // Every message numbered reached the watcher (most of them sealed since: long bodies seal by their size).
    await s.watcher.until(() => lastSequence(s.watcher.doc) === sent)
    s.mark = s.watcher.frames.length
    s.stored = await storedUpdates(target)
    await expectStillServing(s, slow, target)
  })
})
