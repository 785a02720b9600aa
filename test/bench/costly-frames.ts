/**
 * Can one user's costliest accepted frames hold everyone else up? An honest
 * pair (carol and dave, stock y-websocket providers, a message every 50 ms in
 * turn, each timed from send to the other replica having it) chats on a
 * quiet relay, then while alice, one user with one socket per conversation,
 * sends the costliest frame the relay accepts (an offline period's mixed work
 * at the per-update caps: ~170 ms of relay CPU each) on every socket at once,
 * several rounds. Prints the pair's latency quiet and under each round, and
 * how long the relay took to save all of alice's frames. Asserts nothing.
 *
 *   npm run bench:costly-frames [-- --sockets 16 --rounds 3 --shape mixed|value-cap] [--one-conversation]
 *
 * `--one-conversation`: each round's frames all go to one conversation (1,000
 * short messages each, each socket writing under a client id of its own), so
 * that they queue in that document's batches rather than spread over many.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import * as Y from "yjs"
import { SqliteBackend } from "../../relay/src/backend/sqlite.js"
import { docUntil, stockProvider, synced, TestClient } from "../../relay/test/helpers/clients.js"
import { updateFrame } from "../../relay/test/helpers/frame-probe.js"
import {
  atCapShapes,
  DEFAULT_CAPS,
  type Seed,
  seedConversation,
} from "../../relay/test/helpers/frame-shapes.js"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"
import {
  type ConversationId,
  createConversation,
  listMessages,
  newConversationId,
  sendMessage,
  type UserId,
} from "../../shared/src/index.js"
import { distribution, sleep } from "./stats.js"

const { values: flags } = parseArgs({
  options: {
    sockets: { type: "string", default: "16" },
    rounds: { type: "string", default: "3" },
    // value-cap: the value-cap frame (1,000 short messages) instead: no deletions, so no purges after it.
    shape: { type: "string", default: "mixed" },
    "one-conversation": { type: "boolean", default: false },
  },
})
const sockets = Number(flags.sockets)
const rounds = Number(flags.rounds)
const shape = atCapShapes(DEFAULT_CAPS).find((s) =>
  flags.shape === "value-cap" ? s.name.includes("the value cap") : s.name.startsWith("an offline period"),
)!
const carol = "carol" as UserId
const dave = "dave" as UserId

const oneConversation = flags["one-conversation"]
// Each round's frames go to conversations of their own (a frame is built against what the relay
// holds), or all to one.
const ids: ConversationId[][] = Array.from({ length: rounds }, () => {
  const one = newConversationId()
  return Array.from({ length: sockets }, () => (oneConversation ? one : newConversationId()))
})
const seeds = new Map<ConversationId, Seed>()
for (const id of ids.flat()) seeds.set(id, seedConversation(id, 1_000))
const dataDir = mkdtempSync(join(tmpdir(), "parley-costly-frames-"))
const backend = new SqliteBackend(dataDir)
for (const [id, seed] of seeds) await backend.documents.append(id, [seed.stored])
await backend.close()
const relay = await startRelayProcess({ dataDir })

const id = newConversationId()
const c = stockProvider(relay.url, id, await relay.token(carol))
const d = stockProvider(relay.url, id, await relay.token(dave))
await Promise.all([synced(c), synced(d)])
createConversation(c.doc, carol, { kind: "group", id, participants: [dave] })
await docUntil(d.doc, () => d.doc.getMap("meta").has("createdAt"))

// Everything the bench process itself spends CPU on (connecting, syncing, building the frames) is done
// before the pair starts: the pair's clients share its event loop.
const flooders: TestClient[][] = []
const frames: Uint8Array[][] = []
for (let r = 0; r < rounds; r++) {
  const round: TestClient[] = []
  for (const conversation of ids[r]!) {
    const f = new TestClient(relay.url, conversation, await relay.token(shape.user))
    await f.opened
    await f.synced()
    round.push(f)
  }
  flooders.push(round)
  frames.push(
    round.map((f, i) =>
      updateFrame(oneConversation ? ownMessages(f.doc, i) : shape.build(f.doc, seeds.get(ids[r]![i]!)!)),
    ),
  )
}

/** 1,000 of alice's short messages on `relay`'s state, under a client id of socket `i`'s own. */
function ownMessages(relay: Y.Doc, i: number): Uint8Array {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, Y.encodeStateAsUpdate(relay))
  doc.clientID = 0x30000100 + i
  const before = Y.encodeStateVector(doc)
  for (let m = 0; m < DEFAULT_CAPS.values; m++)
    sendMessage(doc, shape.user, { body: `quick ${i}/${m}: a typical short chat line` })
  return Y.encodeStateAsUpdate(doc, before)
}

const latencies: number[] = []
let running = true
const pair = (async () => {
  for (let i = 0; running; i++) {
    const [from, to, user] = i % 2 === 0 ? [c, d, carol] : [d, c, dave]
    const body = `honest ${i}`
    const sent = performance.now()
    sendMessage(from.doc, user, { body })
    await docUntil(to.doc, () => listMessages(to.doc, { last: 3 }).some((m) => m.body === body))
    latencies.push(performance.now() - sent)
    await sleep(50)
  }
})()
const fmt = (ms: number) => ms.toFixed(1).padStart(7)
const row = (label: string, samples: number[], extra = "") => {
  const s = distribution(samples)
  console.log(
    `${label.padEnd(26)} ${String(s.count).padStart(5)} ${fmt(s.p50)} ${fmt(s.p99)} ${fmt(s.max)}  ${extra}`,
  )
}
console.log(
  oneConversation
    ? `${sockets} sockets of one user to one conversation, ${DEFAULT_CAPS.values} short messages each; ${rounds} rounds`
    : `${sockets} sockets of one user, ${shape.name}; ${rounds} rounds`,
)
console.log(
  `${"honest pair".padEnd(26)} ${"n".padStart(5)} ${"p50".padStart(7)} ${"p99".padStart(7)} ${"max".padStart(7)}  (ms)`,
)
await sleep(2_000)
row("quiet", latencies.splice(0))
for (let r = 0; r < rounds; r++) {
  const round = flooders[r]!
  const before = round.map((f) => f.saves.length)
  const started = performance.now()
  latencies.splice(0)
  for (const [i, f] of round.entries()) f.send(frames[r]![i]!)
  await Promise.all(
    round.map((f, i) => f.until(() => f.saves.length > before[i]! || f.errors.length > 0 || !!f.closeEvent)),
  )
  const allSaved = performance.now() - started
  await sleep(1_000)
  const saved = round.filter((f, i) => f.saves.length > before[i]!).length
  row(
    `round ${r + 1}`,
    latencies.splice(0),
    `${saved}/${sockets} frames saved, all within ${allSaved.toFixed(0)} ms`,
  )
  await sleep(1_000)
}
running = false
await Promise.race([pair, sleep(5_000)])
for (const f of flooders.flat()) f.close()
c.destroy()
d.destroy()
await stopRelayProcesses()
rmSync(dataDir, { recursive: true, force: true })
process.exit(0)
