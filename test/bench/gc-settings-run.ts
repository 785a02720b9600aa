/**
 * One relay process, the frames of `npm run bench:frames -- --process-only` for the given shapes
 * (one unmeasured warming frame each, then --runs measured), the relay's node flags from
 * --node-args (plus --trace-gc); writes every frame's result (CPU by thread, mark-compacts in its
 * window) as JSON to --out. For comparing V8 settings in alternating runs:
 *
 *   PARLEY_BENCH_RELAY=dist node --expose-gc --conditions=parley-source --import tsx \
 *     test/bench/gc-settings-run.ts --node-args="--single-threaded-gc" --out /tmp/run.json
 */
import { writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { atCapShapes, DEFAULT_CAPS, seedConversation } from "../../relay/test/helpers/frame-shapes.js"
import { probeProcess } from "./frame-cost-process.js"

const { values: flags } = parseArgs({
  options: {
    runs: { type: "string", default: "10" },
    shapes: { type: "string", default: "mixed work|short messages in one update" },
    "node-args": { type: "string", default: "" },
    env: { type: "string", default: "" },
    out: { type: "string" },
  },
})
const runs = Number(flags.runs)
const picked = atCapShapes(DEFAULT_CAPS).filter((s) =>
  flags.shapes.split("|").some((p) => s.name.includes(p)),
)
const plan = picked.flatMap((shape) => Array.from({ length: runs + 1 }, () => shape))
const nodeArgs = ["--trace-gc", ...flags["node-args"].split(/\s+/).filter(Boolean)]
const env = Object.fromEntries(
  flags.env
    .split(/\s+/)
    .filter(Boolean)
    .map((kv) => kv.split("=") as [string, string]),
)
const results = await probeProcess(plan, (id) => seedConversation(id, 1000), {
  args: [
    "--max-update-values",
    String(DEFAULT_CAPS.values),
    "--max-update-structs",
    String(DEFAULT_CAPS.structs),
  ],
  nodeArgs,
  env,
})
const frames = results
  .map((r, i) => ({ shape: plan[i]!.name, warming: i % (runs + 1) === 0, ...r }))
  .filter((f) => !f.warming)
writeFileSync(flags.out!, JSON.stringify({ nodeArgs, env, frames }, null, 1))
process.exit(0)
