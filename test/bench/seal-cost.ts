/**
 * In-process CPU of the seals one frame of 2,000 short messages makes due on
 * the bench conversation (1,000 + 200 seeded messages, sealed down to the
 * live size first): per seal, `planSeal` (segment built, encoded, hashed)
 * and `applySeal` (the live document's deletions with the message index's
 * observers): one by one (as the relay did before session 10), and planned
 * together and applied in one transaction (`planSeals` / `applySeals`, as it
 * runs them now), alternating. Prints medians; asserts nothing.
 *
 *   node --conditions=parley-source --import tsx test/bench/seal-cost.ts [--runs 9 --messages 2000]
 */
import { parseArgs } from "node:util"
import {
  applySeal,
  applySeals,
  assignSequenceNumbers,
  HistoryDefaults,
  messageIndex,
  newConversationId,
  nextFromDocument,
  planSeal,
  planSeals,
  sendMessage,
} from "@parley/shared"
import * as Y from "yjs"
import { alice, seedConversation } from "../../relay/test/helpers/frame-shapes.js"
import { cpuMs as cpu, median, timed } from "./stats.js"

const { values: flags } = parseArgs({
  options: { runs: { type: "string", default: "9" }, messages: { type: "string", default: "2000" } },
})
const options = { ...HistoryDefaults }
const id = newConversationId()
const seed = seedConversation(id, 1_000)
type Way = "one by one" | "together"
const plans: Record<Way, number[]> = { "one by one": [], together: [] }
const applies: Record<Way, number[]> = { "one by one": [], together: [] }
const counts: number[] = []
for (let run = 0; run < Number(flags.runs); run++) {
  for (const way of (run % 2 === 0 ? ["one by one", "together"] : ["together", "one by one"]) as Way[]) {
    const doc = new Y.Doc()
    Y.applyUpdate(doc, seed.stored)
    messageIndex(doc)
    for (let plan = planSeal(doc, id, options); plan; plan = planSeal(doc, id, options))
      applySeal(doc, plan, null)
    doc.transact(() => {
      for (let i = 0; i < Number(flags.messages); i++)
        sendMessage(doc, alice, { body: `quick ${i}: a typical short chat line` })
    })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    let plan = 0
    let apply = 0
    let n = 0
    if (way === "one by one")
      for (;;) {
        const [sealPlan, planning] = timed(() => planSeal(doc, id, options))
        plan += planning
        if (!sealPlan) break
        apply += cpu(() => applySeal(doc, sealPlan, null))
        n++
      }
    else
      for (;;) {
        // As the relay: at most four segments per turn of the document's queue.
        const [due, planning] = timed(() => planSeals(doc, id, options, 4))
        plan += planning
        if (due.length === 0) break
        apply += cpu(() => applySeals(doc, due, null))
        n += due.length
      }
    plans[way].push(plan)
    applies[way].push(apply)
    counts.push(n)
  }
}
console.log(`${counts[0]} seals per frame, median CPU ms of ${flags.runs} runs each way:`)
for (const way of ["one by one", "together"] as Way[])
  console.log(
    `  ${way}: planSeal ${median(plans[way]).toFixed(1)}, applySeal ${median(applies[way]).toFixed(1)} (runs: ${plans[way].map((p, i) => `${p.toFixed(0)}+${applies[way][i]!.toFixed(0)}`).join(" ")})`,
  )
