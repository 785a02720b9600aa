/**
 * The server benchmark: the y-websocket 2.1 reference server, Hocuspocus 3.4
 * and the Parley relay, each its own process on loopback, driven by the same
 * chat workload. Prints a table per scenario and writes
 * bench-results/<timestamp>.json. Asserts nothing. See BENCHMARKS.md.
 *
 *   npm run bench                      # the full default configuration (~10 minutes)
 *   npm run bench -- --smoke           # small sizes, a minute or two
 *   npm run bench -- --scenarios fanout --servers parley --conversations 10
 */
import { execFileSync } from "node:child_process"
import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { cpus, loadavg } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import { type AppendConfig, append } from "./scenarios/append.js"
import { type ColdJoinConfig, coldJoin } from "./scenarios/coldjoin.js"
import { type DurableConfig, durable } from "./scenarios/durable.js"
import { type FanoutConfig, fanout } from "./scenarios/fanout.js"
import { type IdleConfig, idle } from "./scenarios/idle.js"
import { idleUsers } from "./scenarios/idle-users.js"
import { DEPLOYED, detectRelayFlags, type ParleyVariant, type ServerKind, startServer } from "./servers.js"
import { type Cell, type Failure, failed, printTable } from "./table.js"

// Every y-websocket provider adds a process "exit" listener.
process.setMaxListeners(0)

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..")

const SCENARIOS = ["fanout", "fanout-stock", "coldjoin", "append", "idle", "durable", "costs"] as const
type Scenario = (typeof SCENARIOS)[number]
const SERVERS: readonly ServerKind[] = ["y-websocket", "hocuspocus", "parley"]
/** Servers that run only when named in --servers. */
const OPTIONAL_SERVERS: readonly ServerKind[] = ["y-websocket-leveldb"]

const { values: flags } = parseArgs({
  options: {
    smoke: { type: "boolean", default: false },
    servers: { type: "string", default: SERVERS.join(",") },
    scenarios: { type: "string", default: SCENARIOS.join(",") },
    conversations: { type: "string" },
    participants: { type: "string" },
    messages: { type: "string" },
    rate: { type: "string" },
    history: { type: "string" },
    batch: { type: "string" },
    joins: { type: "string" },
    storm: { type: "string" },
    idle: { type: "string" },
    "per-conversation": { type: "string" },
    "idle-seconds": { type: "string" },
    writers: { type: "string" },
    window: { type: "string" },
    "durable-seconds": { type: "string" },
    append: { type: "string" },
    out: { type: "string", default: join(ROOT, "bench-results") },
    "relay-args": { type: "string", default: "" },
    help: { type: "boolean", default: false },
  },
})

if (flags.help) {
  process.stdout.write(`${readFileSync(fileURLToPath(import.meta.url), "utf8").split("*/")[0]}*/\n`)
  process.exit(0)
}

const smoke = flags.smoke
const num = (name: keyof typeof flags, full: number, small: number): number => {
  const value = flags[name]
  if (value === undefined) return smoke ? small : full
  const n = Number(value)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${value}`)
  return n
}

const fanoutConfig: FanoutConfig = {
  conversations: num("conversations", 50, 5),
  participants: num("participants", 4, 4),
  messages: num("messages", 50, 10),
  rate: num("rate", 2, 2),
}
const coldJoinConfig: ColdJoinConfig = {
  history: num("history", 100_000, 1_000),
  batch: num("batch", 1_000, 250),
  joins: num("joins", 5, 3),
  storm: num("storm", 20, 5),
}
const appendConfig: AppendConfig = {
  messages: num("append", 100_000, 2_000),
}
const idleConfig: IdleConfig = {
  connections: num("idle", 1_000, 100),
  perConversation: num("per-conversation", 10, 10),
  // A whole cycle of the clients' awareness renewals (15 s) and the servers' pings (15–30 s).
  seconds: num("idle-seconds", 30, 3),
}
const durableConfig: DurableConfig = {
  writers: num("writers", 20, 4),
  window: num("window", 8, 8),
  seconds: num("durable-seconds", 10, 3),
}

const servers = flags.servers.split(",").map((s) => s.trim()) as ServerKind[]
for (const s of servers)
  if (!SERVERS.includes(s) && !OPTIONAL_SERVERS.includes(s)) throw new Error(`unknown server ${s}`)
const scenarios = flags.scenarios.split(",").map((s) => s.trim()) as Scenario[]
for (const s of scenarios) if (!SCENARIOS.includes(s)) throw new Error(`unknown scenario ${s}`)

/** The benchmark's peers live in their own package (test/bench/package.json), installed on demand. */
const BENCH_PEERS = "test/bench/node_modules"
const version = (pkg: string, at = "node_modules"): string => {
  try {
    return (JSON.parse(readFileSync(join(ROOT, at, pkg, "package.json"), "utf8")) as { version: string })
      .version
  } catch {
    return "?"
  }
}
const git = (...args: string[]) => {
  try {
    return execFileSync("git", args, { cwd: ROOT, encoding: "utf8" }).trim()
  } catch {
    return "?"
  }
}

const relayFlags = servers.includes("parley") ? await detectRelayFlags() : undefined
const notes: string[] = []
if (relayFlags && !relayFlags.hooks)
  notes.push("The relay has no --hooks flag yet: Parley ran without its hook script.")
if (relayFlags && !relayFlags.noAuthorization)
  notes.push(
    "The relay has no flag to switch authorization off: the no-authorization variant runs the same relay through test/bench/servers/parley-without-authorization.ts (an allow-everything policy).",
  )

const startedAt = new Date()
const results: Record<string, unknown> = {}
const report = {
  startedAt: startedAt.toISOString(),
  smoke,
  machine: {
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? "?",
    node: process.version,
    loadAverageAtStart: loadavg(),
  },
  versions: {
    "y-websocket server": version("y-websocket-server-v2", BENCH_PEERS),
    "y-websocket client": version("y-websocket"),
    "@hocuspocus/server": version("@hocuspocus/server", BENCH_PEERS),
    "@hocuspocus/provider": version("@hocuspocus/provider", BENCH_PEERS),
    yjs: version("yjs"),
    parley: `${git("rev-parse", "--short", "HEAD")}${git("status", "--porcelain", "relay", "shared").length ? " (+ uncommitted changes)" : ""}`,
  },
  config: {
    fanout: fanoutConfig,
    coldJoin: coldJoinConfig,
    append: appendConfig,
    idle: idleConfig,
    durable: durableConfig,
  },
  relayFlags,
  notes,
  results,
}

console.log(
  `Parley server benchmark${smoke ? " (smoke sizes)" : ""}: ${report.machine.cores} × ${report.machine.cpu}, Node ${process.version}, load ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
)
for (const note of notes) console.log(`note: ${note}`)

type Outcome<T> = T | Failure
const markdown: string[] = []

/** Runs `body` against a fresh server process, always stopping it; records an error instead of throwing. */
async function withServer<T>(
  kind: ServerKind,
  variant: ParleyVariant,
  body: (server: Awaited<ReturnType<typeof startServer>>) => Promise<T>,
): Promise<Outcome<T>> {
  let server: Awaited<ReturnType<typeof startServer>> | undefined
  try {
    server = await startServer(kind, variant)
    process.stdout.write(`  ${server.label} ...`)
    const started = performance.now()
    const result = await body(server)
    process.stdout.write(` ${((performance.now() - started) / 1000).toFixed(1)} s\n`)
    return result
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    process.stdout.write(` FAILED: ${message}\n`)
    return { server: server?.label ?? kind, error: message }
  } finally {
    await server?.stop()
  }
}

const ms = (v: number) => (Number.isFinite(v) ? (v < 10 ? v.toFixed(2) : v.toFixed(1)) : "–")
const mb = (v: number) => v.toFixed(1)
const int = (v: number) => Math.round(v).toLocaleString("en-US")

/** Extra relay flags from --relay-args, e.g. "--max-buffered-bytes 16777216". */
const relayArgs = flags["relay-args"].split(/\s+/).filter(Boolean)
if (relayArgs.length) notes.push(`Parley ran with extra flags: ${relayArgs.join(" ")}`)
const withRelayArgs = (variant: ParleyVariant): ParleyVariant =>
  relayArgs.length ? { ...variant, args: [...(variant.args ?? []), ...relayArgs] } : variant

async function runScenario<T extends object>(
  name: string,
  kinds: readonly ServerKind[],
  run: (server: Awaited<ReturnType<typeof startServer>>) => Promise<T>,
  rows: [string, (r: T) => Cell][],
  variants: readonly ParleyVariant[] = [DEPLOYED],
  /** For a failed Parley run: a variant to run again with (e.g. a limit raised), if any. */
  retry?: (failure: Failure) => ParleyVariant | undefined,
): Promise<Outcome<T>[]> {
  console.log(`\n${name}`)
  const outcomes: Outcome<T>[] = []
  for (const kind of kinds) {
    for (const variant of kind === "parley" ? variants : [DEPLOYED]) {
      const outcome = await withServer(kind, withRelayArgs(variant), run)
      outcomes.push(outcome)
      const again = kind === "parley" && failed(outcome) ? retry?.(outcome) : undefined
      if (again) outcomes.push(await withServer(kind, withRelayArgs(again), run))
    }
  }
  markdown.push(printTable(name, outcomes, rows))
  return outcomes
}

const fanoutRows: [string, (r: Awaited<ReturnType<typeof fanout>>) => Cell][] = [
  ["deliveries", (r) => `${int(r.deliveries)} / ${int(r.expectedDeliveries)}`],
  ["lost", (r) => int(r.lost)],
  ["latency p50 ms", (r) => ms(r.latencyMs.p50)],
  ["latency p95 ms", (r) => ms(r.latencyMs.p95)],
  ["latency p99 ms", (r) => ms(r.latencyMs.p99)],
  ["latency max ms", (r) => ms(r.latencyMs.max)],
  [
    "after the first 5 s: p50 / p99 ms",
    (r) => (r.steadyLatencyMs ? `${ms(r.steadyLatencyMs.p50)} / ${ms(r.steadyLatencyMs.p99)}` : "–"),
  ],
  [
    "saved ack p50 / p99 ms",
    (r) => (r.savedAckMs ? `${ms(r.savedAckMs.p50)} / ${ms(r.savedAckMs.p99)}` : "–"),
  ],
  ["server CPU ms / 1,000 deliveries", (r) => ms(r.serverCpuMsPer1000Deliveries)],
  ["server peak RSS MB", (r) => mb(r.serverPeakRssMB)],
  ["generator CPU ms", (r) => int(r.generatorCpuMs)],
]

const fanoutTitle = `fan-out: ${fanoutConfig.conversations} conversations × ${fanoutConfig.participants} participants × ${fanoutConfig.messages} messages at ${fanoutConfig.rate}/s`

if (scenarios.includes("fanout")) {
  results.fanout = await runScenario(
    fanoutTitle,
    servers,
    (server) => fanout(server, fanoutConfig, server.kind === "parley"),
    fanoutRows,
  )
}

/** Parley for the cold join: as deployed, with no per-user update rate for the build's writer. */
const coldJoinBuild: ParleyVariant = {
  ...DEPLOYED,
  args: ["--user-updates-per-second", "0"],
  note: "no per-user update rate (for the build's writer)",
}

if (scenarios.includes("coldjoin")) {
  results.coldJoin = await runScenario(
    `cold join: ${int(coldJoinConfig.history)}-message conversation, ${coldJoinConfig.joins} joins one by one, then ${coldJoinConfig.storm} at once`,
    servers,
    (server) => coldJoin(server, coldJoinConfig),
    [
      ["document MB", (r) => mb(r.documentMB)],
      ["messages in a joiner's replica", (r) => int(r.replicaMessages)],
      ["build: written and confirmed s", (r) => ms(r.buildSeconds)],
      ["server busy after the build s", (r) => ms(r.settleSeconds)],
      ["first join ms", (r) => ms(r.firstJoinMs)],
      ["first join server CPU ms", (r) => ms(r.firstJoinServerCpuMs)],
      ["later joins: median ms", (r) => ms(r.joinMs)],
      ["later joins: server CPU ms / join", (r) => ms(r.joinServerCpuMs)],
      [`storm of ${coldJoinConfig.storm}: s`, (r) => ms(r.stormSeconds)],
      ["storm: server CPU ms", (r) => int(r.stormServerCpuMs)],
      ["server RSS before storm MB", (r) => mb(r.rssBeforeStormMB)],
      ["server peak RSS MB", (r) => mb(r.serverPeakRssMB)],
      ["joiners closed by the server", (r) => int(r.joinersClosed)],
      ["generator CPU ms", (r) => int(r.generatorCpuMs)],
    ],
    // The build is one device sending its backlog of a hundred 1,000-message updates as fast as the
    // relay confirms them: Parley's per-user update rate would close it (4429), as it would any client
    // doing that; the joins, which are what is measured, come nowhere near it.
    [coldJoinBuild],
    // A joiner closed for a full send queue (4429) is refused its download by a
    // limit smaller than the document: measured again with the limit raised.
    (failure) =>
      /4429/.test(failure.error)
        ? {
            ...coldJoinBuild,
            args: [...(coldJoinBuild.args ?? []), "--max-buffered-bytes", String(64 * 2 ** 20)],
            note: `${coldJoinBuild.note}; send queue raised to 64 MiB`,
          }
        : undefined,
  )
}

if (scenarios.includes("append")) {
  // One writer sends thousands of frames a second: Parley's per-connection and per-user rates are
  // raised for it (as in the durable scenario); the peers have no such limits.
  results.append = await runScenario(
    `append: one writer appends ${int(appendConfig.messages)} messages, one update each; a reader joins right after`,
    servers,
    (server) => append(server, appendConfig),
    [
      ["written (sent) s", (r) => ms(r.writeSeconds)],
      ["confirmed s", (r) => ms(r.confirmedSeconds)],
      ["first reader, joining after the last write, waited s", (r) => ms(r.firstReaderSeconds)],
      ["server busy after the last write s", (r) => ms(r.busyAfterSeconds)],
      ["server CPU s", (r) => ms(r.serverCpuSeconds)],
      ["later reader ms", (r) => ms(r.laterReaderMs)],
      ["later reader server CPU ms", (r) => ms(r.laterReaderServerCpuMs)],
      ["server peak RSS MB", (r) => mb(r.serverPeakRssMB)],
      ["generator CPU ms", (r) => int(r.generatorCpuMs)],
    ],
    [
      {
        ...DEPLOYED,
        args: [
          "--max-messages-per-second",
          "100000",
          "--message-burst",
          "100000",
          "--user-updates-per-second",
          "0",
        ],
      },
    ],
  )
}

if (scenarios.includes("idle")) {
  results.idle = await runScenario(
    `idle: ${int(idleConfig.connections)} connections for ${idleConfig.seconds} s`,
    servers,
    (server) => idle(server, idleConfig),
    [
      ["connections", (r) => int(r.connections)],
      ["RSS before → after MB (after GC)", (r) => `${mb(r.baselineRssMB)} → ${mb(r.rssMB)}`],
      ["KB per connection (RSS)", (r) => (r.bytesPerConnection / 1024).toFixed(1)],
      ["KB per connection (JS heap)", (r) => (r.heapBytesPerConnection / 1024).toFixed(1)],
      ["server CPU ms / s / 1,000 conns", (r) => ms(r.serverCpuMsPerSecondPer1000)],
      ["server CPU ms / s with no connection", (r) => ms(r.emptyServerCpuMsPerSecond)],
      ["server peak RSS MB", (r) => mb(r.serverPeakRssMB)],
    ],
  )
}

if (scenarios.includes("idle")) {
  // What an app's users cost: on Parley, the SDK's one socket per user (inbox + conversation).
  results.idleUsers = await runScenario(
    `idle users: ${int(idleConfig.connections)} users for ${idleConfig.seconds} s (Parley: one multiplexed socket each, inbox + conversation)`,
    servers,
    (server) => idleUsers(server, idleConfig),
    [
      ["users", (r) => int(r.users)],
      ["sockets", (r) => int(r.sockets)],
      ["RSS before → after MB (after GC)", (r) => `${mb(r.baselineRssMB)} → ${mb(r.rssMB)}`],
      ["KB per user (RSS)", (r) => (r.bytesPerUser / 1024).toFixed(1)],
      ["KB per user (JS heap)", (r) => (r.heapBytesPerUser / 1024).toFixed(1)],
      ["server CPU ms / s / 1,000 users", (r) => ms(r.serverCpuMsPerSecondPer1000)],
      ["server CPU ms / s with no connection", (r) => ms(r.emptyServerCpuMsPerSecond)],
      ["the users' share ms / s / 1,000 users", (r) => ms(r.userCpuMsPerSecondPer1000)],
    ],
  )
}

if (scenarios.includes("idle") && servers.includes("parley")) {
  // The same users without their inbox: what the multiplexed socket and a conversation channel cost
  // apart from the inbox document each connected user keeps loaded on the relay.
  results.idleUsersNoInbox = await runScenario(
    `idle users without inbox: ${int(idleConfig.connections)} users for ${idleConfig.seconds} s (Parley: one multiplexed socket each, conversation only)`,
    ["parley"],
    (server) => idleUsers(server, idleConfig, { inbox: false }),
    [
      ["users", (r) => int(r.users)],
      ["KB per user (RSS)", (r) => (r.bytesPerUser / 1024).toFixed(1)],
      ["KB per user (JS heap)", (r) => (r.heapBytesPerUser / 1024).toFixed(1)],
      ["server CPU ms / s / 1,000 users", (r) => ms(r.serverCpuMsPerSecondPer1000)],
      ["server CPU ms / s with no connection", (r) => ms(r.emptyServerCpuMsPerSecond)],
      ["the users' share ms / s / 1,000 users", (r) => ms(r.userCpuMsPerSecondPer1000)],
    ],
  )
}

if (servers.includes("parley") && scenarios.includes("durable")) {
  // The relay's per-connection rate limit (100 frames/s) would close a writer
  // that keeps a window of messages in flight; raised for this test only.
  const unthrottled: ParleyVariant = {
    ...DEPLOYED,
    // The per-user update budget too: each writer is one user at hundreds of updates a second.
    args: [
      "--max-messages-per-second",
      "100000",
      "--message-burst",
      "100000",
      "--user-updates-per-second",
      "0",
    ],
  }
  results.durable = await runScenario(
    `Parley durable throughput: ${durableConfig.writers} writers, ${durableConfig.window} in flight each, ${durableConfig.seconds} s`,
    ["parley"],
    (server) => durable(server, durableConfig),
    [
      ["acknowledged updates", (r) => int(r.acknowledged)],
      ["durable updates / s", (r) => int(r.updatesPerSecond)],
      ["saved ack p50 ms", (r) => ms(r.savedAckMs.p50)],
      ["saved ack p95 ms", (r) => ms(r.savedAckMs.p95)],
      ["saved ack p99 ms", (r) => ms(r.savedAckMs.p99)],
      ["saved ack max ms", (r) => ms(r.savedAckMs.max)],
      ["server CPU ms / 1,000 updates", (r) => ms(r.serverCpuMsPer1000Updates)],
      ["server peak RSS MB", (r) => mb(r.serverPeakRssMB)],
    ],
    [unthrottled, { ...unthrottled, hooks: false }],
  )
}

// The fan-out as a plain y-websocket app drives it: stock providers without `parley=1` (no "saved"
// acknowledgements), which is how an independent harness measured Parley (issue 17.4).
if (servers.includes("parley") && scenarios.includes("fanout-stock")) {
  results.fanoutStock = await runScenario(
    `${fanoutTitle}, Parley driven by stock y-websocket clients (no parley=1; compare with the fan-out table)`,
    ["parley"],
    (server) => fanout(server, fanoutConfig, false),
    fanoutRows,
  )
}

if (servers.includes("parley") && scenarios.includes("costs")) {
  const variants: ParleyVariant[] = [
    { hooks: false, authorization: true },
    { hooks: true, authorization: false },
  ]
  results.costs = await runScenario(
    `Parley fan-out without hooks / without authorization (compare with "parley" in the fan-out table)`,
    ["parley"],
    (server) => fanout(server, fanoutConfig, true),
    fanoutRows,
    variants,
  )
}

/** The goals for Parley, each against this run's figures (only where both sides ran). */
function goals(): void {
  type Row = { goal: string; parley: number; target: number; unit: string }
  const ok = <T extends object>(list: unknown): T[] =>
    Array.isArray(list) ? (list as (T | Failure)[]).filter((o): o is T => !failed(o)) : []
  const byServer = <T extends { server: string }>(list: T[], name: string) =>
    list.find((r) => r.server === name)
  const peers = (list: { server: string }[]) =>
    list.filter((r) => r.server === "y-websocket" || r.server === "hocuspocus")
  const rows: Row[] = []
  const fan = ok<Awaited<ReturnType<typeof fanout>>>(results.fanout)
  const parleyFan = byServer(fan, "parley")
  if (parleyFan) {
    rows.push({ goal: "fan-out p99 latency", parley: parleyFan.latencyMs.p99, target: 2, unit: "ms" })
    const best = Math.min(...peers(fan).map((r) => (r as typeof parleyFan).serverCpuMsPer1000Deliveries))
    if (Number.isFinite(best))
      rows.push({
        goal: "server CPU per 1,000 deliveries ≤ half the better peer's",
        parley: parleyFan.serverCpuMsPer1000Deliveries,
        target: best / 2,
        unit: "ms",
      })
  }
  const cold = ok<Awaited<ReturnType<typeof coldJoin>>>(results.coldJoin)
  const parleyCold = cold.find((r) => r.server.startsWith("parley"))
  if (parleyCold) {
    const best = Math.min(...peers(cold).map((r) => (r as typeof parleyCold).joinServerCpuMs))
    if (Number.isFinite(best))
      rows.push({
        goal: `server CPU per cold join ≤ a tenth of the peers' (${parleyCold.server})`,
        parley: parleyCold.joinServerCpuMs,
        target: best / 10,
        unit: "ms",
      })
  }
  const idleRuns = ok<Awaited<ReturnType<typeof idle>>>(results.idle)
  const parleyIdle = byServer(idleRuns, "parley")
  // Memory goals on the JS heap after a full GC: RSS growth moves with what V8 and the allocator
  // keep committed (it came out below the heap growth, even negative, in runs of 2026-11-30).
  if (parleyIdle)
    rows.push({
      goal: "memory per idle connection (JS heap after GC)",
      parley: parleyIdle.heapBytesPerConnection / 1024,
      target: 20,
      unit: "KB",
    })
  const idleUserRuns = ok<Awaited<ReturnType<typeof idleUsers>>>(results.idleUsers)
  const parleyUsers = byServer(idleUserRuns, "parley")
  if (parleyUsers) {
    rows.push({
      goal: "memory per idle connected user (SDK: one socket; JS heap after GC)",
      parley: parleyUsers.heapBytesPerUser / 1024,
      target: 20,
      unit: "KB",
    })
    rows.push({
      goal: "sockets per idle user",
      parley: parleyUsers.sockets / parleyUsers.users,
      target: 1,
      unit: "",
    })
    const stock = byServer(idleUserRuns, "y-websocket")
    if (stock) {
      rows.push({
        goal: "idle CPU per 1,000 users ≤ y-websocket's (same run)",
        parley: parleyUsers.serverCpuMsPerSecondPer1000,
        target: stock.serverCpuMsPerSecondPer1000,
        unit: "ms/s",
      })
      rows.push({
        goal: "… less each server's CPU with no connection",
        parley: parleyUsers.userCpuMsPerSecondPer1000,
        target: stock.userCpuMsPerSecondPer1000,
        unit: "ms/s",
      })
    }
  }
  if (rows.length === 0) return
  const lines = rows.map((r) => {
    const verdict = r.parley <= r.target ? "met" : `missed: ${(r.parley / r.target).toFixed(1)}× the goal`
    return [r.goal, `≤ ${ms(r.target)} ${r.unit}`, `${ms(r.parley)} ${r.unit}`, verdict]
  })
  const headers = ["goal", "target", "parley", ""]
  const widths = headers.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  console.log("\ngoals (issue 9)")
  for (const l of [headers, ...lines]) console.log(l.map((c, i) => c.padEnd(widths[i]!)).join("   "))
  markdown.push(
    [
      "### Goals (issue 9)",
      "",
      "| goal | target | parley | |",
      "| --- | ---: | ---: | --- |",
      ...lines.map((l) => `| ${l.join(" | ")} |`),
      "",
    ].join("\n"),
  )
}
goals()

mkdirSync(flags.out, { recursive: true })
const file = join(flags.out, `${startedAt.toISOString().replace(/[:.]/g, "-")}.json`)
writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`)
writeFileSync(file.replace(/\.json$/, ".md"), markdown.join("\n"))
console.log(`\nresults: ${file} (tables in Markdown: ${file.replace(/\.json$/, ".md")})`)
process.exit(0)
