/**
 * Large groups (issue #17.3): one conversation of M members (default 1,000),
 * C of them (default 100) with their inbox open over a WebSocket, messages
 * sent one after another through the relay's update path on SQLite. Run three
 * ways in the same invocation:
 *
 * - `no inbox`: the relay without inbox upkeep (the floor);
 * - `derived`: this design (connected members' entries derived in memory per
 *   change, everyone else's when they connect);
 * - `per-member`: the design before it, emulated: every member's entry
 *   recomputed and stored on every message.
 *
 * Prints relay CPU per message (this process; the inbox sockets are in a
 * child process, `groups-inboxes.ts`, so receiving is not counted), durable writes per message, and how long until every connected
 * inbox received its update (p50/p95). Then a presence run: P stock
 * y-websocket providers (default 300) in one room announce themselves;
 * prints closes, frames per socket and relay CPU. Asserts nothing.
 *
 *   npm run bench:groups [-- --members 1000 --connected 100 --messages 200 --presence 300 --presence-hold 0 --warm-up 0 --mux]
 */
import { type ChildProcess, fork, type Serializable } from "node:child_process"
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import { createRequire } from "node:module"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { type RelayExtension, type RunningCore, type RunningRelay, startRelay } from "@parley/relay"
import {
  addParticipants,
  type ConversationId,
  createConversation,
  inboxDocumentName,
  inboxEntryFor,
  listParticipants,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  sendMessage,
  TOKEN_PARAM,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import Database from "better-sqlite3"
import { WebSocket, WebSocketServer } from "ws"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"

process.setMaxListeners(0)

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const MEMBERS = arg("members", 1000)
const CONNECTED = arg("connected", 100)
const MESSAGES = arg("messages", 200)
const PER_MEMBER_MESSAGES = arg("per-member-messages", 20)
const PRESENCE = arg("presence", 300)
/**
 * `--presence-hold S`: after the room converged, keep it open S seconds (stock
 * providers renew their state every 15 s and re-send every state they
 * receive) and count the relay's closes and the frames one member receives
 * meanwhile: a room that converges but closes its members on renewal is not
 * a room they stay in.
 */
const PRESENCE_HOLD_S = arg("presence-hold", 0)
/**
 * `--warm-up N`: messages sent (each awaited like the measured ones) before
 * the measured loop of each inbox run, so that its figure is the relay's
 * steady state: in a 200-message run V8 is still compiling the per-message
 * path on its helper threads, which the process's CPU counts.
 */
const WARM_UP = arg("warm-up", 0)

/**
 * `--mux`: each connected member opens one multiplexed socket with two
 * channels, their inbox and the conversation (the SDK's default), instead of
 * a socket to their inbox alone; a message then sends every connected member
 * the conversation's update and their inbox's entry.
 */
const MUX = process.argv.includes("--mux")

/** `--profile DIR`: a CPU profile of each run's message loop (not its set-up) is written there. */
const PROFILE = (() => {
  const i = process.argv.indexOf("--profile")
  return i > 0 ? process.argv[i + 1] : undefined
})()

/** Starts the V8 profiler; the returned function stops it and writes `<name>.cpuprofile`. */
async function startProfile(): Promise<(name: string) => Promise<void>> {
  const { Session } = await import("node:inspector/promises")
  const session = new Session()
  session.connect()
  await session.post("Profiler.enable")
  await session.post("Profiler.start")
  return async (name) => {
    const { profile } = await session.post("Profiler.stop")
    mkdirSync(PROFILE!, { recursive: true })
    writeFileSync(join(PROFILE!, `${name}.cpuprofile`), JSON.stringify(profile))
    session.disconnect()
  }
}

const percentile = (sorted: readonly number[], p: number) =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!
const round = (n: number, digits = 2) => +n.toFixed(digits)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The design before derived inboxes, emulated: every member's entry recomputed and stored per change. */
function perMemberInboxes(): RelayExtension {
  let core: RunningCore | undefined
  let chain = Promise.resolve()
  return {
    name: "per-member-inboxes",
    start(running) {
      core = running
    },
    afterSaved({ name, doc, events }) {
      if (!name.startsWith("g~") || events.length === 0 || !core) return
      const entries = listParticipants(doc).map((p) => [p.user, inboxEntryFor(doc, p.user)] as const)
      const running = core
      chain = chain.then(async () => {
        await Promise.all(
          entries.map(([user, entry]) =>
            running.write(inboxDocumentName(user), { kind: "relay" }, (inbox) =>
              writeInboxEntry(inbox, name as ConversationId, entry),
            ),
          ),
        )
      })
    },
  }
}

/**
 * What the SQLite database holds of hook events now: the event log's and the
 * outbox's payloads and the member lists they reference (when stored apart),
 * in bytes of JSON text.
 */
function storedEventBytes(dataDir: string): number {
  const db = new Database(join(dataDir, "parley.sqlite"), { readonly: true })
  try {
    const sum = (sql: string) => Number(db.prepare(sql).pluck().get() ?? 0)
    const hasLists = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'member_lists'").get() !== undefined
    return (
      sum("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM event_log") +
      sum("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM hook_events") +
      (hasLists ? sum("SELECT COALESCE(SUM(LENGTH(json)), 0) FROM member_lists") : 0)
    )
  } finally {
    db.close()
  }
}

/** Bytes this process wrote through `write` calls (files and sockets), from /proc/self/io. */
function writtenChars(): number {
  const match = /wchar: (\d+)/.exec(readFileSync("/proc/self/io", "utf8"))
  return match ? Number(match[1]) : Number.NaN
}

/** System calls that wrote (`write`, `writev`, `pwrite`...: files and sockets), from /proc/self/io. */
function writeCalls(): number {
  const match = /syscw: (\d+)/.exec(readFileSync("/proc/self/io", "utf8"))
  return match ? Number(match[1]) : Number.NaN
}

/**
 * The main thread's CPU time (ns, from the scheduler: every thread of the
 * process is counted by `process.cpuUsage`, V8's compiler and GC helpers
 * included) and how often it was preempted (involuntary context switches),
 * from /proc; undefined where there is none (not Linux).
 */
function mainThread(): { cpuNs: number; preempted: number } | undefined {
  try {
    const task = `/proc/self/task/${process.pid}`
    const cpuNs = Number(readFileSync(`${task}/schedstat`, "utf8").split(" ")[0])
    const preempted = Number(
      /nonvoluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync(`${task}/status`, "utf8"))?.[1],
    )
    return Number.isFinite(cpuNs) && Number.isFinite(preempted) ? { cpuNs, preempted } : undefined
  } catch {
    return undefined
  }
}

/** What {@link mainThread} counted since `start`: CPU in ms and preemptions, per `per`. */
function mainThreadSince(start: ReturnType<typeof mainThread>, per: number) {
  const end = mainThread()
  if (!start || !end) return { mainThreadMs: Number.NaN, preempted: Number.NaN }
  return {
    mainThreadMs: round((end.cpuNs - start.cpuNs) / 1e6 / per, 3),
    preempted: round((end.preempted - start.preempted) / per, 1),
  }
}

async function storedUpdates(relay: RunningRelay): Promise<number> {
  const metric = (await relay.metrics.registry.getMetricsAsJSON()).find(
    (m) => m.name === "parley_updates_total",
  )
  return (metric?.values ?? []).reduce((sum, v) => sum + v.value, 0)
}

/**
 * The connected members' raw inbox sockets, in a child process
 * (`groups-inboxes.ts`): receiving their frames is the members' work, not the
 * relay's, so it stays out of this process's CPU figure.
 */
class InboxSockets {
  private readonly child: ChildProcess
  private readonly replies: ((message: { type: string; at?: (number | null)[] }) => void)[] = []

  constructor() {
    this.child = fork(fileURLToPath(new URL("./groups-inboxes.ts", import.meta.url)), {
      execArgv: ["--conditions=parley-source", "--import", "tsx"],
    })
    this.child.on("message", (message: { type: string }) => this.replies.shift()?.(message))
  }

  private ask(command: unknown): Promise<{ type: string; at?: (number | null)[] }> {
    return new Promise((resolve) => {
      this.replies.push(resolve)
      this.child.send(command as Serializable)
    })
  }

  /**
   * Each of `users` opens their inbox: on a socket of its own, or with
   * `conversation`, on a multiplexed socket with that conversation as a
   * second channel (as the SDK opens what a user looks at).
   */
  async open(relay: RunningRelay, users: readonly UserId[], conversation?: ConversationId): Promise<void> {
    const tokens = await Promise.all(users.map((user) => relay.auth.mintDev(user, {})))
    if (!conversation) {
      await this.openUrls(
        users.map((user, i) => `${relay.url}/${inboxDocumentName(user)}?${TOKEN_PARAM}=${tokens[i]}`),
      )
      return
    }
    await this.openUrls(
      tokens.map((token) => `${relay.url}/?${MUX_PARAM}=${MUX_PROTOCOL_VERSION}&${TOKEN_PARAM}=${token}`),
      users.map((user) => [inboxDocumentName(user), conversation]),
    )
  }

  async openUrls(urls: readonly string[], channels?: readonly string[][]): Promise<void> {
    await this.ask({ type: "open", urls, ...(channels ? { channels } : {}) })
  }

  /** Resolves once the child has noted every socket's frame count; `current` then resolves with each one's next frame time. */
  async arm(): Promise<{ current: Promise<(number | null)[]> }> {
    let settle!: (at: (number | null)[]) => void
    const current = new Promise<(number | null)[]>((resolve) => {
      settle = resolve
    })
    const armed = this.ask({ type: "arm" })
    this.replies.push((message) => settle(message.at ?? []))
    await armed
    return { current }
  }

  close(): void {
    this.child.send({ type: "close" })
  }
}

type Mode = "no inbox" | "derived" | "per-member"

async function inboxRun(mode: Mode, messages: number) {
  const dataDir = mkdtempSync(join(tmpdir(), "parley-bench-groups-"))
  const relay = await startRelay({
    port: 0,
    dataDir,
    inbox: mode === "derived",
    log: "silent",
    dev: true,
    // Idle inboxes are not unloaded during the run: their unloading is not the messages' cost.
    limits: { userParticipantsPerMinute: 0, idleUnloadMs: 600_000 },
    ...(mode === "per-member" ? { extensions: [perMemberInboxes()] } : {}),
  })
  const users = Array.from({ length: MEMBERS }, (_, i) => `member${i}` as UserId)
  const id = "g~groupsbench" as ConversationId
  await relay.core.write(id, { kind: "user", user: users[0]! }, (doc) => {
    createConversation(doc, users[0]!, { kind: "group", id, participants: [], title: "Everyone" })
    addParticipants(doc, users[0]!, users.slice(1))
  })
  await relay.hooks?.idle()
  // Members 1..C have their inbox open; member 0 writes (an author's own inbox is not what is measured).
  const sockets = new InboxSockets()
  await sockets.open(relay, users.slice(1, CONNECTED + 1), MUX ? id : undefined)
  await sleep(500)
  await relay.hooks?.idle()
  for (let i = 0; i < (mode === "per-member" ? 0 : WARM_UP); i++) {
    const armed = mode === "no inbox" ? undefined : await sockets.arm()
    await relay.core.write(id, { kind: "user", user: users[0]! }, (doc) => {
      sendMessage(doc, users[0]!, { body: `warm-up message ${i} to everyone` })
    })
    await armed?.current
  }
  await relay.hooks?.idle()
  const updatesBefore = await storedUpdates(relay)
  const bytesBefore = storedEventBytes(dataDir)
  const wcharBefore = writtenChars()
  const syscwBefore = writeCalls()
  const current: number[] = []
  let late = 0
  const profile = PROFILE ? await startProfile() : undefined
  const cpuStart = process.cpuUsage()
  const mainStart = mainThread()
  for (let i = 0; i < messages; i++) {
    const armed = mode === "no inbox" ? undefined : await sockets.arm()
    const t0 = performance.timeOrigin + performance.now()
    await relay.core.write(id, { kind: "user", user: users[0]! }, (doc) => {
      sendMessage(doc, users[0]!, { body: `message ${i} to everyone` })
    })
    if (!armed) continue
    for (const at of await armed.current) {
      if (at === null) late++
      else current.push(at - t0)
    }
  }
  await relay.hooks?.idle()
  const cpu = process.cpuUsage(cpuStart)
  const main = mainThreadSince(mainStart, messages)
  await profile?.(`groups-${mode.replace(" ", "-")}`)
  const updates = (await storedUpdates(relay)) - updatesBefore
  const wchar = writtenChars() - wcharBefore
  const syscw = writeCalls() - syscwBefore
  const eventBytes = storedEventBytes(dataDir) - bytesBefore
  sockets.close()
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
  current.sort((a, b) => a - b)
  return {
    design: mode,
    members: MEMBERS,
    connected: CONNECTED,
    messages,
    cpuMsPerMessage: round((cpu.user + cpu.system) / 1000 / messages, 3),
    systemMsPerMessage: round(cpu.system / 1000 / messages, 3),
    mainThreadMsPerMessage: main.mainThreadMs,
    preemptedPerMessage: main.preempted,
    durableWritesPerMessage: round(updates / messages, 1),
    hookEventKBStoredPerMessage: round(eventBytes / 1024 / messages, 2),
    KBWrittenPerMessage: round(wchar / 1024 / messages, 1),
    writeCallsPerMessage: round(syscw / messages, 1),
    inboxCurrentP50Ms: round(percentile(current, 0.5)),
    inboxCurrentP95Ms: round(percentile(current, 0.95)),
    inboxesLate: late,
  }
}

/** Bytes of the frame the socket-floor runs send: about one inbox update (entry with preview) and its sync header. */
const FLOOR_FRAME_BYTES = 400

/**
 * The cost of the socket writes alone, in the same harness as {@link inboxRun}
 * (the same receiving child process, one message at a time, each awaited by
 * every socket): a server holding nothing but C sockets sends each one frame
 * per message. `ws`: a bare `ws` server calling `send` on each socket (what
 * any Node relay on `ws` does at least per recipient). `y-websocket`: the
 * y-websocket 2 server (`setupWSConnection`) with C connections to one room,
 * one message applied to the room's document per round (its broadcast:
 * encoding the update once, one `send` per connection). Undefined when the
 * y-websocket 2 server is not installed (`npm run bench` installs it).
 */
async function socketFloorRun(kind: "ws" | "ws-raw" | "ws-raw-busy" | "y-websocket", messages: number) {
  const server = createServer()
  const wss = new WebSocketServer({ server, perMessageDeflate: false })
  let broadcast: (i: number) => void
  let frameBytes = FLOOR_FRAME_BYTES
  let closeRoom = () => {}
  if (kind === "ws") {
    const frame = new Uint8Array(FLOOR_FRAME_BYTES).fill(7)
    broadcast = () => {
      for (const client of wss.clients) client.send(frame)
    }
  } else if (kind === "ws-raw" || kind === "ws-raw-busy") {
    // The WebSocket frame (binary, final, unmasked, 16-bit length) built once, one write per socket.
    const frame = Buffer.alloc(4 + FLOOR_FRAME_BYTES, 7)
    frame[0] = 0x82
    frame[1] = 126
    frame.writeUInt16BE(FLOOR_FRAME_BYTES, 2)
    broadcast = () => {
      for (const client of wss.clients)
        (client as unknown as { _socket: { write(b: Uint8Array): void } })._socket.write(frame)
    }
  } else {
    const utilsPath = fileURLToPath(
      new URL("./node_modules/y-websocket-server-v2/bin/utils.cjs", import.meta.url),
    )
    if (!existsSync(utilsPath)) return undefined
    const require = createRequire(utilsPath)
    const utils = require("./utils.cjs") as {
      setupWSConnection: (conn: WebSocket, req: unknown, options: { docName: string; gc: boolean }) => void
      getYDoc: (name: string) => {
        getArray: (name: string) => { push: (items: unknown[]) => void }
        on: (event: "update", listener: (update: Uint8Array) => void) => void
      }
      docs: Map<string, { destroy: () => void; awareness: { destroy: () => void } }>
    }
    wss.on("connection", (conn, req) => utils.setupWSConnection(conn, req, { docName: "room", gc: true }))
    const doc = utils.getYDoc("room")
    const messagesArray = doc.getArray("messages")
    broadcast = (i) =>
      messagesArray.push([
        { id: `m${i}`, author: "member0", body: `message ${i} to everyone`, at: Date.now() },
      ])
    // The room's frame: y-protocols' sync header (type, subtype, a one- or two-byte length) and the update.
    doc.on("update", (update) => {
      frameBytes = 2 + (update.length > 127 ? 2 : 1) + update.length
    })
    // The room's awareness timer would keep the process alive.
    closeRoom = () => {
      const room = utils.docs.get("room")
      room?.awareness.destroy()
      room?.destroy()
      utils.docs.delete("room")
    }
  }
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  const sockets = new InboxSockets()
  await sockets.openUrls(Array.from({ length: CONNECTED }, () => `ws://127.0.0.1:${port}/room`))
  await sleep(300)
  const cpuStart = process.cpuUsage()
  let busyMicros = 0
  // The writes alone: the main thread's CPU and preemptions from just before to just after them.
  let writesNs = 0
  let writesPreempted = 0
  for (let i = 0; i < messages; i++) {
    const armed = await sockets.arm()
    if (kind === "ws-raw-busy") busyMicros += runFor(FLOOR_BUSY_MS)
    const before = mainThread()
    broadcast(i)
    const after = mainThread()
    if (before && after) {
      writesNs += after.cpuNs - before.cpuNs
      writesPreempted += after.preempted - before.preempted
    }
    await armed.current
  }
  const cpu = process.cpuUsage(cpuStart)
  sockets.close()
  for (const client of wss.clients) client.terminate()
  wss.close()
  server.close()
  closeRoom()
  // The busy stretch before each round is not the writes' cost.
  const ms = (cpu.user + cpu.system - busyMicros) / 1000 / messages
  return {
    server:
      kind === "ws"
        ? "bare ws, send per socket"
        : kind === "ws-raw"
          ? "bare ws, pre-framed write per socket"
          : kind === "ws-raw-busy"
            ? `the same, after ${FLOOR_BUSY_MS} ms busy`
            : "y-websocket 2 server, one room",
    recipients: CONNECTED,
    messages,
    frameBytes,
    cpuMsPerMessage: round(ms, 3),
    systemMsPerMessage: round(cpu.system / 1000 / messages, 3),
    usPerRecipient: round((ms * 1000) / CONNECTED, 1),
    writesMainThreadUsPerSend: round(writesNs / 1000 / messages / CONNECTED, 1),
    preemptedPer100Sends: round((writesPreempted * 100) / messages / CONNECTED, 1),
  }
}

/**
 * `--floor-busy-ms N` (default 2, about a message's work in the relay before
 * it sends): the "after N ms busy" socket-floor row runs the main thread for
 * that long (a loop that allocates nothing) before each round's writes, and
 * leaves it out of its figures. On a loaded machine a thread that has run for
 * its time slice is preempted during its burst of writes far more often than
 * one that slept just before (the plain rows: each round starts from the
 * event loop's wait), and each preemption costs the writes after it their
 * warm caches: this row measures the same writes as the relay makes them.
 */
const FLOOR_BUSY_MS = arg("floor-busy-ms", 2)

/** Keeps the main thread running for `ms` without allocating; returns the process CPU it took, in µs. */
function runFor(ms: number): number {
  const start = process.cpuUsage()
  const until = performance.now() + ms
  while (performance.now() < until) {
    // Busy on purpose: the thread's time slice is what is being used up.
  }
  const used = process.cpuUsage(start)
  return used.user + used.system
}

async function presenceRun(members: number) {
  const dataDir = mkdtempSync(join(tmpdir(), "parley-bench-presence-"))
  const relay = await startRelay({
    port: 0,
    dataDir,
    log: "silent",
    dev: true,
    limits: { userParticipantsPerMinute: 0 },
  })
  const users = Array.from({ length: members }, (_, i) => `present${i}` as UserId)
  const id = "g~presencebench" as ConversationId
  await relay.core.write(id, { kind: "user", user: users[0]! }, (doc) => {
    createConversation(doc, users[0]!, { kind: "group", id, participants: [] })
    addParticipants(doc, users[0]!, users.slice(1))
  })
  let closes = 0
  const closeCodes = new Map<number, number>()
  const providers = await Promise.all(
    users.map(async (user) => {
      const token = await relay.auth.mintDev(user, {})
      const p = new WebsocketProvider(relay.url, id, new Y.Doc(), {
        WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
        params: { [TOKEN_PARAM]: token },
        disableBc: true,
      })
      p.on("connection-close", (event: { code: number } | null) => {
        closes++
        const code = event?.code ?? 0
        closeCodes.set(code, (closeCodes.get(code) ?? 0) + 1)
      })
      return p
    }),
  )
  await Promise.all(
    providers.map(
      (p) => new Promise<void>((resolve) => (p.synced ? resolve() : p.once("sync", () => resolve()))),
    ),
  )
  let frames = 0
  ;(providers[1]!.ws as WebSocket | null)?.addEventListener("message", () => frames++)
  const cpuStart = process.cpuUsage()
  const t0 = performance.now()
  for (const [i, p] of providers.entries()) p.awareness.setLocalStateField("name", users[i])
  let deadline = performance.now() + 60_000
  const seesAll = () =>
    providers.every((p) => p.awareness.getStates().size >= members) || performance.now() > deadline
  while (!seesAll()) await sleep(50)
  const converged = performance.now() - t0
  const cpu = process.cpuUsage(cpuStart)
  const everyone = providers.filter((p) => p.awareness.getStates().size >= members).length
  const closedByRelay = closes
  const framesAtConvergence = frames
  await sleep(PRESENCE_HOLD_S * 1000)
  // After the hold: everyone still there, and still seeing everyone (no state timed out).
  const closedDuringHold = closes - closedByRelay
  const codesDuringHold = [...closeCodes].map(([code, n]) => `${code}×${n}`).join(" ")
  const stillOpen = providers.filter((p) => p.wsconnected).length
  const framesDuringHold = frames - framesAtConvergence
  const stillSeeAll = providers.filter((p) => p.awareness.getStates().size >= members).length
  // In a large room an idle member's state fades from the others' views (renewals are not
  // forwarded, by design: relay/src/awareness-fanout.ts); a change brings it back to everyone.
  let reconvergedMs: number | undefined
  let seeAllAfterChange: number | undefined
  if (PRESENCE_HOLD_S > 0) {
    const t1 = performance.now()
    deadline = t1 + 60_000
    for (const p of providers) p.awareness.setLocalStateField("active", true)
    while (!seesAll()) await sleep(50)
    reconvergedMs = Math.round(performance.now() - t1)
    seeAllAfterChange = providers.filter((p) => p.awareness.getStates().size >= members).length
  }
  // A provider leaves its awareness (a 3 s interval) to its document: destroy both, or the process stays up.
  for (const p of providers) {
    p.destroy()
    p.doc.destroy()
  }
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
  return {
    members,
    closedByRelay,
    seeEveryone: everyone,
    convergedMs: Math.round(converged),
    framesToOneMember: framesAtConvergence,
    cpuMsWholeProcess: Math.round((cpu.user + cpu.system) / 1000),
    ...(PRESENCE_HOLD_S > 0
      ? {
          heldS: PRESENCE_HOLD_S,
          closedDuringHold,
          closeCodes: codesDuringHold,
          openAfterHold: stillOpen,
          seeEveryoneAfterHold: stillSeeAll,
          seeEveryoneAfterAChange: seeAllAfterChange,
          reconvergedMs,
          framesToOneMemberDuringHold: framesDuringHold,
        }
      : {}),
  }
}

console.log(
  `Large groups: ${MEMBERS} members, ${CONNECTED} with their inbox open, SQLite (node ${process.version})`,
)
const only = process.argv.includes("--derived-only")
const floorOnly = process.argv.includes("--socket-floor-only")
const rows = floorOnly
  ? []
  : only
    ? [await inboxRun("derived", MESSAGES)]
    : [
        await inboxRun("no inbox", MESSAGES),
        await inboxRun("derived", MESSAGES),
        await inboxRun("per-member", PER_MEMBER_MESSAGES),
      ]
if (rows.length > 0) console.table(rows)
const floor = rows[0]?.cpuMsPerMessage ?? 0
const budget = 1 + 0.02 * CONNECTED
if (!only && !floorOnly)
  console.log(
    `inbox upkeep per message: derived ${round(rows[1]!.cpuMsPerMessage - floor, 3)} ms, ` +
      `per-member ${round(rows[2]!.cpuMsPerMessage - floor, 3)} ms; whole message, derived: ` +
      `${rows[1]!.cpuMsPerMessage} ms against the goal of 1 ms + 20 µs × ${CONNECTED} = ${budget} ms`,
  )
if (!process.argv.includes("--no-socket-floor")) {
  // The same receiving harness as the inbox runs, with a server that does nothing but write the frames.
  const floors = [
    await socketFloorRun("ws", MESSAGES),
    await socketFloorRun("ws-raw", MESSAGES),
    await socketFloorRun("ws-raw-busy", MESSAGES),
    await socketFloorRun("y-websocket", MESSAGES),
  ]
  console.log(
    `Socket floor: one frame per message to each of ${CONNECTED} sockets, nothing else (relay CPU of this process)`,
  )
  console.table(floors.filter((f) => f !== undefined))
}
if (PRESENCE > 0) {
  console.log(`Presence: ${PRESENCE} stock y-websocket providers in one room, all in this process`)
  console.table([await presenceRun(PRESENCE)])
}
