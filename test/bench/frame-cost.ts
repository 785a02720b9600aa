/**
 * What one frame can cost the relay: crafted updates at (or near) the frame
 * size limit that buy Yjs superlinear work or a pile of client ids, and honest
 * frames as large as real clients send, each sent to an in-process relay core
 * (full authorization policy, memory storage) holding a 1,200-message
 * conversation. Prints, per frame, its bytes, whether the relay accepted it,
 * and the relay CPU time (process.cpuUsage) from receiving it to having
 * answered and settled it; then the worst over all frames and over accepted
 * ones. Writes bench-results/frame-cost-<time>.json. Asserts nothing.
 *
 *   npm run bench:frames [-- --runs 3 --messages 1000]
 */
import { mkdirSync, writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { parseArgs } from "node:util"
import { type ProbeResult, probe } from "../../relay/test/helpers/frame-probe.js"
import { honestShapes, hostileShapes, seedConversation } from "../../relay/test/helpers/frame-shapes.js"

const { values: flags } = parseArgs({
  options: { runs: { type: "string", default: "3" }, messages: { type: "string", default: "1000" } },
})
const runs = Math.max(1, Number(flags.runs))
const messages = Number(flags.messages)

// The seeded conversation is the same for every frame: build it once per shape from a cache.
const seed = (id: Parameters<typeof seedConversation>[0]) => seedConversation(id, messages)

interface Row {
  shape: string
  honest: boolean
  bytes: number
  outcome: string
  /** Median over runs. */
  cpuMs: number
  /** Worst over runs. */
  worstCpuMs: number
  clientIdsAfter: number
  connectionClosed: boolean
}

const shapes = [...honestShapes, ...hostileShapes]
// A warm relay (the conversation's first change already made) with seeding's garbage collected
// first: what a frame costs a relay serving this conversation, not what setting up the probe left.
const WARM = { warm: true } as const
// Warm the JIT on one honest and one crafted frame, so that the first shape measured is not penalised.
await probe(honestShapes[0]!, seed, {}, WARM)
await probe(hostileShapes[1]!, seed, {}, WARM)

const rows: Row[] = []
for (const shape of shapes) {
  const results: ProbeResult[] = []
  for (let r = 0; r < runs; r++) results.push(await probe(shape, seed, {}, WARM))
  const times = results.map((x) => x.cpuMs).sort((a, b) => a - b)
  const first = results[0]!
  rows.push({
    shape: shape.name,
    honest: shape.honest,
    bytes: first.bytes,
    outcome: first.accepted ? "accepted" : `refused ${first.error?.code} ${first.error?.rule ?? ""}`.trim(),
    cpuMs: +times[Math.floor(times.length / 2)]!.toFixed(1),
    worstCpuMs: +times[times.length - 1]!.toFixed(1),
    clientIdsAfter: first.clientIds,
    connectionClosed: first.closed,
  })
}

const widths = [58, 9, 40, 9, 9, 10]
const line = (cells: string[]) =>
  cells.map((c, i) => (i === 0 || i === 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
console.log(
  `\nFrame cost: relay CPU per frame, median (worst) of ${runs} runs, node ${process.version}, ${cpus().length} cores`,
)
console.log(line(["frame", "bytes", "outcome", "cpu ms", "worst", "client ids"]))
for (const r of rows)
  console.log(
    line([
      `${r.honest ? "honest" : "crafted"}: ${r.shape}`.slice(0, widths[0]),
      String(r.bytes),
      r.outcome,
      r.cpuMs.toFixed(1),
      r.worstCpuMs.toFixed(1),
      String(r.clientIdsAfter),
    ]),
  )
const worst = (list: Row[]) => list.reduce((m, r) => Math.max(m, r.worstCpuMs), 0)
const accepted = rows.filter((r) => r.outcome === "accepted")
const refused = rows.filter((r) => r.outcome !== "accepted")
console.log(`\nworst over all frames: ${worst(rows).toFixed(1)} ms`)
console.log(`worst accepted frame: ${worst(accepted).toFixed(1)} ms (goal ≤ 50 ms)`)
console.log(`worst refused frame:  ${worst(refused).toFixed(1)} ms`)
const surprises = rows.filter((r) => (r.honest ? r.outcome !== "accepted" : r.outcome === "accepted"))
for (const r of surprises)
  console.log(`  UNEXPECTED: ${r.honest ? "honest" : "crafted"} frame "${r.shape}" ${r.outcome}`)
if (rows.some((r) => r.connectionClosed)) console.log("  UNEXPECTED: a refusal closed a parley=1 connection")

mkdirSync("bench-results", { recursive: true })
const file = `bench-results/frame-cost-${Date.now()}.json`
writeFileSync(
  file,
  JSON.stringify(
    {
      node: process.version,
      cores: cpus().length,
      runs,
      messages,
      worstMs: worst(rows),
      worstAcceptedMs: worst(accepted),
      worstRefusedMs: worst(refused),
      rows,
    },
    null,
    2,
  ),
)
console.log(`wrote ${file}`)
