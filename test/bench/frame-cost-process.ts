/**
 * What one frame costs a real relay process end to end, in its default
 * configuration (SQLite in a data directory, the hooks pipeline with the
 * durable event log and the inbox upkeep, the live inbox): everything the
 * process does for the frame, the ack and the post-ack work (hook events
 * derived and recorded, storage group commit, compaction) included. The
 * process's CPU time (all threads, from /proc/<pid>/task/<tid>/schedstat) is
 * read before the frame is sent and again once the relay has answered and
 * gone quiet, so nothing it does for the frame afterwards escapes the figure.
 * Used by `npm run bench:frames`; Linux only (it reads /proc).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { type ConversationId, newConversationId, sendMessage } from "@parley/shared"
import { SqliteBackend } from "../../relay/src/backend/sqlite.js"
import { TestClient } from "../../relay/test/helpers/clients.js"
import { updateFrame } from "../../relay/test/helpers/frame-probe.js"
import { alice, bob, type Seed, type Shape } from "../../relay/test/helpers/frame-shapes.js"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"
import { readProcess } from "./proc.js"
import { compiledRelay } from "./servers.js"

/**
 * CPU time of a process's threads so far, in ms with nanosecond resolution:
 * the sum of the first field of each thread's `/proc/<pid>/task/<tid>/schedstat`
 * (time on a CPU). `/proc/<pid>/stat` counts in 10 ms clock ticks, too coarse
 * for frames that cost tens of milliseconds. A thread that ends takes its time
 * with it; the relay's threads (libuv's pool, V8's, the WAL checkpointer)
 * live as long as the process.
 */
function cpuMsOf(pid: number): number {
  let ns = 0
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[0])
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return ns / 1e6
}

/**
 * CPU ms so far of the main thread and of each other thread by name and id ("node#N": Node names
 * all its threads "node"; ids follow creation order: V8's platform threads, libuv's pool, workers).
 */
function cpuMsByThread(pid: number): Map<string, number> {
  const byName = new Map<string, number>()
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      // The main thread is tid = pid; the others by name and thread id (on Node 20 they are all
      // "node": V8's platform threads, which collect and compile, libuv's pool, worker threads).
      const name =
        task === String(pid)
          ? "main"
          : `${readFileSync(`/proc/${pid}/task/${task}/comm`, "utf8").trim()}#${task}`
      const ns = Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[0])
      byName.set(name, (byName.get(name) ?? 0) + ns / 1e6)
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return byName
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** CPU a relay with nothing to do may use per 50 ms sample (timers, the checkpointing thread's wake-ups). */
const IDLE_MS_PER_SAMPLE = 0.5

/**
 * Resolves with the process's CPU time when it went quiet: the reading after
 * which it used (almost) nothing for `quietMs` (sampled every 50 ms). The
 * post-ack work (hook events, commits, compaction) runs on timers and promise
 * chains after the answer, so an ack alone is not the end of the frame's cost;
 * the idle CPU of the quiet stretch itself is not counted.
 */
async function cpuWhenQuiet(pid: number, giveUpMs: number, quietMs = 400): Promise<number> {
  let quietFrom = cpuMsOf(pid)
  let last = quietFrom
  let quietSince = performance.now()
  // On a busy shared machine the relay may never look quiet for long: give up after a while.
  const giveUpAt = performance.now() + giveUpMs
  for (;;) {
    if (performance.now() > giveUpAt) return last
    await sleep(50)
    const now = cpuMsOf(pid)
    if (now - last > IDLE_MS_PER_SAMPLE) {
      quietFrom = now
      quietSince = performance.now()
    } else if (performance.now() - quietSince >= quietMs) return quietFrom
    last = now
  }
}

/** One frame sent to the relay process. */
export interface ProcessProbeResult {
  readonly bytes: number
  readonly accepted: boolean
  /** Relay process CPU, ms, from before the frame to the relay being quiet after answering it. */
  readonly cpuMs: number
  /** Of which: until the ack arrived (as the process's clock had it then). */
  readonly untilAckMs: number
  /**
   * Apart from the frame: relay process CPU from the sender closing its
   * connection to the relay being quiet after unloading the document (its
   * last connection gone), which stores what the log holds as a snapshot.
   */
  readonly unloadMs: number
  /** Monotonic clock (µs, the clock of V8's CPU profiles) when the frame was sent, acknowledged, and the relay quiet after it. */
  readonly clock: { readonly sent: number; readonly ack: number; readonly quiet: number }
  /** CPU ms per thread name from the frame to the end of the quiet stretch after it (the main thread and the others: GC helpers, compilers, libuv's pool). */
  readonly threads: Readonly<Record<string, number>>
  /**
   * With `--trace-gc` among the relay's node flags: V8's collections whose
   * start fell between the frame being sent and the relay being quiet after
   * it (times as the trace prints them, ms since the relay's start, placed by
   * the start of the process: within a few tens of ms).
   */
  readonly gcs?: { readonly scavenges: number; readonly markCompacts: number }
  /**
   * With `--trace-gc`: the main isolate's trace lines of the mark-compacts whose marking overlapped
   * the frame's window (the line is printed when the collection ends; its marking started "walltime
   * since start of marking" earlier, on V8's helper threads when marking is concurrent).
   */
  readonly markCompactLines?: readonly string[]
}

/** The relay process over the whole run of {@link probeProcess}. */
export interface ProcessRunSummary {
  /** Peak resident memory (VmHWM) of the relay process, MB, read just before it is stopped. */
  readonly peakRssMB: number
  /**
   * With `--trace-gc`: the main isolate's mark-compacts over the whole run (start-up included), and
   * of which memory-reducing ones (`Mark-Compact (reduce)`: V8's memory reducer, run while idle).
   */
  readonly markCompacts?: { readonly all: number; readonly reducing: number }
}

const monotonicUs = () => Number(process.hrtime.bigint() / 1000n)

/**
 * Starts one relay process on a data directory seeded with `conversations`
 * copies of the seed conversation, and measures each `(shape, conversation)`
 * frame: another participant writes one short message first (as the
 * in-process probe's warm relay does: the conversation's first change loads
 * what later ones reuse), the sender connects and syncs, then, once the relay
 * is quiet, sends the shape. Then the sender leaves, and the unload of the
 * document (its last connection gone) is measured apart: the relay runs with
 * a short idle delay before unloading (100 ms instead of 30 s), so that no
 * earlier frame's document unloads in a later frame's window.
 */
export async function probeProcess(
  plan: readonly Shape[],
  seed: (id: ConversationId) => Seed,
  options: {
    /** Extra environment of the relay process. */
    readonly env?: NodeJS.ProcessEnv
    /** Extra command-line flags of the relay (`--max-update-values 1000`, say). */
    readonly args?: readonly string[]
    /** Flags for node running the relay (`--cpu-prof --cpu-prof-dir=DIR`, say: it is stopped with SIGTERM, which writes the profile). */
    readonly nodeArgs?: readonly string[]
    /** Called once with the whole run's readings of the relay process (peak memory, collections). */
    readonly onSummary?: (summary: ProcessRunSummary) => void
    /** Longest wait for the relay to go quiet (default 20 s; a profiled relay never does: its sampler keeps it busy). */
    readonly quietGiveUpMs?: number
  } = {},
): Promise<ProcessProbeResult[]> {
  const ids = plan.map(() => newConversationId())
  const seeds = ids.map((id) => seed(id))
  const dataDir = mkdtempSync(join(tmpdir(), "parley-frame-cost-"))
  const backend = new SqliteBackend(dataDir)
  for (let i = 0; i < ids.length; i++) await backend.documents.append(ids[i]!, [seeds[i]!.stored])
  await backend.close()
  let relay: RelayProcess | undefined
  try {
    const startedUs = monotonicUs()
    relay = await startRelayProcess({
      dataDir,
      env: { PARLEY_IDLE_UNLOAD_MS: "100", ...options.env },
      // PARLEY_BENCH_RELAY=dist: the compiled relay, as an installed one runs (see servers.ts).
      ...(compiledRelay()
        ? { script: fileURLToPath(new URL("../../relay/dist/main.js", import.meta.url)) }
        : {}),
      ...(options.nodeArgs ? { nodeArgs: options.nodeArgs } : {}),
      ...(options.args ? { args: [...options.args] } : {}),
    })
    const giveUp = options.quietGiveUpMs ?? 20_000
    const pid = relay.child.pid!
    // The relay warms its update path after "listening" (about a second, not ready meanwhile): the
    // frames come after it, as a load balancer's traffic does, and its cost is printed apart.
    const warmed = await relay.waitForLog(
      (line) => line.msg === "warmed up the update path" || line.msg === "warm-up skipped (--skip-warm-up)",
    )
    if (warmed.wallMs !== undefined)
      console.error(
        `WARM-UP ${warmed.wallMs} ms wall, ${warmed.cpuMs} ms CPU, ${warmed.frames} frames, done ${((monotonicUs() - startedUs) / 1000).toFixed(0)} ms after the spawn`,
      )
    const results: ProcessProbeResult[] = []
    for (let i = 0; i < plan.length; i++) {
      const shape = plan[i]!
      // Another participant writes the warming message, as in the in-process probe (where the relay
      // writes it): the sender spends none of its client-id allowance in the document on it.
      const warmer = shape.user === alice ? bob : alice
      const warming = new TestClient(relay.url, ids[i]!, await relay.token(warmer))
      await warming.opened
      await warming.synced()
      sendMessage(warming.doc, warmer, { body: "warming up" })
      await warming.allSaved()
      const client = new TestClient(relay.url, ids[i]!, await relay.token(shape.user))
      await client.opened
      await client.synced()
      // Left once the sender is in: the document stays loaded (it unloads when its last connection goes).
      warming.close()
      await warming.closed
      // The parts of a split update before the measured one, each saved (not measured).
      for (const part of shape.earlier?.(client.doc, seeds[i]!) ?? []) {
        const saved = client.saves.length
        const refused = client.errors.length
        client.send(updateFrame(part))
        await client.until(
          () => client.saves.length > saved || client.errors.length > refused || !!client.closeEvent,
        )
        if (client.saves.length === saved)
          throw new Error(`${shape.name}: a part before the measured one was refused`)
      }
      await cpuWhenQuiet(pid, giveUp)
      const update = shape.build(client.doc, seeds[i]!)
      const frame = updateFrame(update)
      const saves = client.saves.length
      const errors = client.errors.length
      const before = await cpuWhenQuiet(pid, giveUp)
      const threadsBefore = cpuMsByThread(pid)
      const sent = monotonicUs()
      client.send(frame)
      await client.until(
        () => client.saves.length > saves || client.errors.length > errors || !!client.closeEvent,
      )
      const atAck = cpuMsOf(pid)
      const ack = monotonicUs()
      const after = await cpuWhenQuiet(pid, giveUp)
      const quiet = monotonicUs()
      // PARLEY_BENCH_FRAME_WINDOWS=1: each frame's window on stderr, in ms since the relay was spawned,
      // to place V8's code log (--log-code) or trace lines in frames (the isolate's clock starts ~40 ms later).
      if (process.env.PARLEY_BENCH_FRAME_WINDOWS)
        console.error(
          `FRAME ${i} ${((sent - startedUs) / 1000).toFixed(0)} ${((quiet - startedUs) / 1000).toFixed(0)}`,
        )
      const threads: Record<string, number> = {}
      for (const [name, ms] of cpuMsByThread(pid)) threads[name] = ms - (threadsBefore.get(name) ?? 0)
      client.close()
      await client.closed
      const unloaded = await cpuWhenQuiet(pid, giveUp)
      results.push({
        bytes: frame.length,
        accepted: client.saves.length > saves && client.errors.length === errors,
        cpuMs: after - before,
        untilAckMs: atAck - before,
        unloadMs: unloaded - after,
        clock: { sent, ack, quiet },
        threads,
      })
    }
    const peakRssMB = readProcess(pid).peakRss / 2 ** 20
    relay.child.kill("SIGTERM")
    await relay.exited
    // What the relay printed that is not a log line (V8's --trace-gc, say), for whoever asked for it.
    const printed = relay.lines.filter((l) => !l.startsWith("{"))
    const out = process.env.PARLEY_BENCH_RELAY_OUTPUT
    if (out) writeFileSync(out, printed.join("\n"))
    if (!options.nodeArgs?.includes("--trace-gc")) {
      options.onSummary?.({ peakRssMB })
      return results
    }
    // The main isolate's lines only ("[pid:0x…] 1234 ms: Scavenge …"): worker threads (the WAL
    // checkpointer, a hook worker) have heaps of their own and collect far less often.
    const gcLines = printed
      .map((l) => /^\[\d+:(0x[0-9a-f]+)\]\s+(\d+) ms: (Scavenge|Mark-Compact|Mark-sweep)/.exec(l))
      .filter((m) => m !== null)
    const perIsolate = new Map<string, number>()
    for (const m of gcLines) perIsolate.set(m[1]!, (perIsolate.get(m[1]!) ?? 0) + 1)
    const main = [...perIsolate].sort((a, b) => b[1] - a[1])[0]?.[0]
    const mainMarkCompacts = gcLines.filter((m) => m[1] === main && m[3] !== "Scavenge")
    options.onSummary?.({
      peakRssMB,
      markCompacts: {
        all: mainMarkCompacts.length,
        reducing: mainMarkCompacts.filter((m) => /\(reduce\)/.test(m.input)).length,
      },
    })
    const gcs = gcLines
      .filter((m) => m[1] === main)
      .map((m) => {
        const at = startedUs + Number(m[2]) * 1000
        const marking = /walltime since start of marking ([\d.]+) ms/.exec(m.input)
        const major = m[3] !== "Scavenge"
        return { at, from: at - (marking ? Number(marking[1]) * 1000 : 0), major, line: m.input }
      })
    return results.map((r) => {
      const inWindow = gcs.filter((g) => g.at >= r.clock.sent && g.at <= r.clock.quiet)
      const markCompacts = inWindow.filter((g) => g.major).length
      const markCompactLines = gcs
        .filter((g) => g.major && g.from <= r.clock.quiet && g.at >= r.clock.sent)
        .map((g) => g.line)
      return { ...r, gcs: { scavenges: inWindow.length - markCompacts, markCompacts }, markCompactLines }
    })
  } finally {
    await stopRelayProcesses()
    rmSync(dataDir, { recursive: true, force: true })
  }
}
