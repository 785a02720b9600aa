/**
 * A relay of a cluster SIGKILLed under a steady load of SDK writers, and what
 * the backlog does afterwards. Three relays behind HAProxy (the shipped
 * by-user hash), PostgreSQL and Redis; `writers` browser SDK clients (in Node,
 * fake-indexeddb storage, the SDK's default reconnect policy) each send
 * `--rate` messages a second, spread over `--conversations` shared
 * conversations, for `seconds`; at `--kill-at` the relay ordering the first
 * conversation is SIGKILLed (`--kill other`: a relay with writers that orders
 * none of them; `--kill none` runs the same load without). Then
 * the writers stop and the backlog is given `--drain` seconds to empty.
 *
 *   node --conditions=parley-source --import tsx test/chaos/failover.ts [seed] [writers] [seconds]
 *        [--rate 12] [--conversations 2] [--kill owner|other|none|0|1|2] [--kill-at s] [--drain 60]
 *        [--sample 1000] [--lease-ms 1500] [--quiet]
 *
 * Prints per writer over time: messages sent, acknowledged (status sent or
 * later), backlog, SDK connection status, the relay HAProxy put it on; per
 * relay: documents owned and what became of the changes it forwarded (its
 * /metrics) with its CPU; the machine's CPU. Then rates per phase and a
 * check of the result (no failed message, no duplicate, contiguous numbers).
 *
 * Deterministic in what it does (the seed picks every message's moment and
 * conversation); timing on a shared machine is not. Ports 47000–47003, a
 * PostgreSQL schema and a Redis prefix of its own; every process it starts is
 * killed on the way out, Ctrl-C included.
 */
import "fake-indexeddb/auto"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import type { IncomingMessage } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { listMessages } from "@parley/shared"
import WebSocket from "ws"
import * as Y from "yjs"
import { type ChatClient, type Conversation, createChatClient } from "../../client/src/index.js"
import {
  deleteRedisKeys,
  haproxyConfig,
  haproxyPath,
  REDIS_URL,
  redisUnreachable,
} from "../../relay/test/helpers/cluster.js"
import { postgresUnreachable, scratchSchema } from "../../relay/test/helpers/postgres.js"
import {
  type RelayProcess,
  signToken,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"

// ---- arguments

const positional = process.argv
  .slice(2)
  .filter((a, i, all) => !a.startsWith("--") && !all[i - 1]?.startsWith("--"))
const flag = (name: string, fallback: string): string => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback
}
const SEED = Number(positional[0] ?? 1)
const WRITERS = Number(positional[1] ?? 5)
const SECONDS = Number(positional[2] ?? 60)
const RATE = Number(flag("rate", "12"))
const CONVERSATIONS = Number(flag("conversations", "2"))
const KILL = flag("kill", "owner")
const KILL_AT = Number(flag("kill-at", String(Math.round(SECONDS / 3))))
const DRAIN = Number(flag("drain", "60"))
const SAMPLE_MS = Number(flag("sample", "1000"))
const LEASE_MS = flag("lease-ms", "1500")
const QUIET = process.argv.includes("--quiet")
const RELAYS = 3
const PORT_BASE = 47000

/** A seeded generator (LCG): the same seed sends the same messages at the same planned moments. */
function random(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}
const rand = random(SEED)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const startedAt = performance.now()
const elapsed = () => (performance.now() - startedAt) / 1000

// ---- CPU accounting (Linux /proc)

const TICK_MS = 10
function processTicks(pid: number | undefined): number {
  if (pid === undefined) return 0
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return Number(fields[11]) + Number(fields[12])
  } catch {
    return 0
  }
}
/** Busy and total jiffies of the whole machine. */
function machineTicks(): { busy: number; total: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.split(/\s+/).slice(1).map(Number)
  const total = cpu.reduce((a, b) => a + b, 0)
  const idle = cpu[3]! + cpu[4]!
  return { busy: total - idle, total }
}
/** Ticks of every process whose command line names `name` (PostgreSQL backends, Redis). */
function ticksOf(name: string): number {
  let ticks = 0
  for (const entry of readdirSafe("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const comm = readFileSync(`/proc/${entry}/comm`, "utf8").trim()
      if (comm.startsWith(name)) ticks += processTicks(Number(entry))
    } catch {}
  }
  return ticks
}
function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir)
  } catch {
    return []
  }
}

// ---- services

const missing =
  (await postgresUnreachable()) ??
  (await redisUnreachable()) ??
  (haproxyPath() ? undefined : "haproxy is not installed (apt-get install haproxy)")
if (missing) {
  console.error(`test/chaos/failover.ts needs PostgreSQL, Redis and HAProxy: ${missing}`)
  process.exit(1)
}

const cleanup: (() => unknown)[] = []
let cleaning: Promise<void> | undefined
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const step of cleanup.splice(0).reverse()) {
      try {
        await step()
      } catch (error) {
        console.error("cleanup:", error)
      }
    }
  })()
  return cleaning
}
for (const signal of ["SIGINT", "SIGTERM"] as const)
  process.on(signal, () => {
    void cleanUp().finally(() => process.exit(130))
  })

async function run(): Promise<number> {
  const schema = await scratchSchema()
  cleanup.push(async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        await schema.drop()
        return
      } catch (error) {
        if (attempt >= 5) throw error
        await sleep(300)
      }
    }
  })
  const prefix = `parley-chaos:${SEED}:${Date.now().toString(36)}:`
  cleanup.push(() => deleteRedisKeys(prefix))
  const secret = `chaos-${SEED}-${Math.random().toString(36).slice(2)}`
  const relayPorts = Array.from({ length: RELAYS }, (_, i) => PORT_BASE + 1 + i)
  const relays: (RelayProcess | undefined)[] = []
  /** Every log line of every relay, the killed one's too. */
  const relayLines: string[][] = Array.from({ length: RELAYS }, () => [])
  cleanup.push(() => stopRelayProcesses())
  const startRelay = async (i: number) => {
    const relay = await startRelayProcess({
      secret,
      args: [
        "--port",
        String(relayPorts[i]),
        "--storage",
        "postgres",
        "--database-url",
        schema.url,
        "--redis-url",
        REDIS_URL,
        "--redis-prefix",
        prefix,
        "--lease-ms",
        LEASE_MS,
      ],
    })
    relays[i] = relay
    relayLines[i] = relay.lines
    return relay
  }
  await startRelay(0)
  await Promise.all([1, 2].map(startRelay))

  // HAProxy as the shipped configuration has it (by user), naming the relay it chose in the upgrade's answer.
  const lbPort = PORT_BASE
  const lbDir = mkdtempSync(join(tmpdir(), "parley-chaos-haproxy-"))
  const lbConfig = join(lbDir, "haproxy.cfg")
  writeFileSync(
    lbConfig,
    haproxyConfig(lbPort, relayPorts, "user").replace(
      "backend relays\n",
      "backend relays\n  http-response set-header X-Relay %[srv_name]\n",
    ),
  )
  const haproxy: ChildProcess = spawn(haproxyPath()!, ["-db", "-f", lbConfig], {
    stdio: ["ignore", "ignore", "pipe"],
  })
  const haproxyExited = new Promise<void>((resolve) => haproxy.once("exit", () => resolve()))
  cleanup.push(async () => {
    if (haproxy.exitCode === null) haproxy.kill("SIGKILL")
    await haproxyExited
    rmSync(lbDir, { recursive: true, force: true })
  })
  for (const deadline = Date.now() + 10_000; ; ) {
    const up = await fetch(`http://127.0.0.1:${lbPort}/readyz`).then(
      (r) => r.ok,
      () => false,
    )
    if (up) break
    if (Date.now() > deadline) throw new Error("haproxy did not answer")
    await sleep(100)
  }
  // Every relay up in HAProxy's eyes (checked every 200 ms, up after one success).
  await sleep(600)

  // ---- writers

  /** A `ws` socket that records which relay HAProxy chose and how much it sent. */
  interface SocketTally {
    relay: string
    framesOut: number
    bytesOut: number
    opened: number
  }

  function taggedWebSocket(tally: SocketTally): unknown {
    return class extends WebSocket {
      constructor(url: string | URL, protocols?: string | string[]) {
        super(url, protocols)
        tally.opened++
        tally.relay = "?"
        this.on("upgrade", (response: IncomingMessage) => {
          tally.relay = String(response.headers["x-relay"] ?? "?")
        })
      }
      override send(data: unknown, ...rest: unknown[]): void {
        tally.framesOut++
        tally.bytesOut += (data as { byteLength?: number; length?: number }).byteLength ?? 0
        ;(super.send as (...args: unknown[]) => void)(data, ...rest)
      }
    }
  }

  interface Writer {
    readonly index: number
    readonly user: string
    readonly client: ChatClient
    readonly chats: Conversation[]
    readonly tally: SocketTally
    /** Ids sent and not yet acknowledged, with their conversation. */
    readonly pending: Map<string, Conversation>
    sent: number
    acked: number
    failed: number
    errors: Map<string, number>
    /** Refusals the relay sent this writer's connections, by code/rule. */
    refused: Map<string, number>
    resyncs: number
    /** Acknowledgement latencies (ms) of messages sent, by send time. */
    readonly sentAt: Map<string, number>
    readonly latencies: { at: number; ms: number }[]
  }

  const users = Array.from({ length: WRITERS }, (_, i) => `writer${i}`)
  const lbUrl = `ws://127.0.0.1:${lbPort}`
  const SAVED = new Set(["sent", "delivered", "read"])

  async function makeWriter(index: number): Promise<Writer> {
    const user = users[index]!
    const tally: SocketTally = { relay: "-", framesOut: 0, bytesOut: 0, opened: 0 }
    const client = await createChatClient({
      url: lbUrl,
      user,
      token: () => signToken(secret, user),
      storage: "indexeddb",
      WebSocket: taggedWebSocket(tally) as never,
    })
    cleanup.push(() => client.destroy())
    return {
      index,
      user,
      client,
      chats: [],
      tally,
      pending: new Map(),
      sent: 0,
      acked: 0,
      failed: 0,
      errors: new Map(),
      refused: new Map(),
      resyncs: 0,
      sentAt: new Map(),
      latencies: [],
    }
  }

  function follow(writer: Writer, chat: Conversation): void {
    chat.on("status", ({ messageId, status }) => {
      if (!writer.pending.has(messageId)) return
      if (SAVED.has(status)) {
        writer.pending.delete(messageId)
        writer.acked++
        const at = writer.sentAt.get(messageId)
        if (at !== undefined) writer.latencies.push({ at: elapsed(), ms: performance.now() - at })
        writer.sentAt.delete(messageId)
      } else if (status === "failed") {
        writer.pending.delete(messageId)
        writer.failed++
      }
    })
    chat.on("error", ({ error }) => {
      const key = `${error.code}${error.rule ? `/${error.rule}` : ""}`
      writer.errors.set(key, (writer.errors.get(key) ?? 0) + 1)
    })
    chat.on("resynced", () => {
      writer.resyncs++
    })
    // Retryable refusals (kept pending, sent again later) reach no conversation event: counted here.
    chat.connection.on("refused", ({ error }) => {
      const key = `${error.code}${error.rule ? `/${error.rule}` : ""}`
      writer.refused.set(key, (writer.refused.get(key) ?? 0) + 1)
    })
  }

  const writers = await Promise.all(users.map((_, i) => makeWriter(i)))
  const ids: string[] = []
  for (let c = 0; c < CONVERSATIONS; c++) {
    const chat = await writers[0]!.client.createConversation({
      participants: users.slice(1),
      title: `chaos ${SEED} #${c}`,
    })
    ids.push(chat.id)
    writers[0]!.chats.push(chat)
    follow(writers[0]!, chat)
  }
  // The others open the conversations once the relay saved their creation (before, it is "not found").
  for (const chat of writers[0]!.chats) {
    const saved = new Map<number, number>()
    const off = chat.connection.on("saved", ({ stateVector }) => {
      for (const [client, clock] of stateVector) saved.set(client, Math.max(clock, saved.get(client) ?? 0))
    })
    const own = chat.doc.clientID
    // (An acknowledgement that came before this listener is not seen: then 10 s, and on.)
    for (const end = Date.now() + 10_000; Date.now() < end; ) {
      if ((saved.get(own) ?? 0) >= Y.getState(chat.doc.store, own)) break
      await sleep(20)
    }
    off()
  }
  for (const writer of writers.slice(1))
    for (const id of ids) {
      const chat = await writer.client.conversation(id).ready()
      writer.chats.push(chat)
      follow(writer, chat)
    }

  // ---- metrics

  interface RelaySample {
    owned: number
    forwarded: Record<string, number>
    answered: Record<string, number>
    takeovers: number
    leasesLost: number
    connections: number
    routeCount: number
    routeSum: number
  }

  async function relayMetrics(relay: RelayProcess | undefined): Promise<RelaySample | undefined> {
    if (!relay) return undefined
    let text: string
    try {
      const response = await fetch(`${relay.httpUrl}/metrics`, { signal: AbortSignal.timeout(2000) })
      text = await response.text()
    } catch {
      return undefined
    }
    const sample: RelaySample = {
      owned: 0,
      forwarded: {},
      answered: {},
      takeovers: 0,
      leasesLost: 0,
      connections: 0,
      routeCount: 0,
      routeSum: 0,
    }
    for (const line of text.split("\n")) {
      if (line.startsWith("#") || line === "") continue
      const value = Number(line.split(" ").at(-1))
      const outcome = /outcome="([^"]+)"/.exec(line)?.[1]
      if (line.startsWith("parley_cluster_documents_owned ")) sample.owned = value
      else if (line.startsWith("parley_cluster_forwarded_total{") && outcome)
        sample.forwarded[outcome] = value
      else if (line.startsWith("parley_cluster_forwards_answered_total{") && outcome)
        sample.answered[outcome] = value
      else if (line.startsWith("parley_cluster_takeovers_total ")) sample.takeovers = value
      else if (line.startsWith("parley_cluster_leases_lost_total ")) sample.leasesLost = value
      else if (line.startsWith("parley_connections ")) sample.connections = value
      else if (line.startsWith("parley_cluster_route_seconds_count ")) sample.routeCount = value
      else if (line.startsWith("parley_cluster_route_seconds_sum ")) sample.routeSum = value
    }
    return sample
  }

  const countLog = (i: number, msg: string) =>
    relayLines[i]!.filter((l) => l.includes(`"msg":"${msg}`)).length
  const RETRIES = ["unanswered", "no-receiver", "not-owner", "unpublished"]

  /** The relay that last took `doc` over (by its log), or undefined. */
  function ownerOf(doc: string): number | undefined {
    let best: { i: number; time: number } | undefined
    for (let i = 0; i < RELAYS; i++) {
      if (!relays[i]) continue
      for (const line of relayLines[i]!) {
        if (!line.includes('"msg":"ordering the document"') || !line.includes(doc)) continue
        const time = Number(/"time":(\d+)/.exec(line)?.[1] ?? 0)
        if (!best || time > best.time) best = { i, time }
      }
    }
    return best?.i
  }

  // ---- the run

  console.log(
    `chaos failover: seed ${SEED}, ${WRITERS} writers × ${RATE} msg/s over ${CONVERSATIONS} conversations for ${SECONDS} s, ` +
      `kill ${KILL}${KILL === "none" ? "" : ` at ${KILL_AT} s`}, drain ${DRAIN} s; relays :${relayPorts.join(",:")}, HAProxy :${lbPort}`,
  )

  type Phase = "before" | "after-kill" | "drain"
  let phase: Phase = "before"
  let sending = true
  const runStart = elapsed()
  const t = () => elapsed() - runStart
  const phaseMarks: { phase: Phase; at: number; acked: number; sent: number; backlog: number }[] = []
  const totals = () => {
    const sent = writers.reduce((n, w) => n + w.sent, 0)
    const acked = writers.reduce((n, w) => n + w.acked, 0)
    return { sent, acked, backlog: writers.reduce((n, w) => n + w.pending.size, 0) }
  }
  const mark = (p: Phase) => {
    phase = p
    phaseMarks.push({ phase: p, at: t(), ...totals() })
  }
  mark("before")

  // The schedule: each writer's planned send moments, drawn from the seed before anything runs.
  const schedules = writers.map(() => {
    const moments: { at: number; conversation: number }[] = []
    for (let at = rand() * (1000 / RATE); at < SECONDS * 1000; at += (1000 / RATE) * (0.5 + rand())) {
      moments.push({ at, conversation: Math.floor(rand() * CONVERSATIONS) })
    }
    return moments
  })
  const loops = writers.map(async (writer, w) => {
    const begin = performance.now()
    for (const [n, { at, conversation }] of schedules[w]!.entries()) {
      const wait = begin + at - performance.now()
      if (wait > 0) await sleep(wait)
      if (!sending) return
      const chat = writer.chats[conversation]!
      const message = chat.send(`${writer.user} ${n}`)
      writer.sent++
      writer.pending.set(message.id, chat)
      writer.sentAt.set(message.id, performance.now())
    }
  })

  let killed: number | undefined
  const onRelay = (i: number) => writers.filter((w) => w.tally.relay === `relay${i}`).length
  const killer = (async () => {
    if (KILL === "none") return
    await sleep(KILL_AT * 1000)
    const owners = new Set(ids.map((id) => ownerOf(id)))
    // `other`: a relay with writers on it that orders none of the conversations (ordering stays put).
    const busiest = [0, 1, 2].filter((i) => !owners.has(i)).sort((a, b) => onRelay(b) - onRelay(a))[0]
    const victim = KILL === "owner" ? (ownerOf(ids[0]!) ?? 0) : KILL === "other" ? busiest! : Number(KILL)
    killed = victim
    mark("after-kill")
    console.log(
      `t=${t().toFixed(1)}s SIGKILL relay${victim} (${owners.has(victim) ? "it orders" : "it orders none of"} ` +
        `${ids.join(", ")}; ${onRelay(victim)} writers on it)`,
    )
    await relays[victim]!.kill()
    relays[victim] = undefined
  })()

  // Sampling.
  let lastMachine = machineTicks()
  const lastTicks = new Map<string, number>()
  const cpuShare = (key: string, ticks: number, seconds: number) => {
    const before = lastTicks.get(key) ?? ticks
    lastTicks.set(key, ticks)
    // A process set that lost members (PostgreSQL backends ending) can count backwards.
    return Math.max(0, ((ticks - before) * TICK_MS) / 10 / seconds)
  }
  /** The forwarded changes acknowledged since the last sample, and their mean time from queue to ack. */
  const lastRoute = new Map<number, { count: number; sum: number }>()
  const routeNow = (i: number, m: RelaySample) => {
    const before = lastRoute.get(i) ?? { count: 0, sum: 0 }
    lastRoute.set(i, { count: m.routeCount, sum: m.routeSum })
    const count = m.routeCount - before.count
    return count > 0 ? `${count} in ${((1000 * (m.routeSum - before.sum)) / count).toFixed(0)} ms` : "0"
  }
  let lastSampleAt = t()
  let lastAcked = 0
  const timeline: { at: number; acked: number; backlog: number; machine: number }[] = []
  const pad = (s: string | number, n: number) => String(s).padStart(n)

  async function sample(): Promise<void> {
    const now = t()
    const seconds = Math.max(0.001, now - lastSampleAt)
    lastSampleAt = now
    const machine = machineTicks()
    const machineBusy =
      (100 * (machine.busy - lastMachine.busy)) / Math.max(1, machine.total - lastMachine.total)
    lastMachine = machine
    const { sent, acked, backlog } = totals()
    const ackRate = (acked - lastAcked) / seconds
    lastAcked = acked
    timeline.push({ at: now, acked, backlog, machine: machineBusy })
    const metrics = await Promise.all(relays.map((r) => relayMetrics(r)))
    const relayCpu = relays.map((r, i) => cpuShare(`relay${i}`, processTicks(r?.child.pid), seconds))
    const selfCpu = cpuShare("self", processTicks(process.pid), seconds)
    const pgCpu = cpuShare("postgres", ticksOf("postgres"), seconds)
    const redisCpu = cpuShare("redis", ticksOf("redis-server"), seconds)
    const lbCpu = cpuShare("haproxy", processTicks(haproxy.pid), seconds)
    if (QUIET && Math.round(now) % 5 !== 0) return
    console.log(
      `t=${now.toFixed(1)}s ${phase.padEnd(10)} sent ${sent} acked ${acked} (+${ackRate.toFixed(0)}/s) backlog ${backlog} | ` +
        `CPU machine ${machineBusy.toFixed(0)}% relays ${relayCpu.map((c) => c.toFixed(0)).join("/")}% ` +
        `writers ${selfCpu.toFixed(0)}% pg ${pgCpu.toFixed(0)}% redis ${redisCpu.toFixed(0)}% haproxy ${lbCpu.toFixed(0)}%`,
    )
    for (const w of writers) {
      const status = w.client.status
      const chatStatus = w.chats.map((c) => c.connection.status[0]).join("")
      console.log(
        `   ${w.user.padEnd(8)} sent ${pad(w.sent, 5)} acked ${pad(w.acked, 5)} backlog ${pad(w.pending.size, 4)} ` +
          `${status.padEnd(10)} [${chatStatus}] on ${w.tally.relay.padEnd(6)} sockets ${w.tally.opened} ` +
          `out ${w.tally.framesOut} frames ${(w.tally.bytesOut / 1024).toFixed(0)} KiB` +
          (w.failed ? ` FAILED ${w.failed}` : "") +
          (w.resyncs ? ` resyncs ${w.resyncs}` : "") +
          (w.errors.size ? ` errors ${[...w.errors].map(([k, v]) => `${k}×${v}`).join(",")}` : "") +
          (w.refused.size ? ` refused ${[...w.refused].map(([k, v]) => `${k}×${v}`).join(",")}` : ""),
      )
    }
    for (let i = 0; i < RELAYS; i++) {
      const m = metrics[i]
      if (!m) {
        console.log(`   relay${i}   ${relays[i] ? "no /metrics answer" : "dead"}`)
        continue
      }
      const retried = RETRIES.map((k) => m.forwarded[k] ?? 0)
      console.log(
        `   relay${i}   owns ${m.owned} conns ${m.connections} fwd stored ${m.forwarded.stored ?? 0} refused ${m.forwarded.refused ?? 0} ` +
          `retried ${retried.reduce((a, b) => a + b, 0)} (${RETRIES.map((k, j) => `${k} ${retried[j]}`).join(", ")}) ` +
          `answered ${m.answered.stored ?? 0}/${m.answered.refused ?? 0}/${m.answered["not-owner"] ?? 0} ` +
          `forwarded acks ${routeNow(i, m)} ` +
          `takeovers ${m.takeovers} lost ${m.leasesLost} refusals logged ${countLog(i, "refused: ")} CPU ${relayCpu[i]!.toFixed(0)}%`,
      )
    }
  }
  const sampler = setInterval(() => void sample(), SAMPLE_MS)
  cleanup.push(() => clearInterval(sampler))

  await Promise.all([...loops, sleep(SECONDS * 1000)])
  sending = false
  await killer
  mark("drain")
  console.log(`t=${t().toFixed(1)}s writers stopped; draining`)
  const drainDeadline = performance.now() + DRAIN * 1000
  while (totals().backlog > 0 && performance.now() < drainDeadline) await sleep(100)
  const drainedAt = t()
  clearInterval(sampler)
  await sample()

  // ---- summary

  const end = { phase: "end" as const, at: drainedAt, ...totals() }
  console.log("\nphases (ack rate = acknowledgements per second in the phase; offered = sends per second):")
  const marks = [...phaseMarks, end]
  for (let i = 0; i < marks.length - 1; i++) {
    const a = marks[i]!
    const b = marks[i + 1]!
    const span = b.at - a.at
    console.log(
      `  ${a.phase.padEnd(10)} ${a.at.toFixed(1)}–${b.at.toFixed(1)} s: offered ${((b.sent - a.sent) / span).toFixed(1)}/s, ` +
        `acked ${((b.acked - a.acked) / span).toFixed(1)}/s, backlog ${a.backlog} → ${b.backlog}`,
    )
  }
  const latencies = writers.flatMap((w) => w.latencies)
  const pct = (values: number[], p: number) => {
    const sorted = [...values].sort((x, y) => x - y)
    return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN
  }
  for (const p of phaseMarks) {
    const next = marks[marks.indexOf(p) + 1]!
    const inPhase = latencies
      .filter((l) => l.at >= p.at + runStart && l.at < next.at + runStart)
      .map((l) => l.ms)
    if (inPhase.length > 0)
      console.log(
        `  ack latency ${p.phase.padEnd(10)} p50 ${pct(inPhase, 0.5).toFixed(0)} ms p90 ${pct(inPhase, 0.9).toFixed(0)} ms ` +
          `max ${Math.max(...inPhase).toFixed(0)} ms (${inPhase.length} acks); by writer p50/p90 ` +
          writers
            .map((w) => {
              const own = w.latencies
                .filter((l) => l.at >= p.at + runStart && l.at < next.at + runStart)
                .map((l) => l.ms)
              return `${pct(own, 0.5).toFixed(0)}/${pct(own, 0.9).toFixed(0)}`
            })
            .join(" "),
      )
  }
  const busy = (from: number, to: number) => {
    const rows = timeline.filter((r) => r.at > from && r.at <= to)
    return rows.length ? rows.reduce((n, r) => n + r.machine, 0) / rows.length : Number.NaN
  }
  for (let i = 0; i < marks.length - 1; i++)
    console.log(
      `  machine CPU ${marks[i]!.phase.padEnd(10)} ${busy(marks[i]!.at, marks[i + 1]!.at).toFixed(0)}% busy`,
    )
  for (let i = 0; i < RELAYS; i++)
    console.log(
      `  relay${i}${killed === i ? " (killed)" : ""}: ${countLog(i, "ordering the document")} takeovers, ${countLog(i, "lost the document's lease")} lease losses, ` +
        `${countLog(i, "a forwarded change got no answer in time")} forward timeouts, ${countLog(i, "the event loop did not answer in time")} renewal pauses, ` +
        `${countLog(i, "refused: ")} refusals logged`,
    )

  for (let i = 0; i < RELAYS; i++) {
    const reasons = new Map<string, number>()
    for (const line of relayLines[i]!) {
      const found = /"code":"([A-Z_]+)".*"msg":"refused: ([^"]*)"/.exec(line)
      if (found) reasons.set(`${found[1]} ${found[2]}`, (reasons.get(`${found[1]} ${found[2]}`) ?? 0) + 1)
    }
    for (const [reason, n] of reasons) console.log(`  relay${i} refused ×${n}: ${reason}`)
  }
  // The result: every message acknowledged once, numbered without gap, per conversation.
  let problems = 0
  const failed = writers.reduce((n, w) => n + w.failed, 0)
  const resyncs = writers.reduce((n, w) => n + w.resyncs, 0)
  if (failed > 0 || resyncs > 0) {
    problems++
    console.log(`  PROBLEM: ${failed} failed messages, ${resyncs} resyncs (rebuilds)`)
  }
  const backlogLeft = totals().backlog
  if (backlogLeft > 0) {
    problems++
    console.log(`  PROBLEM: ${backlogLeft} messages not acknowledged ${DRAIN} s after the writers stopped`)
  }
  for (const chat of writers[0]!.chats) {
    const list = listMessages(chat.doc, { last: 1_000_000 })
    const seqs = list.map((m) => m.seq).filter((s): s is number => s !== undefined)
    const unique = new Set(list.map((m) => m.id)).size
    const gaps = seqs.slice(1).filter((s, i) => s !== seqs[i]! + 1).length
    console.log(
      `  ${chat.id}: ${list.length} messages in writer0's live document, ${unique} distinct, seq ${seqs[0]}…${seqs.at(-1)}, ${gaps} gaps, ` +
        `${list.length - seqs.length} unnumbered`,
    )
    if (unique !== list.length || gaps > 0) problems++
  }
  console.log(problems === 0 ? "result: OK" : `result: ${problems} problem(s)`)
  return problems === 0 ? 0 : 1
}

// An SDK background failure is reported by its events; it must not end the run before the cleanup.
process.on("unhandledRejection", (error) => console.error("unhandled rejection:", error))
let code = 2
try {
  code = await run()
} catch (error) {
  console.error(error)
} finally {
  await cleanUp()
}
process.exit(code)
