/**
 * What refusing sealed message ids costs the update path (relay rule
 * `message-id-taken`): for a conversation of `--messages` (100,000) sealed as
 * the relay seals (segments of 500, 250 kept live, summaries folded), the
 * work added per new message — reading the update's record ids, the filters'
 * probes when the relay settles them, and again in the rules — then how often
 * a filter sends the relay to read a segment, what the first new message
 * after a load reads, and the one-time build for history sealed before
 * filters existed. Prints figures; asserts nothing.
 *
 *   npm run bench:sealed-ids [-- --messages 100000]
 */
import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  HistoryDefaults,
  type MessageId,
  newMessageId,
  nextFromDocument,
  sealedSegments,
  sendMessage,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { HistoryKeeper } from "../../relay/src/history/keeper.js"
import { sealedIdFilters, sealedIdStatus } from "../../relay/src/history/sealed-ids.js"
import { applySeal, planSeal } from "../../relay/src/history/sealing.js"
import { MemoryHistoryStore } from "../../relay/src/history/store.js"
import { decodeOnce, recordIdsIn } from "../../relay/src/yjs-updates.js"

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? process.argv[i + 1]! : fallback
}
const MESSAGES = Number(arg("messages", "100000"))
const users = Array.from({ length: 20 }, (_, i) => `user${i}` as UserId)
const id = "g~bench-sealed-ids" as ConversationId
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

// The relay's replica, sealed as the update path seals; its segments (and their filters) stored.
const store = new MemoryHistoryStore()
const sealing = { ...HistoryDefaults }
const keeper = new HistoryKeeper(store, sealing)
const doc = new Y.Doc()
createConversation(doc, users[0]!, { kind: "group", id, participants: users })
const built = performance.now()
for (let s = 0; s * 500 < MESSAGES; s++) {
  const device = new Y.Doc()
  Y.applyUpdate(device, Y.encodeStateAsUpdate(doc))
  const before = Y.encodeStateVector(device)
  const sent: MessageId[] = []
  for (let i = 0; i < Math.min(500, MESSAGES - s * 500); i++)
    sent.push(sendMessage(device, users[i % 20]!, { body: `Message ${s * 500 + i}: a short chat line.` }).id)
  Y.applyUpdate(doc, Y.encodeStateAsUpdate(device, before))
  device.destroy()
  assignSequenceNumbers(doc, nextFromDocument(doc), sent)
  for (let plan = planSeal(doc, id, sealing); plan; plan = planSeal(doc, id, sealing)) {
    await store.put(id, { ...plan.segment, hash: plan.summary.hash, bytes: plan.bytes })
    await keeper.storeIdFilter(id, plan.segment)
    if (plan.fold) await keeper.storePage(id, plan.fold.page, plan.fold.bytes)
    applySeal(doc, plan, null)
  }
}
const segments = (sealedSegments(doc).at(-1)?.index ?? -1) + 1
console.log(
  `${MESSAGES.toLocaleString("en")} messages, ${segments} segments (built in ${((performance.now() - built) / 1000).toFixed(1)} s); Node ${process.version}`,
)

// A relay that just loaded the document: the first new message attaches the filters.
const reads: number[] = []
const { get } = store
store.get = (d, index) => {
  reads.push(index)
  return get.call(store, d, index)
}
const fresh = new Y.Doc()
Y.applyUpdate(fresh, Y.encodeStateAsUpdate(doc))
const loadedHost = { key: id, doc: fresh }
let t = performance.now()
await keeper.settleSealedIds(loadedHost, [newMessageId()])
console.log(
  `first new message after a load: ${(performance.now() - t).toFixed(1)} ms (reads ${segments} filters, ${(
    (await store.idFilters(id, 0)).reduce((n, f) => n + f.bytes.length, 0) / 1024
  ).toFixed(0)} KB; ${reads.length} segments read)`,
)

// Per new message: what the update path adds (record ids read from the update, settle's probes, the rule's).
const device = new Y.Doc()
Y.applyUpdate(device, Y.encodeStateAsUpdate(fresh))
// What a device sends for each message: its transaction's update (no delete set of the whole document).
const updates: Uint8Array[] = []
device.on("update", (update: Uint8Array) => updates.push(update))
for (let i = 0; i < 2000; i++) sendMessage(device, users[i % 20]!, { body: `New message ${i}` })
const rounds: number[] = []
reads.length = 0
for (let round = 0; round < 9; round++) {
  t = performance.now()
  for (const update of updates) {
    const ids = recordIdsIn(update)
    const settling = keeper.settleSealedIds(loadedHost, ids)
    if (settling) await settling
    for (const messageId of ids) sealedIdStatus(fresh, messageId)
  }
  rounds.push(((performance.now() - t) * 1000) / updates.length)
}
{
  const f = sealedIdFilters(fresh)!
  const time = (label: string, fn: (u: Uint8Array) => void) => {
    const xs: number[] = []
    for (let r = 0; r < 5; r++) {
      const t0 = performance.now()
      for (const u of updates) fn(u)
      xs.push(((performance.now() - t0) * 1000) / updates.length)
    }
    console.log(`  ${label}: ${median(xs).toFixed(2)} µs`)
  }
  // The update path decodes each update once (inspectUpdate) before these: not added by the check.
  time("decode (Y.decodeUpdate, uncached)", (u) => Y.decodeUpdate(u))
  for (const u of updates) decodeOnce(u)
  time("recordIdsIn (decode cached)", (u) => recordIdsIn(u))
  const ids = updates.map((u) => recordIdsIn(u)[0]!)
  let k = 0
  time(`candidates (${segments} filters)`, () => f.candidates(ids[k++ % ids.length]!))
  time("sealedIdStatus", () => sealedIdStatus(fresh, ids[k++ % ids.length]!))
  time("settleSealedIds", () => keeper.settleSealedIds(loadedHost, [ids[k++ % ids.length]!]))
}
console.log(
  `added per new message: ${median(rounds).toFixed(1)} µs median of 9 rounds of ${updates.length} (min ${Math.min(...rounds).toFixed(1)}, max ${Math.max(...rounds).toFixed(1)}); segments read: ${reads.length}`,
)

// How often a filter says "maybe": a segment read for an id sealed nowhere.
const probes = 200_000
let maybe = 0
const filters = sealedIdFilters(fresh)!
for (let i = 0; i < probes; i++) if (filters.candidates(newMessageId()).length > 0) maybe++
console.log(
  `new ids that would read a segment: ${maybe} of ${probes.toLocaleString("en")} (${((maybe / probes) * 100).toFixed(3)} %)`,
)

// History sealed before filters existed: the first new message builds them once (and stores them).
const legacy = new MemoryHistoryStore()
for (const stored of await store.all(id)) await legacy.put(id, stored)
const old = new Y.Doc()
Y.applyUpdate(old, Y.encodeStateAsUpdate(doc))
t = performance.now()
await new HistoryKeeper(legacy, sealing).settleSealedIds({ key: id, doc: old }, [newMessageId()])
console.log(
  `first new message in history sealed without filters: ${(performance.now() - t).toFixed(0)} ms (reads every segment once; ${(await legacy.idFilters(id, 0)).length} filters stored)`,
)
