/**
 * Benchmark of the conversation document layout (schema v1): encoded bytes per
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

// The relay's replica: every session (a device that was online for a while) writes
// a run of messages under its own client id, and the relay sequences each batch.
const relay = new Y.Doc()
createConversation(relay, users[0]!, { kind: "group", id: "g~bench" as ConversationId, participants: users })
const base = Y.encodeStateAsUpdate(relay)
const started = performance.now()
for (let s = 0; s * PER_SESSION < N; s++) {
  const device = new Y.Doc()
  Y.applyUpdate(device, base)
  const before = Y.encodeStateVector(device)
  const count = Math.min(PER_SESSION, N - s * PER_SESSION)
  const sent: MessageId[] = []
  for (let i = 0; i < count; i++) {
    const n = s * PER_SESSION + i
    sent.push(
      sendMessage(device, users[n % users.length]!, {
        body: `Message ${n}: a typical short chat line of text.`,
      }).id,
    )
  }
  Y.applyUpdate(relay, Y.encodeStateAsUpdate(device, before))
  // The relay sequences each message as its update arrives: one order entry each.
  for (const id of sent) assignSequenceNumbers(relay, nextFromDocument(relay), [id])
}
const buildMs = performance.now() - started
const snapshot = Y.encodeStateAsUpdate(relay)

const heapBefore = heap()
let t = performance.now()
const loaded = new Y.Doc()
Y.applyUpdate(loaded, snapshot)
const decodeMs = performance.now() - t
const heapAfterDecode = heap()
t = performance.now()
messageIndex(loaded)
const indexMs = performance.now() - t
const heapAfter = heap()
t = performance.now()
const window = listMessages(loaded, { last: 50 })
const windowMs = performance.now() - t
t = performance.now()
const unread = unreadCount(loaded, users[1]!)
const unreadMs = performance.now() - t

/**
 * Cost of applying one new message to a loaded replica: 1,000 single-message
 * updates written by four devices in turn (as a conversation's participants
 * would), each update applied on its own.
 */
function applyCost(target: Y.Doc, base: Uint8Array, write: (device: Y.Doc, i: number) => void): number {
  const devices = Array.from({ length: 4 }, () => {
    const d = new Y.Doc()
    Y.applyUpdate(d, base)
    return d
  })
  const updates: Uint8Array[] = []
  for (let i = 0; i < 1000; i++) {
    const device = devices[i % devices.length]!
    const before = Y.encodeStateVector(device)
    write(device, i)
    const update = Y.encodeStateAsUpdate(device, before)
    updates.push(update)
    for (const other of devices) if (other !== device) Y.applyUpdate(other, update)
  }
  gc?.()
  const started = performance.now()
  for (const u of updates) Y.applyUpdate(target, u)
  return ((performance.now() - started) * 1000) / updates.length
}
const applyUs = applyCost(loaded, snapshot, (device, i) =>
  sendMessage(device, users[i % users.length]!, { body: `New message ${i}` }),
)
t = performance.now()
const fresh = Y.encodeStateAsUpdate(loaded)
const encodeMs = performance.now() - t

// The brief's reference layout on the same messages: plain JSON records in one Y.Array,
// no sequence numbers, no side maps — the floor Parley's layout is compared against.
const plain = new Y.Doc()
for (let s = 0; s * PER_SESSION < N; s++) {
  const device = new Y.Doc()
  const before = Y.encodeStateVector(plain)
  Y.applyUpdate(device, Y.encodeStateAsUpdate(plain))
  const count = Math.min(PER_SESSION, N - s * PER_SESSION)
  for (let i = 0; i < count; i++) {
    const n = s * PER_SESSION + i
    device.getArray("messages").push([
      {
        id: newMessageId(),
        author: users[n % users.length]!,
        body: `Message ${n}: a typical short chat line of text.`,
        createdAt: Date.now(),
        type: "text",
      },
    ])
  }
  Y.applyUpdate(plain, Y.encodeStateAsUpdate(device, before))
}
const plainSnapshot = Y.encodeStateAsUpdate(plain)
const plainHeapBefore = heap()
t = performance.now()
const plainLoaded = new Y.Doc()
Y.applyUpdate(plainLoaded, plainSnapshot)
const plainDecodeMs = performance.now() - t
const plainHeap = heap() - plainHeapBefore
const plainApplyUs = applyCost(plainLoaded, plainSnapshot, (device, i) =>
  device.getArray("messages").push([
    {
      id: newMessageId(),
      author: users[i % users.length]!,
      body: `New message ${i}`,
      createdAt: Date.now(),
      type: "text",
    },
  ]),
)

const results = {
  messages: N,
  bytesPerMessage: +(snapshot.length / N).toFixed(1),
  snapshotMB: +(snapshot.length / 1e6).toFixed(2),
  decodeSeconds: +(decodeMs / 1000).toFixed(3),
  indexSeconds: +(indexMs / 1000).toFixed(3),
  heapAfterDecodeMB: +((heapAfterDecode - heapBefore) / 1e6).toFixed(1),
  heapWithIndexMB: +((heapAfter - heapBefore) / 1e6).toFixed(1),
  applyOneMessageMicroseconds: +applyUs.toFixed(1),
  encodeWholeDocumentMs: +encodeMs.toFixed(1),
  encodedMB: +(fresh.length / 1e6).toFixed(2),
  last50WindowMs: +windowMs.toFixed(2),
  unreadCountMs: +unreadMs.toFixed(2),
  buildSeconds: +(buildMs / 1000).toFixed(1),
  heapMeasured: gc !== undefined,
  reference_plainRecords_bytesPerMessage: +(plainSnapshot.length / N).toFixed(1),
  reference_plainRecords_decodeSeconds: +(plainDecodeMs / 1000).toFixed(3),
  reference_plainRecords_heapMB: +(plainHeap / 1e6).toFixed(1),
  reference_plainRecords_applyOneMessageMicroseconds: +plainApplyUs.toFixed(1),
}
console.log(`Parley document model, schema v1, ${N} messages (node ${process.version})`)
console.table(results)
if (window.length !== 50 || unread === 0) throw new Error("benchmark document is not what it should be")
mkdirSync("bench-results", { recursive: true })
writeFileSync(`bench-results/model-${Date.now()}.json`, JSON.stringify(results, null, 2))
