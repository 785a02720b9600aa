import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, listMessages, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { SqliteBackend } from "../src/backend/sqlite.js"
import type { HostedConnection } from "../src/document-host.js"
import { createLogger } from "../src/log.js"
import { RelayMetrics } from "../src/metrics.js"
import { RelayCore } from "../src/relay-core.js"
import { MemoryStorage } from "../src/storage/memory.js"
import { MAX_TURN_WAIT_MS, UserTurns } from "../src/user-turns.js"
import { docUntil, stockProvider, synced, TestClient } from "./helpers/clients.js"
import { FakeSession, until } from "./helpers/core-session.js"
import { updateFrame } from "./helpers/frame-probe.js"
import { atCapShapes, DEFAULT_CAPS, seedConversation } from "./helpers/frame-shapes.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

/** Memory storage whose appends wait until the test releases them. */
class GatedStorage extends MemoryStorage {
  private gates: (() => void)[] = []
  override async append(name: string, updates: readonly Uint8Array[]) {
    await new Promise<void>((open) => this.gates.push(open))
    return super.append(name, updates)
  }
  async ping() {}
  get waiting() {
    return this.gates.length
  }
  release() {
    for (const open of this.gates.splice(0)) open()
  }
}

const carol = "carol" as UserId
const dave = "dave" as UserId

const clients: TestClient[] = []
const providers: WebsocketProvider[] = []
const dirs: string[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const p of providers.splice(0)) p.destroy()
  await stopRelayProcesses()
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

describe("UserTurns", () => {
  it("runs one user's work in the order it came, one at a time, and other users' beside it", async () => {
    const turns = new UserTurns()
    const log: string[] = []
    const job =
      (name: string, fail = false) =>
      async () => {
        log.push(`start ${name}`)
        await new Promise((resolve) => setTimeout(resolve, 5))
        log.push(`end ${name}`)
        if (fail) throw new Error(name)
        return name
      }
    const a = "a" as UserId
    const b = "b" as UserId
    const results = [
      turns.run(a, "d1", job("a1")),
      turns.run(a, "d2", job("a2", true)),
      turns.run(a, "d3", job("a3")),
      turns.run(b, "d1", job("b1")),
    ]
    expect(turns.size).toBe(2)
    const settled = await Promise.allSettled(results)
    expect(settled.map((s) => s.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"])
    // b's work started beside a's first; a's ran one after another, a failure not stopping the next.
    expect(log.indexOf("start b1")).toBeLessThan(log.indexOf("end a1"))
    expect(log.indexOf("start a2")).toBeGreaterThan(log.indexOf("end a1"))
    expect(log.indexOf("start a3")).toBeGreaterThan(log.indexOf("end a2"))
    await new Promise((resolve) => setImmediate(resolve))
    expect(turns.size).toBe(0)
  })

  it("starts a user's updates to one document in the order they came while one to another document waits", async () => {
    const turns = new UserTurns()
    const a = "a" as UserId
    const begun: string[] = []
    let release!: () => void
    const first = turns.run(a, "d1", () => {
      begun.push("d1 #1")
      return new Promise<void>((resolve) => {
        release = resolve
      })
    })
    const other = turns.run(a, "d2", async () => {
      begun.push("d2")
    })
    // The second waits for the update to d2; the third is to the same document as the second and
    // builds on it: begun first, it reached the document's queue first and was refused.
    const second = turns.run(a, "d1", async () => {
      begun.push("d1 #2")
    })
    const third = turns.run(a, "d1", async () => {
      begun.push("d1 #3")
    })
    release()
    await Promise.all([first, other, second, third])
    expect(begun).toEqual(["d1 #1", "d2", "d1 #2", "d1 #3"])
  })

  it("stores every message a user sends to one conversation while their update to another waits: none is refused as missing changes", async () => {
    const storage = new GatedStorage()
    const core = new RelayCore({ storage, log: createLogger("silent"), metrics: new RelayMetrics() })
    const [one, two] = [newConversationId(), newConversationId()]
    const sessions = new Map<string, FakeSession>()
    const connections = new Map<string, HostedConnection>()
    const writers = new Map<string, { doc: Y.Doc; send: (body: string) => Uint8Array }>()
    for (const id of [one, two]) {
      const session = new FakeSession({ kind: "user", user: carol })
      sessions.set(id, session)
      const connection = await core.connect(id, session)
      connections.set(id, connection)
      const doc = new Y.Doc()
      createConversation(doc, carol, { kind: "group", id, participants: [dave] })
      const send = (body: string) => {
        const before = Y.encodeStateVector(doc)
        sendMessage(doc, carol, { body })
        return Y.encodeStateAsUpdate(doc, before)
      }
      writers.set(id, { doc, send })
      connection.receive(updateFrame(Y.encodeStateAsUpdate(doc)))
      await until(() => storage.waiting === 1)
      storage.release()
      await until(() => session.parley().length === 1)
    }
    const to = (id: string, body: string) =>
      connections.get(id)!.receive(updateFrame(writers.get(id)!.send(body)))
    // The first message's append waits for the disk, the update to the other conversation waits for it,
    // and two more messages to the first conversation follow.
    to(one, "first")
    await until(() => storage.waiting === 1)
    to(two, "elsewhere")
    to(one, "second")
    to(one, "third")
    // Released until the first conversation's writer holds an answer for everything it sent (updates
    // queued behind one commit are stored, and acknowledged, together).
    const writerOne = writers.get(one)!.doc
    const answered = () => {
      const frames = sessions.get(one)!.parley()
      const last = frames.at(-1)
      if (frames.some((f) => f.type === "error")) return true
      return (
        last?.type === "saved" &&
        (Y.decodeStateVector(last.stateVector).get(writerOne.clientID) ?? 0) ===
          Y.getState(writerOne.store, writerOne.clientID)
      )
    }
    while (!answered() || sessions.get(two)!.parley().length < 2) {
      storage.release()
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
    expect(
      sessions
        .get(one)!
        .parley()
        .filter((f) => f.type === "error"),
    ).toEqual([])
    const stored = new Y.Doc()
    for (const { update } of (await storage.load(one)).updates) Y.applyUpdate(stored, update)
    expect(listMessages(stored, { last: 10 }).map((m) => m.body)).toEqual(["first", "second", "third"])
    await core.close()
  })

  it("does not hold a user's next update behind one that waits on I/O longer than a frame's work, and still starts queued ones one at a time", async () => {
    const turns = new UserTurns()
    const a = "a" as UserId
    const startedAt: number[] = []
    const releases: (() => void)[] = []
    // Three updates queued at once, each stalling (storage that does not answer).
    const stalled = [0, 1, 2].map((i) =>
      turns.run(a, `d${i}`, () => {
        startedAt[i] = performance.now()
        return new Promise<number>((resolve) => releases.push(() => resolve(i)))
      }),
    )
    await new Promise((resolve) => setTimeout(resolve, 2.5 * MAX_TURN_WAIT_MS))
    expect(startedAt).toHaveLength(3)
    // Each waited for the one before it to have started MAX_TURN_WAIT_MS ago, not all of them at once.
    expect(startedAt[1]! - startedAt[0]!).toBeGreaterThanOrEqual(MAX_TURN_WAIT_MS - 5)
    expect(startedAt[2]! - startedAt[1]!).toBeGreaterThanOrEqual(MAX_TURN_WAIT_MS - 5)
    for (const release of releases) release()
    await expect(Promise.all(stalled)).resolves.toEqual([0, 1, 2])
  })
})

describe("one user's frames on many sockets", () => {
  it("do not hold an honest pair's message behind all of them: it is delivered before most of them are saved", async () => {
    // The flooder (alice of the seeded conversations) has one socket per conversation and sends each
    // an at-cap frame at once; each costs the relay tens of milliseconds of CPU.
    const flooded = 8
    const shape = atCapShapes(DEFAULT_CAPS)[0]!
    expect(shape.name).toMatch(/the value cap/)
    const ids = Array.from({ length: flooded }, () => newConversationId())
    const seeds = ids.map((id) => seedConversation(id, 100))
    const dataDir = mkdtempSync(join(tmpdir(), "parley-turns-"))
    dirs.push(dataDir)
    const backend = new SqliteBackend(dataDir)
    for (let i = 0; i < flooded; i++) await backend.documents.append(ids[i]!, [seeds[i]!.stored])
    await backend.close()
    const relay = await startRelayProcess({ dataDir })

    const id = newConversationId()
    const c = stockProvider(relay.url, id, await relay.token(carol))
    const d = stockProvider(relay.url, id, await relay.token(dave))
    providers.push(c, d)
    await Promise.all([synced(c), synced(d)])
    createConversation(c.doc, carol, { kind: "group", id, participants: [dave] })
    await docUntil(d.doc, () => d.doc.getMap("meta").has("createdAt"))

    const flooders: TestClient[] = []
    for (const conversation of ids) {
      const f = new TestClient(relay.url, conversation, await relay.token(shape.user))
      clients.push(f)
      await f.opened
      await f.synced()
      flooders.push(f)
    }
    const frames = flooders.map((f, i) => updateFrame(shape.build(f.doc, seeds[i]!)))
    const savesBefore = flooders.map((f) => f.saves.length)
    const saved = () => flooders.filter((f, i) => f.saves.length > savesBefore[i]!).length

    for (const [i, f] of flooders.entries()) f.send(frames[i]!)
    sendMessage(c.doc, carol, { body: "are you there?" })
    await docUntil(d.doc, () => listMessages(d.doc, { last: 1 }).some((m) => m.body === "are you there?"))
    const savedWhenDelivered = saved()
    await Promise.all(
      flooders.map((f, i) => f.until(() => f.saves.length > savesBefore[i]! || !!f.closeEvent)),
    )

    // Every flood frame is accepted (nothing honest-looking is refused), and the honest message did not
    // wait for them: before, all of them were checked, applied and committed together first (8 of 8).
    expect(saved()).toBe(flooded)
    expect(flooders.every((f) => f.errors.length === 0)).toBe(true)
    expect(savedWhenDelivered).toBeLessThanOrEqual(flooded / 2)
  })
})

describe("a user's turns behind a change held for storage", () => {
  it("keep none of the updates refused meanwhile in memory", async () => {
    const { setFlagsFromString } = await import("node:v8")
    const { runInNewContext } = await import("node:vm")
    setFlagsFromString("--expose-gc")
    const gc = runInNewContext("gc") as () => void
    const turns = new UserTurns()
    const held = turns.run(carol, "g~held", () => new Promise<void>(() => {}))
    // Updates to the same document behind it, each refused at once (as the update path refuses them
    // while the change before waits for storage), each holding a megabyte.
    const refs: WeakRef<Uint8Array>[] = []
    for (let i = 0; i < 20; i++) {
      const update = new Uint8Array(1 << 20)
      refs.push(new WeakRef(update))
      await turns
        .run(carol, "g~held", async () => {
          if (update.length > 0) throw new Error("storage is failing")
        })
        .catch(() => {})
    }
    await new Promise((resolve) => setImmediate(resolve))
    gc()
    await new Promise((resolve) => setImmediate(resolve))
    gc()
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(0)
    expect(turns.size).toBe(1)
    void held
  })
})
