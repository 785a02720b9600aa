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
import { TestClient } from "../../relay/test/helpers/clients.js"
import { updateFrame } from "../../relay/test/helpers/frame-probe.js"
import {
  atCapShapes,
  DEFAULT_CAPS,
  type Seed,
  seedConversation,
} from "../../relay/test/helpers/frame-shapes.js"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"
import { type ConversationId, newConversationId, sendMessage } from "../../shared/src/index.js"
import { printLatencies, printLatencyHeader, startHonestPair } from "./honest-pair.js"
import { sleep } from "./stats.js"

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

const pair = await startHonestPair(relay)
const row = (label: string, samples: number[], extra = "") => printLatencies(26, label, samples, extra)
console.log(
  oneConversation
    ? `${sockets} sockets of one user to one conversation, ${DEFAULT_CAPS.values} short messages each; ${rounds} rounds`
    : `${sockets} sockets of one user, ${shape.name}; ${rounds} rounds`,
)
printLatencyHeader(26)
pair.take()
await sleep(2_000)
row("quiet", pair.take())
for (let r = 0; r < rounds; r++) {
  const round = flooders[r]!
  const before = round.map((f) => f.saves.length)
  const started = performance.now()
  pair.take()
  for (const [i, f] of round.entries()) f.send(frames[r]![i]!)
  await Promise.all(
    round.map((f, i) => f.until(() => f.saves.length > before[i]! || f.errors.length > 0 || !!f.closeEvent)),
  )
  const allSaved = performance.now() - started
  await sleep(1_000)
  const saved = round.filter((f, i) => f.saves.length > before[i]!).length
  row(`round ${r + 1}`, pair.take(), `${saved}/${sockets} frames saved, all within ${allSaved.toFixed(0)} ms`)
  await sleep(1_000)
}
await pair.stop()
for (const f of flooders.flat()) f.close()
await stopRelayProcesses()
rmSync(dataDir, { recursive: true, force: true })
process.exit(0)
