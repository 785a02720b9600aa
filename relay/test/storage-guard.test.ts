import { pbkdf2 } from "node:crypto"
import { promisify } from "node:util"
import { createConversation, ErrorCode, listMessages, sendMessage, type UserId } from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { createLogger } from "../src/log.js"
import { RelayMetrics } from "../src/metrics.js"
import type { Principal } from "../src/principal.js"
import { RelayCore } from "../src/relay-core.js"
import { StorageGuard, withDeadline, withDeadlines } from "../src/storage/guard.js"
import { MemoryStorage } from "../src/storage/memory.js"
import { FakeSession, until, updateFrame } from "./helpers/core-session.js"
import { storedTwice } from "./helpers/stored-log.js"

const alice = "alice" as UserId

/** What SQLite reports on a full disk, as better-sqlite3 throws it. */
const diskFull = () => Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" })

/**
 * Memory storage that fails every call while `broken`, and only its writes
 * (appends, probes) while `full`; counts the calls that reached it.
 */
class FlakyStorage extends MemoryStorage {
  broken = false
  full = false
  calls = 0
  /** Appends that store, then report a failure (a commit whose answer was lost). */
  landButFail = 0
  private check(write = false) {
    this.calls++
    if (this.broken || (write && this.full)) throw diskFull()
  }
  override async load(name: string) {
    this.check()
    return super.load(name)
  }
  override async append(name: string, updates: readonly Uint8Array[]) {
    this.check(true)
    const positions = await super.append(name, updates)
    if (this.landButFail > 0) {
      this.landButFail--
      throw new Error("Connection terminated unexpectedly")
    }
    return positions
  }
  async ping() {
    this.check(true)
  }
}

function guarded(storage: FlakyStorage, timeoutMs = 1000) {
  return new StorageGuard(storage, { timeoutMs, probeIntervalMs: 5, maxProbeIntervalMs: 20 })
}

function core(guard: StorageGuard) {
  return new RelayCore({
    storage: guard,
    storageHealth: guard,
    log: createLogger("silent"),
    metrics: new RelayMetrics(),
  })
}

const user: Principal = { kind: "user", user: alice }

/** A relay core over flaky storage, with conversation `id` created and saved through one connection. */
async function savedConversation(id: string) {
  const storage = new FlakyStorage()
  const relay = core(guarded(storage))
  const session = new FakeSession(user)
  const connection = await relay.connect(id, session)
  const doc = new Y.Doc()
  createConversation(doc, alice, { kind: "group", id: id as never, participants: [] })
  connection.receive(updateFrame(Y.encodeStateAsUpdate(doc)))
  await until(() => session.parley().some((f) => f.type === "saved"))
  return { storage, relay, session, connection, doc }
}

/** Breaks `storage` and sends a message "waits" on the connection; resolves with the state before it, once refused. */
async function waitsForStorage({
  storage,
  session,
  connection,
  doc,
}: Pick<Awaited<ReturnType<typeof savedConversation>>, "storage" | "session" | "connection" | "doc">) {
  storage.broken = true
  const before = Y.encodeStateVector(doc)
  sendMessage(doc, alice, { body: "waits" })
  connection.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
  await until(() => session.parley().some((f) => f.type === "error"))
  return before
}

describe("the storage guard", () => {
  it("types a backend failure as STORAGE_UNAVAILABLE, then refuses without calling the backend until a probe succeeds", async () => {
    const storage = new FlakyStorage()
    const guard = guarded(storage)
    storage.broken = true
    await expect(guard.append("d", [new Uint8Array([1])])).rejects.toMatchObject({
      code: ErrorCode.STORAGE_UNAVAILABLE,
      cause: { code: "SQLITE_FULL" },
    })
    expect(guard.state).toMatchObject({ state: "failing" })
    const calls = storage.calls
    const refused = guard.append("d", [new Uint8Array([2])])
    expect(storage.calls).toBe(calls)
    await expect(refused).rejects.toThrow(/^storage is failing/)
    storage.broken = false
    await guard.whenAvailable()
    expect(guard.available).toBe(true)
    expect(await guard.append("d", [new Uint8Array([3])])).toEqual([1])
  })

  it("still serves reads while only writes fail, and refuses them at once too once a read failed", async () => {
    const storage = new FlakyStorage()
    await storage.append("d", [new Uint8Array([1])])
    const guard = guarded(storage)
    storage.full = true
    await expect(guard.append("d", [new Uint8Array([2])])).rejects.toMatchObject({
      code: ErrorCode.STORAGE_UNAVAILABLE,
    })
    // A member opening a conversation on a full disk still gets it.
    expect((await guard.load("d")).updates).toHaveLength(1)
    expect(await guard.list()).toEqual(["d"])
    expect(guard.state).toMatchObject({ state: "failing", reads: true })

    storage.broken = true
    await expect(guard.load("d")).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
    expect(guard.state).toMatchObject({ state: "failing", reads: false })
    const calls = storage.calls
    const refused = guard.load("d")
    expect(storage.calls).toBe(calls)
    await expect(refused).rejects.toThrow(/^storage is failing/)

    storage.broken = false
    storage.full = false
    await guard.whenAvailable()
    expect((await guard.load("d")).updates).toHaveLength(1)
  })

  it("refuses the reads in flight, and a side store's calls, once it finds the database answering nothing", async () => {
    const storage = new FlakyStorage()
    // Loads wait (as on a database that stopped answering) until released.
    let answer!: () => void
    const silent = new Promise<void>((resolve) => {
      answer = resolve
    })
    const original = storage.load.bind(storage)
    storage.load = async (name) => {
      await silent
      return original(name)
    }
    const unanswered = (error: unknown) => error instanceof Error && error.message === "Query read timeout"
    // A deadline far away: whatever refuses the calls below, it is not their deadline.
    const guard = new StorageGuard(storage, {
      timeoutMs: 60_000,
      probeIntervalMs: 5,
      maxProbeIntervalMs: 20,
      noAnswer: unanswered,
    })
    const sideStore = withDeadlines({ lookup: () => silent.then(() => "key") }, 60_000, "api keys", guard)
    try {
      const load = guard.load("d")
      const lookup = sideStore.lookup()
      load.catch(() => {})
      lookup.catch(() => {})
      // Another call of the same database hears the driver's own timeout: nothing answers.
      const failing = withDeadlines(
        {
          find: async () => {
            throw new Error("Query read timeout")
          },
        },
        60_000,
        "idempotency",
        guard,
      )
      await expect(failing.find()).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
      expect(guard.state).toMatchObject({ state: "failing", reads: false })
      await expect(load).rejects.toThrow(/^storage is failing: .*Query read timeout/)
      await expect(lookup).rejects.toThrow(/^storage is failing: .*Query read timeout/)
      let recovered = false
      void guard.whenAvailable().then(() => {
        recovered = true
      })
      // Still waiting in the backend: not back until it settles.
      await new Promise((r) => setTimeout(r, 100))
      expect(recovered).toBe(false)
      answer()
      await until(() => recovered)
      expect((await guard.load("d")).updates).toHaveLength(0)
    } finally {
      await guard.close()
    }
  })

  it("fails a call that outlives its deadline, and reports recovery only after that call settled", async () => {
    const storage = new FlakyStorage()
    let finish!: () => void
    const hung = new Promise<void>((resolve) => {
      finish = resolve
    })
    const original = storage.append.bind(storage)
    storage.append = async (name, updates) => {
      await hung
      return original(name, updates)
    }
    const guard = guarded(storage, 30)
    await expect(guard.append("d", [new Uint8Array([1])])).rejects.toThrow(
      /did not store an update within 30 ms/,
    )
    let recovered = false
    void guard.whenAvailable().then(() => {
      recovered = true
    })
    // Probes answer at once, but the abandoned append could still land: no recovery yet.
    await new Promise((r) => setTimeout(r, 100))
    expect(recovered).toBe(false)
    finish()
    await until(() => recovered)
    expect((await storage.load("d")).updates).toHaveLength(1)
  })

  it("watches storage while it answers: a failed probe refuses writes, those in flight too, until a probe succeeds", async () => {
    const storage = new FlakyStorage()
    // Appends wait (as on a locked table) until released.
    let release!: () => void
    const locked = new Promise<void>((resolve) => {
      release = resolve
    })
    const original = storage.append.bind(storage)
    storage.append = async (name, updates) => {
      await locked
      return original(name, updates)
    }
    // A deadline far away: whatever refuses the append below, it is not its deadline.
    const guard = new StorageGuard(storage, {
      timeoutMs: 60_000,
      probeIntervalMs: 5,
      maxProbeIntervalMs: 20,
      watchIntervalMs: 10,
    })
    try {
      const inFlight = guard.append("d", [new Uint8Array([1])])
      inFlight.catch(() => {})
      // Only the probe's write finds out.
      storage.full = true
      await expect(inFlight).rejects.toMatchObject({
        code: ErrorCode.STORAGE_UNAVAILABLE,
        message: expect.stringMatching(/^storage is failing: .*database or disk is full/),
      })
      expect(guard.state).toMatchObject({ state: "failing", reads: true })
      await expect(guard.append("d", [new Uint8Array([2])])).rejects.toThrow(/^storage is failing/)
      // Reads are still served.
      expect(await guard.list()).toEqual([])

      storage.full = false
      let recovered = false
      void guard.whenAvailable().then(() => {
        recovered = true
      })
      // Probes succeed now, but the refused append is still waiting in the backend: not back yet.
      await new Promise((r) => setTimeout(r, 100))
      expect(recovered).toBe(false)
      release()
      await until(() => recovered)
      // The refused append landed after all (the relay's retry finds it stored: see the update path below).
      expect((await storage.load("d")).updates).toHaveLength(1)
      expect(await guard.append("d", [new Uint8Array([3])])).toEqual([2])
    } finally {
      await guard.close()
    }
  })

  it("does not call storage stalled for a write that waits on its own (a lock, the commit queue) while storage answers", async () => {
    const storage = new FlakyStorage()
    // The append of one conversation waits, as on a fence row during a takeover or behind slow commits;
    // the probe and the reads answer meanwhile.
    let release!: () => void
    const held = new Promise<void>((resolve) => {
      release = resolve
    })
    const original = storage.append.bind(storage)
    storage.append = async (name, updates) => {
      if (name === "taken-over") await held
      return original(name, updates)
    }
    // Stall bound 1 s (half the timeout); the watch's own schedule far away: only a wait can start a probe.
    const guard = new StorageGuard(storage, { timeoutMs: 2000, watchIntervalMs: 60_000 })
    try {
      const waiting = guard.append("taken-over", [new Uint8Array([1])])
      const seen: (number | undefined)[] = []
      // Past the stall bound, short of the write's deadline.
      const started = Date.now()
      while (Date.now() - started < 1600) {
        seen.push(guard.stalledSince())
        await new Promise((r) => setTimeout(r, 25))
      }
      expect(seen.filter((at) => at !== undefined)).toEqual([])
      release()
      expect(await waiting).toEqual([1])
      expect(guard.state).toEqual({ state: "ok" })
    } finally {
      await guard.close()
    }
  })

  it("calls storage stalled once a write has waited past the bound with nothing asked since answered", async () => {
    const storage = new FlakyStorage()
    // Nothing answers: the database stopped (a link that drops every packet).
    let answer!: () => void
    const stopped = new Promise<void>((resolve) => {
      answer = resolve
    })
    const original = storage.append.bind(storage)
    storage.append = async (name, updates) => {
      await stopped
      return original(name, updates)
    }
    storage.ping = () => stopped
    const guard = new StorageGuard(storage, { timeoutMs: 2000, watchIntervalMs: 60_000 })
    try {
      const waiting = guard.append("d", [new Uint8Array([1])])
      await until(() => guard.stalledSince() !== undefined)
      // Reported before the write's own deadline fails it.
      expect(guard.state).toEqual({ state: "ok" })
      answer()
      await waiting
      expect(guard.stalledSince()).toBeUndefined()
    } finally {
      await guard.close()
    }
  })

  it("runs one probe at a time: a probe that hangs is not joined by others, and fails at its deadline", async () => {
    const storage = new FlakyStorage()
    let probes = 0
    let answer!: () => void
    storage.ping = () => {
      probes++
      return new Promise<void>((resolve) => {
        answer = resolve
      })
    }
    const guard = new StorageGuard(storage, {
      timeoutMs: 200,
      probeIntervalMs: 5,
      maxProbeIntervalMs: 20,
      watchIntervalMs: 5,
    })
    try {
      await until(() => guard.state.state === "failing")
      expect(guard.state).toMatchObject({
        state: "failing",
        error: { message: "storage did not answer a probe within 200 ms" },
      })
      // Watch and recovery probes keep coming due, but none starts while the first has not settled.
      await new Promise((r) => setTimeout(r, 300))
      expect(probes).toBe(1)
      answer()
      await until(() => probes === 2)
      answer()
      await guard.whenAvailable()
    } finally {
      await guard.close()
    }
  })
})

describe("storage deadlines", () => {
  it("fail only the calls that outlive them, whatever order the calls settle in", async () => {
    const hung = new Promise<number>(() => {})
    let finish!: (value: number) => void
    const later = new Promise<number>((resolve) => {
      finish = resolve
    })
    const outlives = withDeadline(hung, 40, "answer")
    const settlesLate = withDeadline(later, 40, "answer later")
    const settlesAtOnce = withDeadline(Promise.resolve(1), 40, "answer at once")
    await expect(settlesAtOnce).resolves.toBe(1)
    finish(2)
    await expect(settlesLate).resolves.toBe(2)
    await expect(outlives).rejects.toMatchObject({
      code: ErrorCode.STORAGE_UNAVAILABLE,
      message: "storage did not answer within 40 ms",
    })
    // Still served after expiring one.
    await expect(withDeadline(hung, 40, "answer again")).rejects.toThrow(
      "storage did not answer again within 40 ms",
    )
    await expect(withDeadline(Promise.reject(new Error("disk")), 40, "fail")).rejects.toThrow("disk")
  })

  it("do not fail a call whose answer arrived while the event loop was busy past the deadline", async () => {
    // Answered from the thread pool (as a database driver's socket answers), during the busy wait.
    const answered = promisify(pbkdf2)("secret", "salt", 1, 32, "sha256")
    const bounded = withDeadline(answered, 20, "answer")
    const until = performance.now() + 200
    while (performance.now() < until) {
      // The relay busy (a large load), past the deadline, while the answer is ready.
    }
    await expect(bounded).resolves.toHaveLength(32)
    // A call with no answer still fails at its deadline.
    await expect(withDeadline(new Promise(() => {}), 20, "answer")).rejects.toThrow(
      "storage did not answer within 20 ms",
    )
  })

  it("bound every method of a store that returns a promise, typing its failures", async () => {
    const store = {
      answers: async (n: number) => n + 1,
      fails: async () => {
        throw new Error("disk")
      },
      hangs: () => new Promise<void>(() => {}),
      now: () => 5,
    }
    const bounded = withDeadlines(store, 40, "outbox")
    expect(await bounded.answers(1)).toBe(2)
    expect(await bounded.answers(2)).toBe(3)
    await expect(bounded.fails()).rejects.toMatchObject({
      code: ErrorCode.STORAGE_UNAVAILABLE,
      message: "outbox: fails failed: disk",
    })
    await expect(bounded.hangs()).rejects.toMatchObject({
      code: ErrorCode.STORAGE_UNAVAILABLE,
      message: "storage did not finish outbox: hangs within 40 ms",
    })
    expect(bounded.now()).toBe(5)
  })
})

describe("the update path while storage fails", () => {
  it("keeps a change whose append failed, refuses others retryably, and stores it once when storage is back", async () => {
    const id = "g~guard1"
    const { storage, relay, session, connection, doc } = await savedConversation(id)

    const before = await waitsForStorage({ storage, session, connection, doc })
    expect(session.parley().at(-1)).toMatchObject({
      type: "error",
      error: { code: ErrorCode.STORAGE_UNAVAILABLE },
    })
    // A further update is refused at once, retryably, and the connection stays open.
    const before2 = Y.encodeStateVector(doc)
    sendMessage(doc, alice, { body: "refused for now" })
    connection.receive(updateFrame(Y.encodeStateAsUpdate(doc, before2)))
    await until(() => session.parley().filter((f) => f.type === "error").length === 2)
    expect(session.closed).toBeUndefined()

    const saves = session.parley().filter((f) => f.type === "saved").length
    storage.broken = false
    await until(() => session.parley().filter((f) => f.type === "saved").length > saves)
    // The client re-sends everything pending (as the SDK does): only what the relay lacks is stored.
    connection.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
    await until(() => session.parley().filter((f) => f.type === "saved").length > saves + 1)
    const stored = (await storage.load(id)).updates
    const replica = new Y.Doc()
    for (const { update } of stored) Y.applyUpdate(replica, update)
    expect(listMessages(replica, { last: 10 }).map((m) => [m.body, m.seq])).toEqual([
      ["waits", 1],
      ["refused for now", 2],
    ])
    expect(storedTwice(stored.map((e) => e.update))).toEqual([])
    await relay.close()
  })

  it("takes an append that failed but was committed as stored, instead of storing it twice", async () => {
    const storage = new FlakyStorage()
    const guard = guarded(storage)
    const relay = core(guard)
    const id = "g~guard2"
    const session = new FakeSession(user)
    const connection = await relay.connect(id, session)
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: id as never, participants: [] })
    sendMessage(doc, alice, { body: "once" })
    storage.landButFail = 1
    connection.receive(updateFrame(Y.encodeStateAsUpdate(doc)))
    await until(() => session.parley().some((f) => f.type === "saved"))
    expect(session.parley()[0]).toMatchObject({
      type: "error",
      error: { code: ErrorCode.STORAGE_UNAVAILABLE },
    })
    // The update with its sequencing (one update), stored by the first attempt only.
    expect((await storage.load(id)).updates).toHaveLength(1)
    await relay.close()
  })

  it("drops its copy retryably (4503) when another writer stored changes while its append waited (a relay that took the conversation over)", async () => {
    const id = "g~guard3"
    const { storage, relay, session, connection, doc } = await savedConversation(id)
    await waitsForStorage({ storage, session, connection, doc })
    // Meanwhile another writer (the relay that now orders the conversation) stores a change of its own.
    const other = new Y.Doc()
    Y.applyUpdate(other, Y.encodeStateAsUpdate(doc, Y.encodeStateVector(new Y.Doc())))
    const elsewhere = Y.encodeStateVector(other)
    sendMessage(other, alice, { body: "stored elsewhere" })
    await MemoryStorage.prototype.append.call(storage, id, [Y.encodeStateAsUpdate(other, elsewhere)])
    storage.broken = false
    await until(() => session.closed !== undefined)
    expect(session.closed?.code).toBe(4503)
    await relay.close()
  })

  it("gives up a change waiting for storage when the relay shuts down", async () => {
    const storage = new FlakyStorage()
    const guard = guarded(storage)
    const relay = core(guard)
    const id = "g~guard3"
    const session = new FakeSession(user)
    const connection = await relay.connect(id, session)
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: id as never, participants: [] })
    storage.broken = true
    connection.receive(updateFrame(Y.encodeStateAsUpdate(doc)))
    await until(() => session.parley().some((f) => f.type === "error"))
    await relay.close()
    expect(session.parley().every((f) => f.type !== "saved")).toBe(true)
    expect(session.parley().at(-1)).toMatchObject({ type: "error", error: { code: ErrorCode.UNAVAILABLE } })
  })
})
