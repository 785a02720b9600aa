import {
  createConversation,
  ErrorCode,
  listMessages,
  MessageType,
  Rule,
  sendMessage,
  type UserId,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { afterEach, describe, expect, it } from "vitest"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import type { AfterSaved } from "../src/extension.js"
import { createLogger } from "../src/log.js"
import { RelayMetrics } from "../src/metrics.js"
import { RelayCore } from "../src/relay-core.js"
import { StorageGuard } from "../src/storage/guard.js"
import { MemoryStorage } from "../src/storage/memory.js"
import { TestClient } from "./helpers/clients.js"
import { FakeSession, until, updateFrame } from "./helpers/core-session.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"
import { storedTwice } from "./helpers/stored-log.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

/** What SQLite reports on a full disk, as better-sqlite3 throws it. */
const diskFull = () => Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" })

/**
 * Memory storage whose appends wait until the test releases them (while
 * `gated`), and may fail; it records every append's entry count.
 */
class GatedStorage extends MemoryStorage {
  gated = true
  readonly appends: number[] = []
  private gates: { open: () => void; fail: (error: Error) => void }[] = []
  override async append(name: string, updates: readonly Uint8Array[]) {
    if (this.gated)
      await new Promise<void>((open, fail) => {
        this.gates.push({ open, fail })
      })
    this.appends.push(updates.length)
    return super.append(name, updates)
  }
  async ping() {}
  get waiting() {
    return this.gates.length
  }
  release() {
    for (const gate of this.gates.splice(0)) gate.open()
  }
  fail(error: Error) {
    for (const gate of this.gates.splice(0)) gate.fail(error)
  }
}

const bodies = (doc: Y.Doc) => listMessages(doc, { last: 1000 }).map((m) => [m.body, m.seq])

/** A writer's replica of a conversation of alice and bob, and its updates one message at a time. */
function writer(id: string) {
  const doc = new Y.Doc()
  createConversation(doc, alice, { kind: "group", id: id as never, participants: [bob] })
  const created = Y.encodeStateAsUpdate(doc)
  const message = (body: string) => {
    const before = Y.encodeStateVector(doc)
    sendMessage(doc, alice, { body })
    return Y.encodeStateAsUpdate(doc, before)
  }
  return { doc, created, message }
}

/** Refuses any update that holds a message with the body "forbidden" (a document rule). */
const noForbiddenWords = {
  checkUpdate({ doc, update }: { doc: Y.Doc; update: Uint8Array }) {
    const copy = new Y.Doc()
    Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
    Y.applyUpdate(copy, update)
    const bad = listMessages(copy, { last: 1000 }).some((m) => m.body === "forbidden")
    return bad
      ? { allowed: false as const, rule: Rule.schema, reason: "no forbidden words" }
      : { allowed: true as const }
  },
}

/** Connects alice (the writer) and bob (a reader) and stores the conversation's creation. */
async function started(core: RelayCore, storage: GatedStorage, id: string) {
  const a = new FakeSession({ kind: "user", user: alice })
  const b = new FakeSession({ kind: "user", user: bob })
  const ca = await core.connect(id, a)
  await core.connect(id, b)
  const w = writer(id)
  ca.receive(updateFrame(w.created))
  await until(() => storage.waiting === 1)
  storage.release()
  await until(() => a.parley().length === 1)
  return { a, b, ca, w }
}

afterEach(async () => {
  await stopRelayProcesses()
})

describe("a document's queued updates, stored as one batch", () => {
  it("stores the updates queued behind a commit in one append, refusing only the one in the middle the rules deny", async () => {
    const storage = new GatedStorage()
    const saved: AfterSaved[] = []
    const core = new RelayCore({
      storage,
      log: createLogger("silent"),
      metrics: new RelayMetrics(),
      extensions: [noForbiddenWords, { afterSaved: (change: AfterSaved) => saved.push(change) }],
    })
    const id = "g~batch1"
    const { a, b, ca, w } = await started(core, storage, id)
    saved.length = 0
    const appendsBefore = storage.appends.length
    // The first message's append waits for the disk; three more arrive meanwhile and queue behind it.
    ca.receive(updateFrame(w.message("m0")))
    await until(() => storage.waiting === 1)
    ca.receive(updateFrame(w.message("m1")))
    // From another of alice's devices (a refused update of the writer's own would leave a gap in its
    // clock that its later updates wait behind, batched or not).
    const other = new Y.Doc()
    Y.applyUpdate(other, Y.encodeStateAsUpdate(w.doc))
    const before = Y.encodeStateVector(other)
    sendMessage(other, alice, { body: "forbidden" })
    ca.receive(updateFrame(Y.encodeStateAsUpdate(other, before)))
    ca.receive(updateFrame(w.message("m3")))
    const bFrames = b.frames.length
    storage.release()
    // m0 is stored; the batch of the three waits for its commit: only the refusal is out yet.
    await until(() => storage.waiting === 1)
    await until(() => a.parley().some((f) => f.type === "error"))
    expect(a.parley().map((f) => f.type)).toEqual(["saved", "saved", "error"])
    expect(a.parley().at(-1)).toMatchObject({
      type: "error",
      error: { code: ErrorCode.FORBIDDEN, rule: Rule.schema },
    })
    const bAfterM0 = b.frames.length
    expect(bAfterM0).toBeGreaterThan(bFrames)
    await new Promise((r) => setTimeout(r, 20))
    expect(b.frames.length).toBe(bAfterM0)
    storage.release()
    await until(() => a.parley().length === 4)
    expect(a.parley().at(-1)!.type).toBe("saved")
    // m0 alone, numbered in its own transaction: one entry; then m1, and m3 applied with the numbers of
    // both: one append of two entries.
    expect(storage.appends.slice(appendsBefore)).toEqual([1, 2])
    expect(bodies(b.replica())).toEqual([
      ["m0", 1],
      ["m1", 2],
      ["m3", 3],
    ])
    const stored = new Y.Doc()
    for (const { update } of (await storage.load(id)).updates) Y.applyUpdate(stored, update)
    expect(bodies(stored)).toEqual(bodies(b.replica()))
    // The saved acknowledges the writer's clock up to m3 (the refused update's structs are not in it).
    const ack = Y.decodeStateVector((a.parley().at(-1) as { stateVector: Uint8Array }).stateVector)
    expect(ack.get(w.doc.clientID)).toBe(Y.getState(stored.store, w.doc.clientID))
    // The observers heard every stored message once, in order, with every position stored.
    const sent = saved.flatMap((c) =>
      c.events.flatMap((e) => (e.type === "message.sent" ? [e.message.body] : [])),
    )
    expect(sent).toEqual(["m0", "m1", "m3"])
    expect(saved.flatMap((c) => c.positions)).toEqual([2, 3, 4])
    expect(saved).toHaveLength(2)
    await core.close()
  })

  it("stores a backlog of large updates to one document one at-cap update's worth per commit, not all in one", async () => {
    const storage = new GatedStorage()
    const core = new RelayCore({ storage, log: createLogger("silent"), metrics: new RelayMetrics() })
    const id = "g~batch-large"
    const { a, b, ca, w } = await started(core, storage, id)
    const shownTo = (session: FakeSession) =>
      listMessages(session.replica(), { last: 5000 }).map((m) => m.seq)
    const many = (from: number, count: number) => {
      const before = Y.encodeStateVector(w.doc)
      for (let i = from; i < from + count; i++) sendMessage(w.doc, alice, { body: `m${i}` })
      return Y.encodeStateAsUpdate(w.doc, before)
    }
    const appendsBefore = storage.appends.length
    ca.receive(updateFrame(w.message("first")))
    await until(() => storage.waiting === 1)
    // Three updates of 600 messages each queue behind the first one's commit: together 1,800 values,
    // where one update may hold 1,000.
    for (let part = 0; part < 3; part++) ca.receive(updateFrame(many(part * 600, 600)))
    storage.release()
    await until(() => storage.waiting === 1)
    // The first two (1,200 values) are one commit; the third waits for the next.
    expect(storage.appends.slice(appendsBefore)).toEqual([1])
    storage.release()
    await until(() => storage.waiting === 1)
    // Stored: the first two, with their numbers (and nothing of the third).
    expect(storage.appends.slice(appendsBefore)).toEqual([1, 3])
    expect(shownTo(b)).toHaveLength(1 + 1200)
    storage.gated = false
    storage.release()
    await until(() => shownTo(b).length === 1 + 1800)
    // The third in a commit of its own.
    expect(storage.appends.slice(appendsBefore)).toHaveLength(3)
    expect(a.parley().some((f) => f.type === "error")).toBe(false)
    expect(shownTo(b)).toEqual(Array.from({ length: 1801 }, (_, i) => i + 1))
    await core.close()
  })

  it("keeps the order of a batch of several writers, tells each observer run its own actor, and sends each writer what the others wrote", async () => {
    const storage = new GatedStorage()
    const saved: AfterSaved[] = []
    const core = new RelayCore({
      storage,
      log: createLogger("silent"),
      metrics: new RelayMetrics(),
      extensions: [{ afterSaved: (change: AfterSaved) => saved.push(change) }],
    })
    const id = "g~batchmix"
    const { a, b, ca, w } = await started(core, storage, id)
    // Bob writes from his own replica, over his own connection.
    const bobSession = new FakeSession({ kind: "user", user: bob })
    const bobConnection = await core.connect(id, bobSession)
    const bobDoc = new Y.Doc()
    Y.applyUpdate(bobDoc, Y.encodeStateAsUpdate(w.doc))
    const bobMessage = (body: string) => {
      const before = Y.encodeStateVector(bobDoc)
      sendMessage(bobDoc, bob, { body })
      return Y.encodeStateAsUpdate(bobDoc, before)
    }
    saved.length = 0
    ca.receive(updateFrame(w.message("a0")))
    await until(() => storage.waiting === 1)
    ca.receive(updateFrame(w.message("a1")))
    bobConnection.receive(updateFrame(bobMessage("b1")))
    ca.receive(updateFrame(w.message("a2")))
    const bobFrames = bobSession.frames.length
    storage.release()
    await until(() => storage.waiting === 1)
    storage.release()
    await until(() => bobSession.parley().some((f) => f.type === "saved"))
    await until(() => a.parley().filter((f) => f.type === "saved").length === 3)
    const order = [
      ["a0", 1],
      ["a1", 2],
      ["b1", 3],
      ["a2", 4],
    ]
    expect(bodies(b.replica())).toEqual(order)
    // Bob's own connection got what alice wrote and the numbers (in frames sent after his update).
    const bobView = new Y.Doc()
    Y.applyUpdate(bobView, Y.encodeStateAsUpdate(bobDoc))
    for (const f of bobSession.frames.slice(bobFrames)) {
      const d = decoding.createDecoder(f)
      if (decoding.readVarUint(d) !== MessageType.sync) continue
      syncProtocol.readSyncMessage(d, encoding.createEncoder(), bobView, "relay")
    }
    expect(bodies(bobView).filter(([body]) => body !== "a0")).toEqual(order.slice(1))
    // Small updates: the batch is merged once, and its writers get the frame the readers get
    // (their own updates in it too, which their Yjs skips).
    const lastSync = (frames: readonly Uint8Array[]) =>
      frames.filter((f) => decoding.readVarUint(decoding.createDecoder(f)) === MessageType.sync).at(-1)
    expect(lastSync(bobSession.frames)).toEqual(lastSync(b.frames))
    // One observer call per run of one writer: alice (a0), then alice, bob, alice; each message once.
    const runs = saved.map((c) => [
      c.actor.kind === "user" ? c.actor.user : c.actor.kind,
      c.events.flatMap((e) => (e.type === "message.sent" ? [e.message.body] : [])),
    ])
    expect(runs).toEqual([
      [alice, ["a0"]],
      [alice, ["a1"]],
      [bob, ["b1"]],
      [alice, ["a2"]],
    ])
    // a0 alone (numbered in its own update), then a1, b1, and a2 with the batch's numbers.
    expect(saved.flatMap((c) => c.positions)).toEqual([2, 3, 4, 5])
    await core.close()
  })

  it("acknowledges nothing and shows nothing of a batch whose commit fails, and stores it once when storage is back", async () => {
    const storage = new GatedStorage()
    const guard = new StorageGuard(storage, { timeoutMs: 5000, probeIntervalMs: 5, maxProbeIntervalMs: 20 })
    const core = new RelayCore({
      storage: guard,
      storageHealth: guard,
      log: createLogger("silent"),
      metrics: new RelayMetrics(),
    })
    const id = "g~batch2"
    const { a, b, ca, w } = await started(core, storage, id)
    ca.receive(updateFrame(w.message("m0")))
    await until(() => storage.waiting === 1)
    ca.receive(updateFrame(w.message("m1")))
    ca.receive(updateFrame(w.message("m2")))
    storage.release()
    await until(() => a.parley().length === 2)
    await until(() => storage.waiting === 1)
    const bFrames = b.frames.length
    const saves = a.parley().filter((f) => f.type === "saved").length
    // A joiner while the batch waits: answered only once it is durable.
    const joiner = new FakeSession({ kind: "user", user: bob })
    const cj = await core.connect(id, joiner)
    const e = encoding.createEncoder()
    encoding.writeVarUint(e, MessageType.sync)
    syncProtocol.writeSyncStep1(e, new Y.Doc())
    cj.receive(encoding.toUint8Array(e))
    storage.gated = false
    storage.fail(diskFull())
    await until(() => a.parley().some((f) => f.type === "error"))
    expect(a.parley().at(-1)).toMatchObject({ type: "error", error: { code: ErrorCode.STORAGE_UNAVAILABLE } })
    // Until storage is back and the batch stored: no saved, nothing to the reader or the joiner.
    expect(a.parley().filter((f) => f.type === "saved")).toHaveLength(saves)
    expect(b.frames.length).toBe(bFrames)
    expect(joiner.frames).toHaveLength(0)
    await until(() => a.parley().filter((f) => f.type === "saved").length > saves)
    const stored = (await storage.load(id)).updates
    expect(storedTwice(stored.map((s) => s.update))).toEqual([])
    const replica = new Y.Doc()
    for (const { update } of stored) Y.applyUpdate(replica, update)
    expect(bodies(replica)).toEqual([
      ["m0", 1],
      ["m1", 2],
      ["m2", 3],
    ])
    await until(() => bodies(b.replica()).length === 3)
    expect(bodies(b.replica())).toEqual(bodies(replica))
    await until(() => bodies(joiner.replica()).length === 3)
    await core.close()
  })

  it("without a storage guard, a failed batch commit evicts the document: no acknowledgement, nothing stored or shown", async () => {
    const storage = new GatedStorage()
    const core = new RelayCore({ storage, log: createLogger("silent"), metrics: new RelayMetrics() })
    const id = "g~batch3"
    const { a, b, ca, w } = await started(core, storage, id)
    ca.receive(updateFrame(w.message("m0")))
    await until(() => storage.waiting === 1)
    ca.receive(updateFrame(w.message("m1")))
    ca.receive(updateFrame(w.message("m2")))
    storage.release()
    await until(() => storage.waiting === 1)
    const bFrames = b.frames.length
    const saves = a.parley().filter((f) => f.type === "saved").length
    storage.gated = false
    storage.fail(new Error("disk on fire"))
    await until(() => a.parley().some((f) => f.type === "error"))
    expect(a.parley().find((f) => f.type === "error")).toMatchObject({ error: { code: ErrorCode.INTERNAL } })
    expect(a.parley().filter((f) => f.type === "saved")).toHaveLength(saves)
    expect(b.frames.length).toBe(bFrames)
    expect(await core.read(id, (doc) => bodies(doc))).toEqual([["m0", 1]])
    await core.close()
  })
})

describe("a backlog of one writer on a relay process", () => {
  it("loses no acknowledged message when the relay is killed mid-backlog, and keeps their order", async () => {
    const args = [
      "--max-messages-per-second",
      "100000",
      "--message-burst",
      "100000",
      "--user-updates-per-second",
      "0",
      // The live document keeps every message, so that a replica lists them all.
      "--history-segment-size",
      "0",
    ]
    const relay = await startRelayProcess({ args })
    const id = "g~batchkill"
    const a = new TestClient(relay.url, id, await relay.token(alice))
    await a.synced()
    createConversation(a.doc, alice, { kind: "group", id: id as never, participants: [] })
    await a.allSaved()
    const total = 3000
    // The writer's clock after each message: a "saved" at or past it acknowledges that message.
    const clocks: number[] = []
    for (let i = 0; i < total; i++) {
      sendMessage(a.doc, alice, { body: `m${i}` })
      clocks.push(Y.getState(a.doc.store, a.doc.clientID))
    }
    const acked = () => Math.max(0, ...a.saves.map((v) => Y.decodeStateVector(v).get(a.doc.clientID) ?? 0))
    await a.until(() => acked() >= clocks[99]!)
    relay.child.kill("SIGKILL")
    await relay.exited
    const ackedMessages = clocks.filter((c) => c <= acked()).length
    a.close()
    // Killed with a backlog still waiting: the test is about what is acknowledged by then.
    expect(ackedMessages).toBeLessThan(total)

    const again = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret, args })
    const b = new TestClient(again.url, id, await again.token(alice))
    await b.synced()
    await b.until(() => listMessages(b.doc, { last: total }).every((m) => m.seq !== undefined))
    const after = listMessages(b.doc, { last: total })
    // Every acknowledged message is there; what is there is the writer's messages in order, numbered 1, 2, 3…
    expect(after.length).toBeGreaterThanOrEqual(ackedMessages)
    expect(after.map((m) => m.body)).toEqual(Array.from({ length: after.length }, (_, i) => `m${i}`))
    expect(after.map((m) => m.seq)).toEqual(Array.from({ length: after.length }, (_, i) => i + 1))
    b.close()
  }, 240_000)
})
