/**
 * Long histories (issue #17 items 1–2): the sealed-history layout against the
 * current one (every message in the live document), in the same run. For
 * conversations of 1,000 / 100,000 / 1,000,000 messages written by devices in
 * sessions of 500 (each session a new Yjs client id, as a device that comes
 * and goes), it prints the live document's size and client ids, the cost of
 * applying one new message, and, through a real relay on a memory backend, what
 * a device that never saw the conversation waits and downloads for the latest
 * 50 messages and for scrolling back 1,000. Prints figures; asserts nothing.
 *
 *   npm run bench:history [-- --sizes 1000,100000,1000000 --current-max 100000 --reactions 0.3 --edits 0.03]
 */
import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  decodeSegment,
  EMPTY_STATE_VECTOR,
  editMessage,
  encodeHistoryRequest,
  encodeSyncStep1,
  endOfEpoch,
  HistoryDefaults,
  listMessages,
  type MessageId,
  messageIndex,
  nextFromDocument,
  PARLEY_PARAM,
  PARLEY_PROTOCOL_VERSION,
  react,
  readFrame,
  sealedSegments,
  sendMessage,
  TOKEN_PARAM,
  type UserId,
} from "@parley/shared"
import { SignJWT } from "jose"
import { WebSocket } from "ws"
import * as Y from "yjs"
import { MemoryBackend } from "../../relay/src/backend/memory.js"
import { epochValueBytes, startEpoch } from "../../relay/src/history/epoch.js"
import { applySeal, planSeal, type SealingOptions } from "../../relay/src/history/sealing.js"
import { startRelay } from "../../relay/src/relay.js"
import { DEFAULT_CORE_LIMITS } from "../../relay/src/relay-core.js"

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}
const SIZES = arg("sizes", "1000,100000,1000000").split(",").map(Number)
const CURRENT_MAX = Number(arg("current-max", "100000"))
const PER_SESSION = 500
// Overlays written while the messages are live: reactions per message (a fraction: 0.3 = three messages
// in ten get one) and the share of messages their author edits. Both stay in the live document once
// their message is sealed, which is what these show.
const REACTIONS = Number(arg("reactions", "0"))
const EDITS = Number(arg("edits", "0"))
const EMOJI = ["👍", "❤️", "😂", "🎉", "👀"]
const SEALING: SealingOptions = { ...HistoryDefaults }
const GARBAGE = DEFAULT_CORE_LIMITS.epochGarbageBytes
const users = Array.from({ length: 20 }, (_, i) => `user${i}` as UserId)
const gc = (globalThis as { gc?: () => void }).gc

interface Built {
  readonly doc: Y.Doc
  readonly segments: { index: number; from: number; to: number; hash: string; bytes: Uint8Array }[]
  readonly buildMs: number
  /** The largest the live document was after any session's seals and epochs (what a joiner could get then). */
  readonly largestLive: number
}

/**
 * The relay's replica of an `n`-message conversation: each session (a device)
 * writes a run of messages under its own client id, the relay applies and
 * sequences each batch as it arrives and, with `seal`, seals what is due
 * exactly as its update path does (planSeal / applySeal).
 */
function build(id: ConversationId, n: number, seal: boolean): Built {
  const started = performance.now()
  let relay = new Y.Doc()
  createConversation(relay, users[0]!, { kind: "group", id, participants: users })
  const segments: Built["segments"] = []
  let largestLive = 0
  let measureMs = 0
  for (let s = 0; s * PER_SESSION < n; s++) {
    const device = new Y.Doc()
    Y.applyUpdate(device, Y.encodeStateAsUpdate(relay))
    const before = Y.encodeStateVector(device)
    const sent: MessageId[] = []
    for (let i = 0; i < Math.min(PER_SESSION, n - s * PER_SESSION); i++) {
      const k = s * PER_SESSION + i
      const author = users[k % users.length]!
      const id = sendMessage(device, author, { body: `Message ${k}: a typical short chat line of text.` }).id
      sent.push(id)
      // Spread evenly by a multiplicative hash of the message's number, the same in every run.
      if (((k * 7919) % 1000) / 1000 < REACTIONS)
        react(device, users[(k + 3) % users.length]!, id, EMOJI[k % 5]!)
      if (((k * 104729) % 1000) / 1000 < EDITS) editMessage(device, author, id, `Message ${k}, edited.`)
    }
    Y.applyUpdate(relay, Y.encodeStateAsUpdate(device, before))
    device.destroy()
    assignSequenceNumbers(relay, nextFromDocument(relay), sent)
    const sealedBefore = segments.length
    for (
      let plan = seal ? planSeal(relay, id, SEALING) : undefined;
      plan;
      plan = planSeal(relay, id, SEALING)
    ) {
      applySeal(relay, plan, null)
      segments.push({ ...plan.segment, hash: plan.summary.hash, bytes: plan.bytes })
    }
    // As the relay does after a seal: too many client ids in a document with sealed history, or more
    // garbage than the budget (the snapshot less its values rewritten), a new epoch.
    const garbage = () => Y.encodeStateAsUpdate(relay).length - epochValueBytes(relay)
    if (
      seal &&
      segments.length > 0 &&
      (relay.store.clients.size > SEALING.epochClientIds ||
        (segments.length > sealedBefore && GARBAGE > 0 && garbage() > GARBAGE))
    ) {
      // With its epoch record, as the relay does: the live document keeps the previous epoch's clients only.
      const fresh = startEpoch(relay, endOfEpoch(relay, id, Y.decodeStateVector(Y.encodeStateVector(relay))))
      relay.destroy()
      relay = fresh
    }
    // Measured apart: not part of building.
    const measuring = performance.now()
    if (seal) largestLive = Math.max(largestLive, Y.encodeStateAsUpdate(relay).length)
    measureMs += performance.now() - measuring
  }
  return { doc: relay, segments, buildMs: performance.now() - started - measureMs, largestLive }
}

/** 1,000 single-message updates written by four devices in turn on top of `snapshot` (each device sees the others'). */
function applyUpdates(snapshot: Uint8Array): Uint8Array[] {
  const devices = Array.from({ length: 4 }, () => {
    const d = new Y.Doc()
    Y.applyUpdate(d, snapshot)
    return d
  })
  const updates: Uint8Array[] = []
  for (let i = 0; i < 1000; i++) {
    const device = devices[i % 4]!
    const before = Y.encodeStateVector(device)
    sendMessage(device, users[i % users.length]!, { body: `New message ${i}` })
    const update = Y.encodeStateAsUpdate(device, before)
    updates.push(update)
    for (const other of devices) if (other !== device) Y.applyUpdate(other, update)
  }
  for (const d of devices) d.destroy()
  return updates
}

/** µs per update to apply `updates` to a replica loaded from `snapshot`, with its message index. */
function applyRound(snapshot: Uint8Array, updates: readonly Uint8Array[]): number {
  const target = new Y.Doc()
  Y.applyUpdate(target, snapshot)
  messageIndex(target)
  gc?.()
  const t = performance.now()
  for (const u of updates) Y.applyUpdate(target, u)
  const us = ((performance.now() - t) * 1000) / updates.length
  target.destroy()
  return us
}

/**
 * Median µs per applied message for every snapshot, rounds interleaved
 * (size A, B, C, A, B, C, …) so that load on a shared machine falls on all
 * sizes alike rather than on whichever was measured during a busy minute.
 */
function applyCosts(snapshots: readonly Uint8Array[], rounds = 9): number[] {
  const updates = snapshots.map(applyUpdates)
  const samples: number[][] = snapshots.map(() => [])
  for (let round = 0; round < rounds; round++)
    snapshots.forEach((snapshot, i) => {
      samples[i]!.push(applyRound(snapshot, updates[i]!))
    })
  return samples.map((s) => s.sort((a, b) => a - b)[Math.floor(s.length / 2)]!)
}

const SECRET = "bench-history"
const token = (user: string) =>
  new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(user)
    .setIssuedAt()
    .setExpirationTime("1h")
    .sign(new TextEncoder().encode(SECRET))

interface Join {
  /** Socket open → the latest 50 messages readable. */
  readonly latestMs: number
  /** CPU time (user + system) this process spent meanwhile: relay and device alike, insensitive to other load. */
  readonly latestCpuMs: number
  readonly latestBytes: number
  /** Then: 1,000 older messages readable (segments fetched and decoded); undefined when none are sealed. */
  readonly olderMs?: number
  readonly olderBytes?: number
}

/** A device that never saw `id` joins over a real socket; it reads the latest 50, then scrolls back 1,000. */
async function join(url: string, id: string): Promise<Join> {
  const ws = new WebSocket(
    `${url}/${id}?${TOKEN_PARAM}=${await token("user1")}&${PARLEY_PARAM}=${PARLEY_PROTOCOL_VERSION}`,
  )
  ws.binaryType = "nodebuffer"
  const doc = new Y.Doc()
  let bytes = 0
  const pages = new Map<number, (bytes: Uint8Array) => void>()
  let latest: (() => void) | undefined
  ws.on("message", (data: Buffer) => {
    bytes += data.length
    const frame = readFrame(new Uint8Array(data))
    if (frame.type === "sync" && frame.message.type !== "syncStep1") {
      Y.applyUpdate(doc, frame.message.update)
      if (listMessages(doc, { last: 50 }).length >= 50) latest?.()
    } else if (
      frame.type === "parley" &&
      frame.message?.type === "historyPage" &&
      frame.message.error === undefined
    ) {
      pages.get(frame.message.request)?.(frame.message.bytes)
    }
  })
  await new Promise((resolve) => ws.once("open", resolve))
  const opened = performance.now()
  const cpu = process.cpuUsage()
  const readable = new Promise<void>((resolve) => {
    latest = resolve
  })
  ws.send(encodeSyncStep1(EMPTY_STATE_VECTOR))
  await readable
  const latestMs = performance.now() - opened
  const used = process.cpuUsage(cpu)
  const result: Join = { latestMs, latestCpuMs: (used.user + used.system) / 1000, latestBytes: bytes }
  const summaries = [...sealedSegments(doc)].reverse()
  if (summaries.length === 0) {
    ws.close()
    return result
  }
  const before = bytes
  const started = performance.now()
  let older = 0
  for (const summary of summaries) {
    if (older >= 1000) break
    const page = await new Promise<Uint8Array>((resolve) => {
      pages.set(summary.index, resolve)
      ws.send(encodeHistoryRequest(summary.index, summary.index))
    })
    older += decodeSegment(page).entries.length
  }
  ws.close()
  return { ...result, olderMs: performance.now() - started, olderBytes: bytes - before }
}

/**
 * Joins `built` through a relay on a memory backend seeded with it, once the relay is ready: the first join
 * (the relay loads the document) and a warm one.
 */
async function joins(built: Built, id: ConversationId): Promise<{ cold: Join; warm: Join }> {
  const backend = new MemoryBackend()
  await backend.documents.append(id, [Y.encodeStateAsUpdate(built.doc)])
  for (const s of built.segments) await backend.history.put(id, s)
  const relay = await startRelay({
    backend,
    port: 0,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
  })
  try {
    // As a load balancer would: no traffic before /readyz (the update path warms up after a start).
    const ready = `${relay.url.replace(/^ws/, "http")}/readyz`
    const deadline = performance.now() + 30_000
    while (
      !(await fetch(ready).then(
        (r) => r.ok,
        () => false,
      )) &&
      performance.now() < deadline
    )
      await new Promise((resolve) => setTimeout(resolve, 20))
    const cold = await join(relay.url, id)
    const warm = await join(relay.url, id)
    return { cold, warm }
  } finally {
    await relay.close()
  }
}

const kb = (b: number | undefined) => (b === undefined ? "–" : `${(b / 1024).toFixed(1)} KB`)
const ms = (m: number | undefined) => (m === undefined ? "–" : `${m.toFixed(1)} ms`)
const rows: string[][] = []
const row = (...cells: string[]) => rows.push(cells)

console.log(
  `Long histories, ${new Date().toISOString()}, Node ${process.version}; sessions of ${PER_SESSION} messages per client id; segments of ${SEALING.segmentSize}, ${SEALING.keepLive} kept live, a new epoch beyond ${SEALING.epochClientIds} client ids or ${GARBAGE / 1024} KiB of garbage after a seal (a relay waits ${DEFAULT_CORE_LIMITS.epochGarbageIntervalMs / 60_000} min between two, for garbage or client ids, unless past 32 budgets; this build has no clock); ${REACTIONS} reactions per message, ${EDITS * 100} % of messages edited (--reactions, --edits).`,
)
row(
  "messages",
  "design",
  "build s",
  "live doc",
  "largest",
  "client ids",
  "apply µs",
  "latest 50: cold / warm",
  "CPU: cold / warm",
  "bytes",
  "back 1,000",
  "bytes",
)
const measured: { row: string[]; snapshot: Uint8Array }[] = []
for (const n of SIZES) {
  for (const design of ["sealed", "current"] as const) {
    if (design === "current" && n > CURRENT_MAX) {
      row(n.toLocaleString("en"), design, "not built (--current-max)", "", "", "", "", "", "", "", "", "")
      continue
    }
    const id = `g~bench${design}${n}` as ConversationId
    const built = build(id, n, design === "sealed")
    const snapshot = Y.encodeStateAsUpdate(built.doc)
    const clientIds = built.doc.store.clients.size
    built.doc.destroy()
    const rebuilt = { ...built, doc: new Y.Doc() }
    Y.applyUpdate(rebuilt.doc, snapshot)
    const { cold, warm } = await joins(rebuilt, id)
    rebuilt.doc.destroy()
    const cells = [
      n.toLocaleString("en"),
      design,
      (built.buildMs / 1000).toFixed(1),
      kb(snapshot.length),
      design === "sealed" ? kb(built.largestLive) : "–",
      String(clientIds),
      "",
      `${ms(cold.latestMs)} / ${ms(warm.latestMs)}`,
      `${ms(cold.latestCpuMs)} / ${ms(warm.latestCpuMs)}`,
      kb(warm.latestBytes),
      ms(warm.olderMs),
      kb(warm.olderBytes),
    ]
    rows.push(cells)
    measured.push({ row: cells, snapshot })
    gc?.()
  }
}
// Apply cost last, every size in each round.
const costs = applyCosts(measured.map((m) => m.snapshot))
measured.forEach((m, i) => {
  m.row[6] = costs[i]!.toFixed(1)
})
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)))
for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join("  "))
console.log(
  "Goals (100,000 messages, a device that never saw it): latest 50 ≤ 50 ms and ≤ 100 KB; back 1,000 ≤ 200 ms; live doc ≤ 1 MB; client ids bounded; apply the same at every size.",
)
process.exit(0)
