/**
 * Benchmark of the conversation document layout (the current schema): encoded bytes per
 * message, load time and heap for a 100,000-message conversation, and the cost
 * of applying one new message to it. Prints figures; asserts nothing.
 *
 *   npm run bench:model [-- --messages 100000]
 */
import { mkdirSync, writeFileSync } from "node:fs"
import * as Y from "yjs"
import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  listMessages,
  type MessageId,
  messageIndex,
  newMessageId,
  nextFromDocument,
  SCHEMA_VERSION,
  sendMessage,
  type UserId,
  unreadCount,
} from "../../shared/src/index.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const N = arg("messages", 100_000)
const PER_SESSION = 500
const users = Array.from({ length: 20 }, (_, i) => `user${i}` as UserId)
const gc = (globalThis as { gc?: () => void }).gc
const heap = () => {
  gc?.()
  return process.memoryUsage().heapUsed
}

/** A document layout under test: how a session writes messages, how the relay finishes a batch. */
interface Layout {
  /** The empty conversation every device starts from. */
  readonly base: () => Y.Doc
  /** Writes message `n`; returns its id. */
  readonly write: (device: Y.Doc, n: number, body: string) => MessageId
  /** What the relay does once a batch of messages arrives (Parley: sequence each one). */
  readonly settle?: (relay: Y.Doc, ids: readonly MessageId[]) => void
}

const parley: Layout = {
  base: () => {
    const doc = new Y.Doc()
    createConversation(doc, users[0]!, {
      kind: "group",
      id: "g~bench" as ConversationId,
      participants: users,
    })
    return doc
  },
  write: (device, n, body) => sendMessage(device, users[n % users.length]!, { body }).id,
  // The relay sequences each message as its update arrives: one order entry each.
  settle: (relay, ids) => {
    for (const id of ids) assignSequenceNumbers(relay, nextFromDocument(relay), [id])
  },
}

// The brief's reference layout on the same messages: plain JSON records in one Y.Array,
// no sequence numbers, no side maps — the floor Parley's layout is compared against.
const plain: Layout = {
  base: () => new Y.Doc(),
  write: (device, n, body) => {
    const id = newMessageId()
    device
      .getArray("messages")
      .push([{ id, author: users[n % users.length]!, body, createdAt: Date.now(), type: "text" }])
    return id
  },
}

/**
 * The relay's replica of an N-message conversation, encoded: every session (a
 * device that was online for a while) writes a run of messages under its own
 * client id, and the relay applies each batch as it arrives.
 */
function buildSnapshot(layout: Layout): Uint8Array {
  const relay = layout.base()
  const base = Y.encodeStateAsUpdate(relay)
  for (let s = 0; s * PER_SESSION < N; s++) {
    const device = new Y.Doc()
    Y.applyUpdate(device, base)
    const before = Y.encodeStateVector(device)
    const count = Math.min(PER_SESSION, N - s * PER_SESSION)
    const sent: MessageId[] = []
    for (let i = 0; i < count; i++) {
      const n = s * PER_SESSION + i
      sent.push(layout.write(device, n, `Message ${n}: a typical short chat line of text.`))
    }
    Y.applyUpdate(relay, Y.encodeStateAsUpdate(device, before))
    layout.settle?.(relay, sent)
  }
  return Y.encodeStateAsUpdate(relay)
}

/**
 * 1,000 single-message updates written by four devices in turn (as a
 * conversation's participants would), each to be applied on its own to a
 * loaded replica.
 */
function singleMessageUpdates(layout: Layout, snapshot: Uint8Array): Uint8Array[] {
  const devices = Array.from({ length: 4 }, () => {
    const d = new Y.Doc()
    Y.applyUpdate(d, snapshot)
    return d
  })
  const updates: Uint8Array[] = []
  for (let i = 0; i < 1000; i++) {
    const device = devices[i % devices.length]!
    const before = Y.encodeStateVector(device)
    layout.write(device, i, `New message ${i}`)
    const update = Y.encodeStateAsUpdate(device, before)
    updates.push(update)
    for (const other of devices) if (other !== device) Y.applyUpdate(other, update)
  }
  return updates
}

/** Decode time and heap growth of loading `snapshot` into a fresh document (which is returned). */
function load(snapshot: Uint8Array): { doc: Y.Doc; ms: number; heapMB: number } {
  const before = heap()
  const started = performance.now()
  const doc = new Y.Doc()
  Y.applyUpdate(doc, snapshot)
  const ms = performance.now() - started
  return { doc, ms, heapMB: (heap() - before) / 1e6 }
}

/** Microseconds per update to apply `updates` one by one to a fresh replica loaded from `snapshot`. */
function applyCost(snapshot: Uint8Array, updates: readonly Uint8Array[], prepare?: (doc: Y.Doc) => void) {
  const target = new Y.Doc()
  Y.applyUpdate(target, snapshot)
  prepare?.(target)
  gc?.()
  const started = performance.now()
  for (const u of updates) Y.applyUpdate(target, u)
  return ((performance.now() - started) * 1000) / updates.length
}
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

let t = performance.now()
const snapshot = buildSnapshot(parley)
const buildMs = performance.now() - t
const plainSnapshot = buildSnapshot(plain)

// Loads alternate between the layouts; each figure is the median of three.
const parleyLoads: number[] = []
const plainLoads: number[] = []
const parleyHeap: number[] = []
const plainHeap: number[] = []
for (let round = 0; round < 3; round++) {
  const p = load(snapshot)
  parleyLoads.push(p.ms)
  parleyHeap.push(p.heapMB)
  p.doc.destroy()
  const q = load(plainSnapshot)
  plainLoads.push(q.ms)
  plainHeap.push(q.heapMB)
  q.doc.destroy()
}

const heapBefore = heap()
const loaded = new Y.Doc()
Y.applyUpdate(loaded, snapshot)
t = performance.now()
messageIndex(loaded)
const indexMs = performance.now() - t
const heapWithIndex = heap() - heapBefore
t = performance.now()
const window = listMessages(loaded, { last: 50 })
const windowMs = performance.now() - t
t = performance.now()
const unread = unreadCount(loaded, users[1]!)
const unreadMs = performance.now() - t
t = performance.now()
const fresh = Y.encodeStateAsUpdate(loaded)
const encodeMs = performance.now() - t
const clientIds = loaded.store.clients.size
loaded.destroy()

// Rounds interleave the layouts so that a busy moment of the machine hits both;
// the median of each is reported. "bare" is Yjs alone; "with index" adds the
// message index a relay or client keeps current on every change.
const parleyUpdates = singleMessageUpdates(parley, snapshot)
const plainUpdates = singleMessageUpdates(plain, plainSnapshot)
const parleyBare: number[] = []
const parleyIndexed: number[] = []
const plainBare: number[] = []
for (let round = 0; round < 9; round++) {
  const measures = [
    () => parleyBare.push(applyCost(snapshot, parleyUpdates)),
    () => plainBare.push(applyCost(plainSnapshot, plainUpdates)),
    () => parleyIndexed.push(applyCost(snapshot, parleyUpdates, (doc) => messageIndex(doc))),
  ]
  // A different one goes first each round: the first after a big allocation runs slower.
  for (let i = 0; i < measures.length; i++) measures[(round + i) % measures.length]!()
}
const plainClientIds = (() => {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, plainSnapshot)
  return doc.store.clients.size
})()

const results = {
  messages: N,
  bytesPerMessage: +(snapshot.length / N).toFixed(1),
  snapshotMB: +(snapshot.length / 1e6).toFixed(2),
  decodeSeconds: +(median(parleyLoads) / 1000).toFixed(3),
  heapAfterDecodeMB: +median(parleyHeap).toFixed(1),
  indexSeconds: +(indexMs / 1000).toFixed(3),
  heapWithIndexMB: +(heapWithIndex / 1e6).toFixed(1),
  applyOneMessageMicroseconds: +median(parleyBare).toFixed(1),
  applyOneMessageWithIndexMicroseconds: +median(parleyIndexed).toFixed(1),
  documentClientIds: clientIds,
  encodeWholeDocumentMs: +encodeMs.toFixed(1),
  encodedMB: +(fresh.length / 1e6).toFixed(2),
  last50WindowMs: +windowMs.toFixed(2),
  unreadCountMs: +unreadMs.toFixed(2),
  buildSeconds: +(buildMs / 1000).toFixed(1),
  heapMeasured: gc !== undefined,
  reference_plainRecords_bytesPerMessage: +(plainSnapshot.length / N).toFixed(1),
  reference_plainRecords_decodeSeconds: +(median(plainLoads) / 1000).toFixed(3),
  reference_plainRecords_heapMB: +median(plainHeap).toFixed(1),
  reference_plainRecords_applyOneMessageMicroseconds: +median(plainBare).toFixed(1),
  reference_plainRecords_documentClientIds: plainClientIds,
}
console.log(`Parley document model, schema v${SCHEMA_VERSION}, ${N} messages (node ${process.version})`)
console.table(results)
if (window.length !== 50 || unread === 0) throw new Error("benchmark document is not what it should be")
mkdirSync("bench-results", { recursive: true })
writeFileSync(`bench-results/model-${Date.now()}.json`, JSON.stringify(results, null, 2))
