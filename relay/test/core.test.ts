import {
  type ChangeEvent,
  createConversation,
  type Decision,
  deleteMessage,
  ErrorCode,
  encodeSyncStep1,
  getMessage,
  listMessages,
  MessageType,
  messageIndex,
  newConversationId,
  newMessageId,
  Rule,
  sendMessage,
  sequenceWriterIds,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { describe, expect, it } from "vitest"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import { MAX_UNKNOWN_CLIENTS } from "../src/connection.js"
import type { AfterSaved, RunningCore } from "../src/extension.js"
import { createLogger } from "../src/log.js"
import { RelayMetrics } from "../src/metrics.js"
import { RelayCore } from "../src/relay-core.js"
import { MemoryStorage } from "../src/storage/memory.js"
import type { RelayStorage } from "../src/storage/types.js"
import { FakeSession, until, updateFrame } from "./helpers/core-session.js"
import { stateVectorOf } from "./helpers/costly-frames.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

/** A session that records which frames it was sent while its writes were held (see `Session.hold`). */
class HoldingSession extends FakeSession {
  /** The frames of each hold, from its start to its release. */
  readonly held: Uint8Array[][] = []
  private current: Uint8Array[] | undefined
  override send(frame: Uint8Array) {
    super.send(frame)
    this.current?.push(frame)
  }
  hold() {
    const frames: Uint8Array[] = []
    this.current = frames
    return () => {
      this.current = undefined
      if (frames.length > 0) this.held.push(frames)
    }
  }
}

const syncStep1Frame = (doc: Y.Doc) => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MessageType.sync)
  syncProtocol.writeSyncStep1(e, doc)
  return encoding.toUint8Array(e)
}

function makeCore(
  storage: RelayStorage = new MemoryStorage(),
  extra: Partial<ConstructorParameters<typeof RelayCore>[0]> = {},
) {
  return new RelayCore({ storage, log: createLogger("silent"), metrics: new RelayMetrics(), ...extra })
}

/** A conversation of alice and bob, as an update. */
function conversationUpdate(id: string, messages: string[] = []) {
  const doc = new Y.Doc()
  createConversation(doc, alice, { kind: "group", id: id as never, participants: [bob] })
  for (const body of messages) sendMessage(doc, alice, { body })
  return { doc, update: Y.encodeStateAsUpdate(doc) }
}

/** Storage whose appends wait until the test releases them. */
class GatedStorage extends MemoryStorage {
  private gates: (() => void)[] = []
  override async append(name: string, updates: readonly Uint8Array[]) {
    await new Promise<void>((resolve) => this.gates.push(resolve))
    if (this.failure) {
      const failure = this.failure
      this.failure = undefined
      throw failure
    }
    return super.append(name, updates)
  }
  get waiting() {
    return this.gates.length
  }
  release() {
    for (const gate of this.gates.splice(0)) gate()
  }
  /** Fails the waiting appends with `error`. */
  fail(error: Error) {
    this.failure = error
    this.release()
  }
  private failure: Error | undefined
}

describe("relay core (no sockets)", () => {
  it("broadcasts, shows joiners and acknowledges an update only after storage made it durable", async () => {
    const storage = new GatedStorage()
    const core = makeCore(storage)
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const b = new FakeSession({ kind: "user", user: bob })
    const ca = await core.connect(id, a)
    await core.connect(id, b)
    const before = b.frames.length
    ca.receive(updateFrame(conversationUpdate(id, ["hello"]).update))
    await until(() => storage.waiting === 1)
    // A device of bob's joins while the update waits for the disk: it is answered once the update is durable.
    const joiner = new FakeSession({ kind: "user", user: bob })
    const cj = await core.connect(id, joiner)
    // Not even the relay's state vector (it would describe the unsaved change) goes out yet.
    const joinerBefore = joiner.frames.length
    expect(joinerBefore).toBe(0)
    cj.receive(syncStep1Frame(new Y.Doc()))
    await new Promise((r) => setTimeout(r, 20))
    expect(joiner.frames.length).toBe(joinerBefore)
    expect(a.parley()).toEqual([])
    expect(b.frames.length).toBe(before)
    // The update and the relay's sequencing of it go to storage as one update (one transaction).
    storage.release()
    await until(() => a.parley().length === 1)
    expect(storage.waiting).toBe(0)
    expect(a.parley()[0]!.type).toBe("saved")
    for (const session of [b, joiner]) {
      const replica = new Y.Doc()
      session.replay(replica)
      expect(listMessages(replica, { last: 5 }).map((m) => [m.body, m.seq])).toEqual([["hello", 1]])
    }
    expect((await storage.load(id)).updates).toHaveLength(1)
  })

  it("tells a stranger waiting on a change nothing of the document's client ids by its refusals", async () => {
    const mallory = "mallory" as UserId
    /** The refusals a stranger gets for 16 sync requests declaring 4,096 + k clients, while a change waits. */
    const probe = async (sessions: number) => {
      const storage = new GatedStorage()
      const core = makeCore(storage)
      const id = newConversationId()
      const { doc } = conversationUpdate(id, ["hello"])
      // The group's history: `sessions` of alice's devices wrote to it, stored.
      for (let i = 0; i < sessions; i++) {
        const device = new Y.Doc()
        Y.applyUpdate(device, Y.encodeStateAsUpdate(doc))
        sendMessage(device, alice, { body: `from device ${i}` })
        Y.applyUpdate(doc, Y.encodeStateAsUpdate(device))
      }
      const writer = await core.connect(id, new FakeSession({ kind: "user", user: alice }))
      writer.receive(updateFrame(Y.encodeStateAsUpdate(doc)))
      await until(() => storage.waiting === 1)
      storage.release()
      await until(() => storage.waiting === 0)
      // Then one more message, waiting for the disk while the stranger connects.
      const before = Y.encodeStateVector(doc)
      sendMessage(doc, alice, { body: "one more" })
      writer.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
      await until(() => storage.waiting === 1)
      const stranger = new FakeSession({ kind: "user", user: mallory })
      const connection = await core.connect(id, stranger)
      for (let k = 0; k < 16; k++) connection.receive(encodeSyncStep1(stateVectorOf(MAX_UNKNOWN_CLIENTS + k)))
      const refused = stranger.parley().filter((f) => f.type === "error").length
      storage.release()
      await core.close()
      return refused
    }
    const [few, many] = [await probe(1), await probe(8)]
    expect(many).toBe(few)
  })

  it("sends each connection a stored message's frames while its writes are held, in one write", async () => {
    const core = makeCore()
    const id = newConversationId()
    const a = new HoldingSession({ kind: "user", user: alice })
    const b = new HoldingSession({ kind: "user", user: bob })
    const ca = await core.connect(id, a)
    await core.connect(id, b)
    const { doc, update } = conversationUpdate(id)
    ca.receive(updateFrame(update))
    await until(() => a.parley().length === 1)
    const before = Y.encodeStateVector(doc)
    sendMessage(doc, alice, { body: "hello" })
    ca.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
    await until(() => a.parley().length === 2)
    const kinds = (frames: Uint8Array[]) => frames.map((f) => decoding.readVarUint(decoding.createDecoder(f)))
    // The sender: its message back with its sequence number (one update, applied and numbered in one
    // transaction), then "saved"; the other: the same frame (never shown unnumbered).
    expect(kinds(a.held.at(-1)!)).toEqual([MessageType.sync, MessageType.parley])
    expect(kinds(b.held.at(-1)!)).toEqual([MessageType.sync])
    expect(a.held.at(-1)![0]).toEqual(b.held.at(-1)![0])
    const replica = new Y.Doc()
    b.replay(replica)
    expect(listMessages(replica, { last: 5 }).map((m) => [m.body, m.seq])).toEqual([["hello", 1]])
    const numbered = (frame: Uint8Array) => {
      const d = decoding.createDecoder(frame)
      decoding.readVarUint(d)
      syncProtocol.readSyncMessage(d, encoding.createEncoder(), doc, "relay")
    }
    numbered(a.held.at(-1)![0]!)
    expect(listMessages(doc, { last: 5 }).map((m) => [m.body, m.seq])).toEqual([["hello", 1]])
    // Yjs takes a remote transaction writing under the document's own client id for another client
    // using it, and moves the document to a new id: the relay's stays one of its two sequence writers'.
    const relayIds = () => core.read(id, (d) => ({ own: d.clientID, writers: sequenceWriterIds(d) }))
    const first = await relayIds()
    for (const body of ["two", "three"]) {
      const before = Y.encodeStateVector(doc)
      sendMessage(doc, alice, { body })
      const acks = a.parley().length
      ca.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
      await until(() => a.parley().length === acks + 1)
    }
    const last = await relayIds()
    expect(last).toEqual(first)
    expect(first.writers).toContain(first.own)
  })

  it("numbers an offline burst holding a deletion in the order it was written, the deleted message first", async () => {
    const storage = new MemoryStorage()
    const core = makeCore(storage)
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    const { doc, update } = conversationUpdate(id)
    ca.receive(updateFrame(update))
    await until(() => a.parley().length === 1)
    const before = Y.encodeStateVector(doc)
    const gone = sendMessage(doc, alice, { body: "gone" }).id
    const kept = sendMessage(doc, alice, { body: "kept" }).id
    deleteMessage(doc, alice, gone)
    ca.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
    await until(() => a.parley().length === 2)
    const numbers = await core.read(id, (d) => [gone, kept].map((m) => messageIndex(d).seqOf.get(m)))
    expect(numbers).toEqual([1, 2])
    // A message alone: numbered in the same stored update (the burst's placeholder took two).
    const next = Y.encodeStateVector(doc)
    const third = sendMessage(doc, alice, { body: "third" }).id
    const stored = (await storage.load(id)).updates.length
    ca.receive(updateFrame(Y.encodeStateAsUpdate(doc, next)))
    await until(() => a.parley().length === 3)
    expect(await core.read(id, (d) => messageIndex(d).seqOf.get(third))).toBe(3)
    expect((await storage.load(id)).updates.length).toBe(stored + 1)
  })

  it("closes a connection with 4429 when its updates waiting for storage pass the byte limit", async () => {
    const storage = new GatedStorage()
    const core = makeCore(storage, { limits: { maxPendingBytes: 2_000 } })
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    const { doc, update } = conversationUpdate(id)
    ca.receive(updateFrame(update))
    await until(() => storage.waiting === 1)
    for (let i = 0; i < 5; i++) {
      const before = Y.encodeStateVector(doc)
      sendMessage(doc, alice, { body: "x".repeat(500) })
      ca.receive(updateFrame(Y.encodeStateAsUpdate(doc, before)))
    }
    expect(a.closed?.code).toBe(4429)
    storage.release()
  })

  it("refuses an update its policy denies, with a typed error, storing and broadcasting nothing", async () => {
    const storage = new MemoryStorage()
    const core = makeCore(storage, {
      extensions: [{ checkUpdate: () => ({ allowed: false, rule: Rule.schema, reason: "no thanks" }) }],
    })
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const b = new FakeSession({ kind: "user", user: bob })
    const ca = await core.connect(id, a)
    await core.connect(id, b)
    const before = b.frames.length
    ca.receive(updateFrame(conversationUpdate(id).update))
    await until(() => a.parley().length === 1)
    expect(a.parley()[0]).toMatchObject({
      type: "error",
      error: { code: ErrorCode.FORBIDDEN, rule: Rule.schema },
    })
    expect(b.frames.length).toBe(before)
    expect((await storage.load(id)).updates).toEqual([])
    expect(a.closed).toBeUndefined()
  })

  it("reports a storage failure as INTERNAL and applies nothing", async () => {
    const storage = new MemoryStorage()
    storage.append = async () => {
      throw new Error("disk full")
    }
    const core = makeCore(storage)
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    ca.receive(updateFrame(conversationUpdate(id, ["lost?"]).update))
    await until(() => a.parley().length === 1)
    expect(a.parley()[0]).toMatchObject({ type: "error", error: { code: ErrorCode.INTERNAL } })
    expect(await core.read(id, (doc) => listMessages(doc, { last: 5 }).length)).toBe(0)
  })

  it("acknowledges an update with the clocks of the clients it wrote for, not the whole state vector", async () => {
    const core = makeCore()
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    const { doc, update } = conversationUpdate(id)
    ca.receive(updateFrame(update))
    // Twenty more device sessions write into the conversation.
    const devices: number[] = []
    for (let i = 0; i < 20; i++) {
      const device = new Y.Doc()
      Y.applyUpdate(device, Y.encodeStateAsUpdate(doc))
      const before = Y.encodeStateVector(device)
      sendMessage(device, alice, { body: `from device ${i}` })
      devices.push(device.clientID)
      ca.receive(updateFrame(Y.encodeStateAsUpdate(device, before)))
    }
    // Updates queued together are acknowledged together: one "saved" may name several of them.
    const acknowledged = () =>
      new Set(
        a
          .parley()
          .flatMap((f) =>
            f.type === "saved"
              ? [...Y.decodeStateVector((f as { stateVector: Uint8Array }).stateVector).keys()]
              : [],
          ),
      )
    await until(() => devices.every((d) => acknowledged().has(d)))
    const frames = a.parley().length
    const device = new Y.Doc()
    Y.applyUpdate(device, await core.read(id, (d) => Y.encodeStateAsUpdate(d)))
    const before = Y.encodeStateVector(device)
    sendMessage(device, alice, { body: "one more" })
    ca.receive(updateFrame(Y.encodeStateAsUpdate(device, before)))
    await until(() => a.parley().length === frames + 1)
    const last = a.parley().at(-1)!
    expect(last.type).toBe("saved")
    const vector = Y.decodeStateVector((last as { stateVector: Uint8Array }).stateVector)
    expect([...vector]).toEqual([[device.clientID, Y.getState(device.store, device.clientID)]])
    // A reconnecting client whose sync step 2 holds nothing new learns the whole durable state vector.
    const b = new FakeSession({ kind: "user", user: alice })
    const cb = await core.connect(id, b)
    cb.receive(updateFrame(Y.encodeStateAsUpdate(device)))
    await until(() => b.parley().length === 1)
    const whole = b.parley()[0] as { stateVector: Uint8Array }
    expect(Y.decodeStateVector(whole.stateVector).size).toBeGreaterThan(20)
  })

  it("never lets a read see a change whose storage failed, even one queued behind it", async () => {
    const storage = new GatedStorage()
    const core = makeCore(storage)
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    ca.receive(updateFrame(conversationUpdate(id).update))
    await until(() => storage.waiting === 1)
    storage.release()
    await until(() => a.parley().length === 1)
    // The next append fails: the message is applied in memory, then storing it fails.
    const { doc } = conversationUpdate(id)
    sendMessage(doc, alice, { body: "never stored" })
    ca.receive(updateFrame(Y.encodeStateAsUpdate(doc)))
    await until(() => storage.waiting === 1)
    const read = core.read(id, (d) => listMessages(d, { last: 5 }).map((m) => m.body))
    // A server-side write queued behind it too: it is not lost with the evicted memory.
    const write = core.write(id, { kind: "user", user: alice }, (d) => {
      sendMessage(d, alice, { body: "from a hook" })
    })
    storage.fail(new Error("disk full"))
    expect(await read).toEqual([])
    await until(() => storage.waiting === 1)
    storage.release()
    await write
    expect(await core.read(id, (d) => listMessages(d, { last: 5 }).map((m) => m.body))).toEqual([
      "from a hook",
    ])
    expect(a.parley().at(-1)).toMatchObject({ type: "error", error: { code: ErrorCode.INTERNAL } })
    expect(a.closed?.code).toBe(4500)
  })

  it("gives listeners every saved change in order, with the relay's sequencing, and survives a throwing listener", async () => {
    const seen: AfterSaved[] = []
    const core = makeCore(new MemoryStorage(), {
      extensions: [
        {
          afterSaved() {
            throw new Error("listener bug")
          },
        },
        { afterSaved: (change: AfterSaved) => seen.push(change) },
      ],
    })
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    ca.receive(updateFrame(conversationUpdate(id, ["one"]).update))
    await until(() => seen.length === 1)
    const types = seen[0]!.events.map((e: ChangeEvent) => e.type)
    expect(types).toEqual([
      "conversation.created",
      "participants.added",
      "message.sent",
      "messages.sequenced",
    ])
    expect(seen[0]!.actor).toEqual({ kind: "user", user: alice })
    // The message and its number: one stored update.
    expect(seen[0]!.positions).toHaveLength(1)
  })

  it("sequences messages left unsequenced by a crash when the document loads", async () => {
    const storage = new MemoryStorage()
    const id = newConversationId()
    const { doc, update } = conversationUpdate(id, ["before the crash", "also"])
    await storage.append(id, [update])
    const core = makeCore(storage)
    const ids = listMessages(doc, { last: 5 }).map((m) => m.id)
    expect(await core.read(id, (d) => ids.map((m) => getMessage(d, m)?.seq))).toEqual([1, 2])
    expect((await storage.load(id)).updates).toHaveLength(2)
  })

  it("writes server-side changes (a bot) through the same path: stored, sequenced, broadcast", async () => {
    const storage = new MemoryStorage()
    const core = makeCore(storage)
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    const { update } = conversationUpdate(id)
    ca.receive(updateFrame(update))
    await until(() => a.parley().length === 1)
    await core.write(id, { kind: "user", user: alice }, (doc) =>
      sendMessage(doc, alice, { body: "from a hook" }),
    )
    const replica = new Y.Doc()
    a.replay(replica)
    Y.applyUpdate(replica, update)
    expect(listMessages(replica, { last: 5 }).map((m) => [m.body, m.seq])).toEqual([["from a hook", 1]])
    const reloaded = makeCore(storage)
    expect(await reloaded.read(id, (d) => listMessages(d, { last: 5 }).map((m) => m.body))).toEqual([
      "from a hook",
    ])
  })

  it("closes every connection with 1001 and flushes storage on close", async () => {
    const core = makeCore()
    const a = new FakeSession({ kind: "user", user: alice })
    await core.connect(newConversationId(), a)
    await core.close()
    expect(a.closed?.code).toBe(1001)
    await expect(core.connect(newConversationId(), a)).rejects.toMatchObject({ code: ErrorCode.UNAVAILABLE })
  })
})

describe("the core's extensions", () => {
  it("asks the policies in list order and stops at the first refusal", async () => {
    const asked: string[] = []
    const policy = (name: string, decision: Decision) => ({
      checkUpdate: () => {
        asked.push(name)
        return decision
      },
    })
    const storage = new MemoryStorage()
    const core = makeCore(storage, {
      extensions: [
        policy("first", { allowed: true }),
        policy("second", { allowed: false, rule: Rule.schema, reason: "no" }),
        policy("third", { allowed: true }),
      ],
    })
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const ca = await core.connect(id, a)
    ca.receive(updateFrame(conversationUpdate(id).update))
    await until(() => a.parley().length === 1)
    expect(asked).toEqual(["first", "second"])
    expect(a.parley()[0]).toMatchObject({
      type: "error",
      error: { code: ErrorCode.FORBIDDEN, rule: Rule.schema },
    })
    expect((await storage.load(id)).updates).toEqual([])
  })

  it("refuses an update whose policy throws, storing and broadcasting nothing", async () => {
    const storage = new MemoryStorage()
    const core = makeCore(storage, {
      extensions: [
        {
          checkUpdate: () => {
            throw new Error("policy bug")
          },
        },
      ],
    })
    const id = newConversationId()
    const a = new FakeSession({ kind: "user", user: alice })
    const b = new FakeSession({ kind: "user", user: bob })
    const ca = await core.connect(id, a)
    await core.connect(id, b)
    const before = b.frames.length
    ca.receive(updateFrame(conversationUpdate(id).update))
    await until(() => a.parley().length === 1)
    expect(a.parley()[0]!.type).toBe("error")
    expect(b.frames.length).toBe(before)
    expect((await storage.load(id)).updates).toEqual([])
  })

  it("acknowledges the sender before any observer of saved changes runs", async () => {
    const savedFirst: boolean[] = []
    const a = new FakeSession({ kind: "user", user: alice })
    const core = makeCore(new MemoryStorage(), {
      extensions: [{ afterSaved: () => void savedFirst.push(a.parley().some((f) => f.type === "saved")) }],
    })
    const id = newConversationId()
    const ca = await core.connect(id, a)
    ca.receive(updateFrame(conversationUpdate(id, ["hi"]).update))
    await until(() => savedFirst.length === 1)
    expect(savedFirst).toEqual([true])
  })

  it("starts every extension with the running core, in order, and stops them in reverse when it closes", async () => {
    const calls: string[] = []
    const id = newConversationId()
    const storage = new MemoryStorage()
    await storage.append(id, [conversationUpdate(id, ["stored"]).update])
    const core = makeCore(storage, {
      extensions: ["a", "b"].map((name) => ({
        name,
        async start(running: RunningCore) {
          // The core is whole when an extension starts: it can already read (and write) documents.
          const bodies = await running.read(id, (doc) => listMessages(doc, { last: 1 }).map((m) => m.body))
          calls.push(`start ${name} ${bodies.join()}`)
        },
        stop: () => void calls.push(`stop ${name}`),
      })),
    })
    await core.start()
    expect(calls).toEqual(["start a stored", "start b stored"])
    await core.close()
    expect(calls.slice(2)).toEqual(["stop b", "stop a"])
  })

  it("refuses two extensions that would both apply stored logs", () => {
    const loader = { loadStoredLog: async () => {} }
    expect(() => makeCore(new MemoryStorage(), { extensions: [loader, loader] })).toThrow(
      /only one extension/,
    )
  })
})

describe("stored inboxes showing a message", () => {
  it("finds the documents whose stored form shows one of a few ids or of a batch, also over a storage that cannot search itself", async () => {
    const memory = new MemoryStorage()
    // A storage of one's own without `holding`: the core loads each document and searches it.
    const plain: RelayStorage = Object.assign(Object.create(memory) as RelayStorage, { holding: undefined })
    const conversation = newConversationId()
    const preview = (id: string) => ({ id, author: alice, text: "a preview", deleted: false, at: 1 })
    const inboxShowing = (id: string | undefined) => {
      const inbox = new Y.Doc()
      const entry = {
        conversationId: conversation,
        kind: "group" as const,
        title: "",
        participants: { count: 2, first: [alice, bob] },
        unread: 1,
        readUpTo: 0,
        lastActivityAt: 1,
        ...(id === undefined ? {} : { lastMessage: preview(id) }),
      }
      writeInboxEntry(inbox, conversation, entry)
      return Y.encodeStateAsUpdate(inbox)
    }
    const shown = newMessageId()
    await memory.append("inbox~one", [inboxShowing(shown)])
    await memory.append("inbox~two", [inboxShowing(newMessageId())])
    await memory.compact("inbox~three", inboxShowing(shown), 0)
    await memory.append("inbox~four", [inboxShowing(undefined)])
    const names = ["inbox~one", "inbox~two", "inbox~three", "inbox~four", "inbox~five"]
    // A batch of 200 deletions takes the other way (one pass per document, not per id): the same answer.
    const batch = new Set([...Array.from({ length: 199 }, () => newMessageId()), shown])
    for (const storage of [memory, plain]) {
      const c = makeCore(storage)
      for (const ids of [new Set([shown]), batch])
        expect([...(await c.storedShowing(names, ids))].sort()).toEqual(["inbox~one", "inbox~three"])
      expect(await c.storedShowing(names, new Set(Array.from({ length: 40 }, () => newMessageId())))).toEqual(
        new Set(),
      )
      expect(await c.storedShowing(["inbox~one"], new Set())).toEqual(new Set())
    }
  })
})
