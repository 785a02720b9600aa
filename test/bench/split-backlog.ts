/**
 * CPU of splitting a large offline backlog into the parts the relay takes
 * (shared `splitUpdate`): one replica writes `--messages` messages of
 * `--chars` characters, each in its own transaction as a user offline would
 * (Yjs merges them into one struct), and the update a reconnect sends (the
 * whole state) is split with `DEFAULT_UPDATE_PART_LIMITS`. Prints the median
 * split time, the parts made and the largest part, and, part by part as the
 * SDK sends them (`splitUpdateParts`, one per turn of the event loop), the
 * longest a single step keeps the thread: the first (which decodes the
 * update) and the longest of the others; asserts nothing.
 *
 *   node --conditions=parley-source --import tsx test/bench/split-backlog.ts [--runs 3 --messages 3000 --chars 8000]
 */
import { parseArgs } from "node:util"
import {
  createConversation,
  DEFAULT_UPDATE_PART_LIMITS,
  newConversationId,
  sendMessage,
  splitUpdate,
  splitUpdateParts,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { median } from "./stats.js"

const { values: flags } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    messages: { type: "string", default: "3000" },
    chars: { type: "string", default: "8000" },
  },
})
const alice = "alice" as UserId
const doc = new Y.Doc()
createConversation(doc, alice, { kind: "group", id: newConversationId(), participants: ["bob" as UserId] })
for (let i = 0; i < Number(flags.messages); i++)
  sendMessage(doc, alice, { body: `${i} `.padEnd(Number(flags.chars), "x") })
const update = Y.encodeStateAsUpdate(doc)

const times: number[] = []
let parts: Uint8Array[] = []
for (let run = 0; run < Number(flags.runs); run++) {
  const start = performance.now()
  parts = splitUpdate(update, DEFAULT_UPDATE_PART_LIMITS, doc)
  times.push(performance.now() - start)
}
console.log(
  `split of ${flags.messages} messages × ${flags.chars} chars (${(update.length / 2 ** 20).toFixed(1)} MiB): ` +
    `median ${median(times).toFixed(0)} ms over ${flags.runs} runs (${times.map((t) => t.toFixed(0)).join(", ")}), ` +
    `${parts.length} parts, largest ${(Math.max(...parts.map((p) => p.length)) / 1024).toFixed(0)} KiB`,
)

// Part by part, as the SDK's sync session pumps them.
const firsts: number[] = []
const longest: number[] = []
for (let run = 0; run < Number(flags.runs); run++) {
  const parts = splitUpdateParts(update, DEFAULT_UPDATE_PART_LIMITS, doc)
  let start = performance.now()
  parts.next()
  firsts.push(performance.now() - start)
  let max = 0
  for (;;) {
    start = performance.now()
    if (parts.next().done) break
    max = Math.max(max, performance.now() - start)
  }
  longest.push(max)
}
console.log(
  `part by part: first part ${median(firsts).toFixed(0)} ms (decoding the update), ` +
    `longest of the others ${median(longest).toFixed(1)} ms (medians over ${flags.runs} runs)`,
)
