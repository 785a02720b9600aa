/**
 * CPU profile of a real relay process serving one frame shape: starts the
 * relay with `node --cpu-prof` (NODE_OPTIONS refuses it), sends it `--frames`
 * frames of the shape (each to its own seeded conversation, as
 * `npm run bench:frames` does end to end), stops it with SIGTERM so that node
 * writes the profile, then prints self time by function and by file
 * (see cpu-profile-summary.ts).
 *
 *   node --conditions=parley-source --import tsx test/bench/frame-profile.ts \
 *     --shape "1,000 short messages in one update (the value cap)" --frames 10 --dir /tmp/prof
 */
import { mkdirSync, readdirSync, statSync } from "node:fs"
import { join } from "node:path"
import { parseArgs } from "node:util"
import {
  atCapShapes,
  DEFAULT_CAPS,
  honestShapes,
  hostileShapes,
  seedConversation,
} from "../../relay/test/helpers/frame-shapes.js"
import { summarizeProfile } from "./cpu-profile-summary.js"
import { probeProcess } from "./frame-cost-process.js"

const { values: flags } = parseArgs({
  options: {
    shape: {
      type: "string",
      default: `${DEFAULT_CAPS.values.toLocaleString("en-US")} short messages in one update (the value cap)`,
    },
    frames: { type: "string", default: "10" },
    messages: { type: "string", default: "1000" },
    dir: { type: "string", default: "bench-results/profiles" },
    top: { type: "string", default: "40" },
    // How long after the ack the frame's work is taken to last (the profiled relay never goes quiet).
    settle: { type: "string", default: "2500" },
    // The relay's per-update caps, "VALUES,STRUCTS" (as bench:frames --caps): the at-cap shapes fill them.
    caps: { type: "string" },
    // Shapes sent once before the profiled frames, outside their windows ("|" between names): a relay
    // that has served other large frames is not the same as a fresh one.
    after: { type: "string", default: "" },
  },
})
const [values, structs] = (flags.caps ?? `${DEFAULT_CAPS.values},${DEFAULT_CAPS.structs}`)
  .split(",")
  .map(Number)
const capArgs = flags.caps
  ? ["--max-update-values", String(values), "--max-update-structs", String(structs)]
  : []
const shapes = [...honestShapes, ...hostileShapes, ...atCapShapes({ values: values!, structs: structs! })]
const named = (name: string) => {
  const found = shapes.find((s) => s.name === name)
  if (!found) throw new Error(`no shape named ${name}`)
  return found
}
const shape = named(flags.shape)
const before = flags.after ? flags.after.split("|").map(named) : []
mkdirSync(flags.dir, { recursive: true })
const startedAt = Date.now()
const plan = [...before, ...Array.from({ length: Number(flags.frames) }, () => shape)]
const all = await probeProcess(plan, (id) => seedConversation(id, Number(flags.messages)), {
  nodeArgs: ["--cpu-prof", `--cpu-prof-dir=${flags.dir}`],
  args: capArgs,
  quietGiveUpMs: Number(flags.settle),
})
const results = all.slice(before.length)
for (const r of results)
  console.log(
    Object.entries(r.threads)
      .filter(([, ms]) => ms >= 0.5)
      .map(([name, ms]) => `${name} ${ms.toFixed(1)}`)
      .join(", "),
  )
console.log(
  `frames: ${results.map((r) => `${r.cpuMs.toFixed(1)} (${r.untilAckMs.toFixed(1)} to ack)${r.accepted ? "" : " refused"}`).join(", ")}`,
)
// One profile per thread; the main thread's is the first (".0.").
const profile = readdirSync(flags.dir)
  .map((f) => join(flags.dir, f))
  .filter((f) => f.endsWith(".cpuprofile") && statSync(f).mtimeMs >= startedAt)
  .sort()
  .find((f) => /\.0\.\d+\.cpuprofile$/.test(f))
if (!profile) throw new Error("the relay wrote no profile")
console.log(profile)
// The frames' windows only (the profile also holds the start, the seeding syncs, the warming messages).
summarizeProfile(profile, Number(flags.top), {
  "until the ack": results.map((r) => [r.clock.sent, r.clock.ack] as const),
  "after the ack": results.map((r) => [r.clock.ack, r.clock.quiet] as const),
})
process.exit(0)
