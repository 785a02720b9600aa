/**
 * What one frame can cost the relay: crafted updates at (or near) the frame
 * size limit that buy Yjs superlinear work or a pile of client ids, and honest
 * frames as large as real clients send, each sent to an in-process relay core
 * (full authorization policy, memory storage) holding a 1,200-message
 * conversation. Prints, per frame, its bytes, whether the relay accepted it,
 * and the relay CPU time (process.cpuUsage) from receiving it to having
 * answered and settled it, on all its threads (V8's compiler and GC threads
 * included); then the worst over all frames and over accepted ones; then each
 * accepted shape as the first frame a fresh process handles (JIT cold).
 * Writes bench-results/frame-cost-<time>.json. Asserts nothing.
 *
 *   npm run bench:frames [-- --runs 3 --messages 1000 --no-cold]
 */
import { execFileSync } from "node:child_process"
import { mkdirSync, writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import { type ProbeResult, probe } from "../../relay/test/helpers/frame-probe.js"
import { honestShapes, hostileShapes, seedConversation } from "../../relay/test/helpers/frame-shapes.js"

const { values: flags } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    messages: { type: "string", default: "1000" },
    // Measure frames in fresh processes too (see below); --no-cold skips it.
    cold: { type: "boolean", default: true },
    "no-cold": { type: "boolean", default: false },
    // Internal: the child process of the cold measurement.
    "cold-shape": { type: "string" },
  },
})
const runs = Math.max(1, Number(flags.runs))
const messages = Number(flags.messages)

// The seeded conversation is the same for every frame: build it once per shape from a cache.
const seed = (id: Parameters<typeof seedConversation>[0]) => seedConversation(id, messages)

if (flags["cold-shape"] !== undefined) {
  // Child: the named shape as the first frame of its kind this process handles.
  const shape = [...honestShapes, ...hostileShapes].find((s) => s.name === flags["cold-shape"])!
  const result = await probe(shape, seed, {}, { warm: true })
  process.stdout.write(JSON.stringify({ cpuMs: result.cpuMs, accepted: result.accepted }))
  process.exit(0)
}

interface Row {
  shape: string
  honest: boolean
  bytes: number
  outcome: string
  /** Median over runs. */
  cpuMs: number
  /** Worst over runs. */
  worstCpuMs: number
  /** Every run, in the order measured (the first ones pay for the JIT learning the shape). */
  runsCpuMs: number[]
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
    runsCpuMs: results.map((x) => +x.cpuMs.toFixed(1)),
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

// A relay that has just started runs the update path in V8's interpreter until the JIT has seen
// it: each accepted shape as the first frame of its kind in a fresh process (its relay warm, its
// JIT not). Paid once per code path after a start, not per frame; printed apart from the above.
const cold: { shape: string; cpuMs: number }[] = []
if (flags.cold && !flags["no-cold"]) {
  console.log("\nFirst frame of its kind after the relay process starts (JIT cold), one fresh process each:")
  const self = fileURLToPath(import.meta.url)
  for (const shape of honestShapes) {
    const out = execFileSync(
      process.execPath,
      [...process.execArgv, self, "--messages", String(messages), "--cold-shape", shape.name],
      { encoding: "utf8" },
    )
    const { cpuMs } = JSON.parse(out) as { cpuMs: number }
    cold.push({ shape: shape.name, cpuMs: +cpuMs.toFixed(1) })
    console.log(`  ${shape.name.slice(0, widths[0]).padEnd(widths[0]!)}  ${cpuMs.toFixed(1).padStart(9)} ms`)
  }
}

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
      coldFirstFrames: cold,
    },
    null,
    2,
  ),
)
console.log(`wrote ${file}`)
