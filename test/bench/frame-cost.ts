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
 * Then every shape sent to a real relay process in its default configuration
 * (SQLite, hooks with the event log and inbox upkeep, sealed history): the
 * process's CPU for the frame end to end, the post-ack work (hook events
 * recorded, commits, sealing) included (see frame-cost-process.ts), printed
 * in one table beside the in-process figures.
 * Writes bench-results/frame-cost-<time>.json. Asserts nothing.
 *
 *   npm run bench:frames [-- --runs 3 --messages 1000 --no-cold --no-process]
 *   npm run bench:frames -- --process-only [--process-shapes large]
 */
import { execFileSync } from "node:child_process"
import { mkdirSync, writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import { warmUpUpdatePath } from "../../relay/src/warm-up.js"
import { type ProbeResult, probe } from "../../relay/test/helpers/frame-probe.js"
import {
  atCapShapes,
  DEFAULT_CAPS,
  honestShapes as defaultHonestShapes,
  hostileShapes as defaultHostileShapes,
  type Shape,
  seedConversation,
} from "../../relay/test/helpers/frame-shapes.js"
import { type ProcessRunSummary, probeProcess } from "./frame-cost-process.js"

const { values: flags } = parseArgs({
  options: {
    runs: { type: "string", default: "3" },
    messages: { type: "string", default: "1000" },
    // Measure frames in fresh processes too (see below); --no-cold skips it.
    cold: { type: "boolean", default: true },
    "no-cold": { type: "boolean", default: false },
    // Only the first frames after a start (skips the steady table).
    "cold-only": { type: "boolean", default: false },
    // The real relay process table (on by default; --no-process skips it, --process-only runs only it).
    "no-process": { type: "boolean", default: false },
    "process-only": { type: "boolean", default: false },
    // Which shapes the process table sends: all (default), only the large accepted ones, or names
    // (parts of names) separated by "|".
    "process-shapes": { type: "string", default: "all" },
    // Internal: the child process of the cold measurement, and whether it warms up as a relay does.
    "cold-shape": { type: "string" },
    "warm-up": { type: "boolean", default: false },
    // The warm-up's size (default: the relay's own defaults).
    "warm-up-rounds": { type: "string" },
    "warm-up-messages": { type: "string" },
    // The relay's per-update caps, "VALUES,STRUCTS" (default: its defaults, 1000,700): the relay runs
    // with them (--max-update-values, --max-update-structs), the at-cap shapes fill them, and the
    // default at-cap shapes are sent too, as frames the lower caps refuse.
    caps: { type: "string" },
  },
})
const runs = Math.max(1, Number(flags.runs))
const [capValues, capStructs] = (flags.caps ?? `${DEFAULT_CAPS.values},${DEFAULT_CAPS.structs}`)
  .split(",")
  .map(Number)
const caps = { values: capValues!, structs: capStructs! }
const lowered = caps.values !== DEFAULT_CAPS.values || caps.structs !== DEFAULT_CAPS.structs
const defaultAtCap = atCapShapes(DEFAULT_CAPS)
const limits = { maxUpdateValues: caps.values, maxUpdateStructs: caps.structs }
const relayArgs = ["--max-update-values", String(caps.values), "--max-update-structs", String(caps.structs)]
// Under other caps: the at-cap shapes fill those, and the default ones are sent as frames they may refuse.
const honestShapes: readonly Shape[] = lowered
  ? [...defaultHonestShapes.filter((s) => !defaultAtCap.some((d) => d.name === s.name)), ...atCapShapes(caps)]
  : defaultHonestShapes
const hostileShapes: readonly Shape[] = lowered
  ? [
      ...defaultHostileShapes,
      ...defaultAtCap.map((s) => ({
        ...s,
        name: `${s.name} [default caps]`,
        honest: false,
        refused: { code: "INVALID_UPDATE" },
      })),
    ]
  : defaultHostileShapes
const messages = Number(flags.messages)

// The seeded conversation is the same for every frame: build it once per shape from a cache.
const seed = (id: Parameters<typeof seedConversation>[0]) => seedConversation(id, messages)

if (flags["cold-shape"] !== undefined) {
  // Child: the named shape as the first frame of its kind this process handles.
  // With --warm-up, as a started relay does (RelayOptions.warmUp, on by default) before the frame.
  const warmUp = flags["warm-up"]
    ? await warmUpUpdatePath({
        ...(flags["warm-up-rounds"] ? { rounds: Number(flags["warm-up-rounds"]) } : {}),
        ...(flags["warm-up-messages"] ? { frameMessages: Number(flags["warm-up-messages"]) } : {}),
      })
    : undefined
  const shape = [...honestShapes, ...hostileShapes].find((s) => s.name === flags["cold-shape"])!
  const result = await probe(shape, seed, limits, { warm: true })
  process.stdout.write(JSON.stringify({ cpuMs: result.cpuMs, accepted: result.accepted, warmUp }))
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

const shapes = flags["cold-only"] || flags["process-only"] ? [] : [...honestShapes, ...hostileShapes]
// A warm relay (the conversation's first change already made) with seeding's garbage collected
// first: what a frame costs a relay serving this conversation, not what setting up the probe left.
const WARM = { warm: true } as const
// Warm the JIT on one honest and one crafted frame, so that the first shape measured is not penalised.
if (shapes.length > 0) {
  await probe(honestShapes[0]!, seed, limits, WARM)
  await probe(hostileShapes[1]!, seed, limits, WARM)
}

const rows: Row[] = []
for (const shape of shapes) {
  const results: ProbeResult[] = []
  for (let r = 0; r < runs; r++) results.push(await probe(shape, seed, limits, WARM))
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
if (rows.length > 0) {
  console.log(
    `\nFrame cost: relay CPU per frame, median (worst) of ${runs} runs, node ${process.version}, ${cpus().length} cores`,
  )
  console.log(line(["frame", "bytes", "outcome", "cpu ms", "worst", "client ids"]))
}
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
if (rows.length > 0) {
  console.log(`\nworst over all frames: ${worst(rows).toFixed(1)} ms`)
  console.log(`worst accepted frame: ${worst(accepted).toFixed(1)} ms (goal ≤ 50 ms)`)
  console.log(`worst refused frame:  ${worst(refused).toFixed(1)} ms`)
}
// A crafted shape without an expected refusal is one every cap bounds: accepted, its cost measured.
const expectRefusal = (name: string) =>
  [...honestShapes, ...hostileShapes].find((s) => s.name === name)?.refused !== undefined
const surprises = rows.filter((r) => (r.outcome === "accepted") === expectRefusal(r.shape))
for (const r of surprises)
  console.log(`  UNEXPECTED: ${r.honest ? "honest" : "crafted"} frame "${r.shape}" ${r.outcome}`)
if (rows.some((r) => r.connectionClosed)) console.log("  UNEXPECTED: a refusal closed a parley=1 connection")

// A relay that has just started runs the update path in V8's interpreter until the JIT has seen
// it: each accepted shape as the first frame of its kind in a fresh process (its relay warm, its
// JIT not), without and after the start-up warm-up a relay runs (RelayOptions.warmUp). Paid once
// per code path after a start, not per frame; printed apart from the above.
const cold: { shape: string; cpuMs: number; afterWarmUpCpuMs: number }[] = []
const warmUps: { wallMs: number; cpuMs: number; frames: number }[] = []
if (flags.cold && !flags["no-cold"] && !flags["process-only"]) {
  console.log(
    "\nFirst frame of its kind after the relay process starts, one fresh process each: JIT cold (no warm-up), and after the start-up warm-up",
  )
  console.log(`  ${"frame".padEnd(widths[0]!)}  ${"cold ms".padStart(9)}  ${"warmed ms".padStart(9)}`)
  const self = fileURLToPath(import.meta.url)
  const child = (shape: string, warmUp: boolean) =>
    JSON.parse(
      execFileSync(
        process.execPath,
        [
          ...process.execArgv,
          self,
          "--messages",
          String(messages),
          "--cold-shape",
          shape,
          ...(flags.caps ? ["--caps", flags.caps] : []),
          ...(warmUp ? ["--warm-up"] : []),
          ...(flags["warm-up-rounds"] ? ["--warm-up-rounds", flags["warm-up-rounds"]] : []),
          ...(flags["warm-up-messages"] ? ["--warm-up-messages", flags["warm-up-messages"]] : []),
        ],
        { encoding: "utf8" },
      ),
    ) as { cpuMs: number; warmUp?: { wallMs: number; cpuMs: number; frames: number } }
  for (const shape of honestShapes) {
    const { cpuMs } = child(shape.name, false)
    const after = child(shape.name, true)
    if (after.warmUp) warmUps.push(after.warmUp)
    cold.push({ shape: shape.name, cpuMs: +cpuMs.toFixed(1), afterWarmUpCpuMs: +after.cpuMs.toFixed(1) })
    console.log(
      `  ${shape.name.slice(0, widths[0]).padEnd(widths[0]!)}  ${cpuMs.toFixed(1).padStart(9)}  ${after.cpuMs.toFixed(1).padStart(9)}`,
    )
  }
  const worstCold = (pick: (c: (typeof cold)[number]) => number) => Math.max(...cold.map(pick))
  console.log(
    `worst first frame: ${worstCold((c) => c.cpuMs).toFixed(1)} ms cold, ${worstCold((c) => c.afterWarmUpCpuMs).toFixed(1)} ms after the warm-up (goal ≤ 50 ms)`,
  )
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b)
  const median = (xs: number[]) => sorted(xs)[Math.floor(xs.length / 2)] ?? 0
  console.log(
    `warm-up: ${warmUps[0]?.frames ?? 0} frames, median ${median(warmUps.map((w) => w.wallMs))} ms wall, ${median(warmUps.map((w) => w.cpuMs))} ms CPU (all threads), worst ${Math.max(...warmUps.map((w) => w.wallMs))} ms wall / ${Math.max(...warmUps.map((w) => w.cpuMs))} ms CPU`,
  )
}

// The same frames as a real relay process pays for them: in-process figures leave out what the
// process does after saving a frame (hook events derived and recorded in the event log, the
// storage commit, sealing, the inbox upkeep), which an outside observer of its CPU sees all the same.
// Every shape, accepted or refused; --process-shapes large limits it to the large accepted ones.
const LARGE_SHAPES = [
  ...atCapShapes(caps).map((s) => s.name),
  "SDK sync step 2 after a long offline period, first part (as the SDK sends it)",
  "SDK sync step 2 after a long offline period, last part (the parts before it saved)",
  "the same offline work in one update (a stock client's sync step 2)",
  "messages with long bodies up to the frame limit",
  ...(lowered ? defaultAtCap.map((s) => `${s.name} [default caps]`) : []),
]
const endToEnd: {
  shape: string
  honest: boolean
  bytes: number
  outcome: string
  inProcessCpuMs?: number
  inProcessWorstCpuMs?: number
  cpuMs: number
  worstCpuMs: number
  untilAckMs: number
  /** Of the frame's CPU, the main thread's (the rest: V8's GC and compiler threads, libuv's pool, the checkpointer). */
  mainThreadMs: number
  unloadMs: number
  runsCpuMs: number[]
  /** The shape's first frame in the process (left out of the figures above: its JIT is cold for the shape). */
  firstCpuMs: number
}[] = []
if (!flags["no-process"] && (!flags["cold-only"] || flags["process-only"])) {
  const all = [...honestShapes, ...hostileShapes]
  const which = flags["process-shapes"]
  // "all", "large", or names (or parts of names) separated by "|".
  const picked =
    which === "large"
      ? LARGE_SHAPES.map((name) => all.find((s) => s.name === name)!)
      : which === "all"
        ? all
        : all.filter((s) => which.split("|").some((part) => s.name.includes(part)))
  // One process for all: a first, unmeasured frame of each shape warms its JIT, then `runs` measured ones.
  const plan = picked.flatMap((shape) => Array.from({ length: runs + 1 }, () => shape))
  // PARLEY_BENCH_NODE_ARGS: Node flags for the relay process (as for `npm run bench`), e.g. "--trace-gc".
  const nodeArgs = process.env.PARLEY_BENCH_NODE_ARGS?.split(/\s+/).filter(Boolean)
  let summary: ProcessRunSummary | undefined
  const results = await probeProcess(plan, seed, {
    args: relayArgs,
    ...(nodeArgs ? { nodeArgs } : {}),
    onSummary: (s) => {
      summary = s
    },
  })
  console.log(
    `\nEvery frame, end to end and in process. "process": a relay process (default configuration: SQLite, hooks with event log and inbox upkeep, sealed history), its CPU (all threads, /proc/<pid>/task/<tid>/schedstat, ns) from before the frame until quiet after the answer, median (worst) of ${runs} runs; "until ack": of which before the sender had its answer; "main thread": of which on the event loop's thread (the rest is V8's garbage collection and compiler threads, libuv's pool, the WAL checkpointer), median; "unload": apart from the frame, median CPU of unloading the document once the sender left (the relay runs with a 100 ms idle delay, so that no unload lands in a later frame's window). "in-process": the table above (relay core, memory storage, no hooks).`,
  )
  const columns = [58, 9, 40, 8, 8, 9, 11, 10, 10, 8]
  const row = (cells: string[]) =>
    cells.map((c, i) => (i === 0 || i === 2 ? c.padEnd(columns[i]!) : c.padStart(columns[i]!))).join("  ")
  console.log(
    row([
      "frame",
      "bytes",
      "outcome",
      "process",
      "worst",
      "until ack",
      "main thread",
      "in-process",
      "worst",
      "unload",
    ]),
  )
  picked.forEach((shape, k) => {
    const first = results[k * (runs + 1)]!
    const measured = results.slice(k * (runs + 1) + 1, (k + 1) * (runs + 1))
    const times = measured.map((r) => r.cpuMs).sort((a, b) => a - b)
    const acks = measured.map((r) => r.untilAckMs).sort((a, b) => a - b)
    const unloads = measured.map((r) => r.unloadMs).sort((a, b) => a - b)
    const mains = measured.map((r) => r.threads.main ?? 0).sort((a, b) => a - b)
    const inProcess = rows.find((r) => r.shape === shape.name)
    const accepted = measured.filter((r) => r.accepted).length
    const entry = {
      shape: shape.name,
      honest: shape.honest,
      bytes: measured[0]!.bytes,
      outcome:
        accepted === measured.length
          ? "accepted"
          : accepted === 0
            ? `refused${inProcess && inProcess.outcome !== "accepted" ? inProcess.outcome.slice("refused".length) : ""}`
            : `accepted ${accepted} of ${measured.length}`,
      ...(inProcess ? { inProcessCpuMs: inProcess.cpuMs, inProcessWorstCpuMs: inProcess.worstCpuMs } : {}),
      cpuMs: times[Math.floor(times.length / 2)]!,
      worstCpuMs: times.at(-1)!,
      untilAckMs: acks[Math.floor(acks.length / 2)]!,
      mainThreadMs: mains[Math.floor(mains.length / 2)]!,
      unloadMs: unloads[Math.floor(unloads.length / 2)]!,
      runsCpuMs: measured.map((r) => r.cpuMs),
      firstCpuMs: first.cpuMs,
    }
    endToEnd.push(entry)
    console.log(
      row([
        `${shape.honest ? "honest" : "crafted"}: ${shape.name}`.slice(0, columns[0]),
        String(entry.bytes),
        entry.outcome.slice(0, columns[2]),
        entry.cpuMs.toFixed(1),
        entry.worstCpuMs.toFixed(1),
        entry.untilAckMs.toFixed(1),
        entry.mainThreadMs.toFixed(1),
        inProcess ? inProcess.cpuMs.toFixed(1) : "-",
        inProcess ? inProcess.worstCpuMs.toFixed(1) : "-",
        entry.unloadMs.toFixed(1),
      ]),
    )
    // Every run in order: the spread is mostly the collector's (a major GC lands in some frames' windows).
    const gcNote = (r: (typeof measured)[number]) =>
      r.gcs
        ? ` (${r.gcs.scavenges} scavenge${r.gcs.scavenges === 1 ? "" : "s"}${r.gcs.markCompacts ? `, ${r.gcs.markCompacts} mark-compact` : ""})`
        : ""
    console.log(
      `    runs in order, ms (the shape's first, unmeasured frame in brackets): [${first.cpuMs.toFixed(0)}${gcNote(first)}] ${measured.map((r) => `${r.cpuMs.toFixed(0)}${gcNote(r)}`).join(", ")}`,
    )
    // Where each run's CPU was, by thread name: the collector's helpers and the compilers are not the relay's code.
    const names = [...new Set(measured.flatMap((r) => Object.keys(r.threads)))]
      .filter((n) => measured.some((r) => (r.threads[n] ?? 0) >= 0.5))
      .sort()
    console.log(
      `    by thread, ms: ${names.map((n) => `${n} ${measured.map((r) => (r.threads[n] ?? 0).toFixed(0)).join("/")}`).join("; ")}`,
    )
  })
  // The process's whole run: how much memory the heap settings cost, and how often V8 collected the whole heap.
  if (summary)
    console.log(
      `relay process: peak RSS ${summary.peakRssMB.toFixed(1)} MB${summary.markCompacts ? `; mark-compacts over the run (start-up included) ${summary.markCompacts.all}, of which memory-reducing ${summary.markCompacts.reducing}` : " (mark-compacts: run with PARLEY_BENCH_NODE_ARGS=--trace-gc)"}; PARLEY_V8_FLAGS ${process.env.PARLEY_V8_FLAGS === undefined ? "unset (the relay's defaults)" : `"${process.env.PARLEY_V8_FLAGS}"`}`,
    )
  const worstOf = (list: typeof endToEnd) => Math.max(0, ...list.map((r) => r.worstCpuMs))
  console.log(
    `worst frame end to end: ${worstOf(endToEnd).toFixed(1)} ms; accepted: ${worstOf(endToEnd.filter((r) => r.outcome === "accepted")).toFixed(1)} ms (goal ≤ 50 ms); refused: ${worstOf(endToEnd.filter((r) => r.outcome !== "accepted")).toFixed(1)} ms`,
  )
  // The goal is for any frame: a shape's first one after the start (its code paths only as warm as the
  // relay's start-up warm-up made them) counts too, though the figures above leave it out.
  console.log(
    `worst first frame of a shape (accepted): ${Math.max(0, ...endToEnd.filter((r) => r.outcome === "accepted").map((r) => r.firstCpuMs)).toFixed(1)} ms`,
  )
  for (const r of endToEnd)
    if ((r.outcome === "accepted") === expectRefusal(r.shape))
      console.log(
        `  UNEXPECTED end to end: ${r.honest ? "honest" : "crafted"} frame "${r.shape}" ${r.outcome}`,
      )
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
      warmUps,
      endToEnd,
    },
    null,
    2,
  ),
)
console.log(`wrote ${file}`)
process.exit(0)
