/**
 * Does one hostile user slow down everyone else? Message latency between two
 * honest users (alice and bob, stock y-websocket providers, one message every
 * 100 ms in turn, each timed from send to the other replica having it) on a
 * quiet relay, then while one user, mallory, pushes at every per-user limit at
 * once from a process of her own: hundreds of connections, an update flood
 * spread over them, documents held open, connections that ask for a large
 * conversation and never read, groups created with hundreds of made-up
 * members, megabyte sync requests and awareness frames that cost their size
 * to read, token refreshes at the frame rate, and 2,000 sockets that send half
 * a request. Once with the relay's default limits, once with the per-user limits
 * off (what a per-connection limit alone gives). Prints figures; asserts
 * nothing.
 *
 *   npm run bench:attack [-- --messages 60 --ramp 3]
 *
 * With ATTACK_DEBUG=1 it also prints the relay's log messages, counted.
 */
import { fork } from "node:child_process"
import { readFileSync } from "node:fs"
import { connect } from "node:net"
import * as encoding from "lib0/encoding"
import { WebSocket } from "ws"
import * as syncProtocol from "y-protocols/sync"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { TestClient } from "../../relay/test/helpers/clients.js"
import { awarenessRemovals, stateVectorOf } from "../../relay/test/helpers/costly-frames.js"
import {
  type RelayProcess,
  signToken,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"
import {
  createConversation,
  encodeSyncStep1,
  encodeTokenRefresh,
  getMessage,
  type MessageId,
  MessageType,
  newConversationId,
  newMessageId,
  sendMessage,
  TOKEN_PARAM,
  type UserId,
} from "../../shared/src/index.js"
import { type Distribution, distribution, sleep } from "./stats.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}

/** Per-user limits off: only the per-connection ones remain. */
const NO_USER_LIMITS = [
  "--user-receive-bytes-per-second",
  "0",
  "--user-connection-attempts-per-minute",
  "0",
  "--connections-per-address",
  "0",
  "--max-sockets-per-user",
  "0",
  "--max-documents-per-user",
  "0",
  "--user-updates-per-second",
  "0",
  "--max-pending-bytes-per-user",
  "0",
  "--max-queued-bytes-per-user",
  "0",
  "--user-conversations-per-minute",
  "0",
  "--user-participants-per-minute",
  "0",
]

// --- mallory: the attack, in a process of her own ------------------------------------------

/** A flood message's text: long messages cost the relay more to check, store and send. */
const FLOOD_TEXT = "y".repeat(4_000)

interface AttackReport {
  /** Close reasons mallory's connections got, counted. */
  readonly closes: Record<string, number>
  /** Typed errors (rule or code) her writes got, counted. */
  readonly errors: Record<string, number>
  readonly updatesSent: number
  readonly groupsAttempted: number
}

async function mallory(url: string, secret: string): Promise<void> {
  const user = "mallory" as UserId
  const token = () => signToken(secret, user)
  const closes: Record<string, number> = {}
  const errors: Record<string, number> = {}
  const count = (into: Record<string, number>, key: string) => {
    into[key] = (into[key] ?? 0) + 1
  }
  let running = true
  let updatesSent = 0
  let groupsAttempted = 0
  const track = (c: TestClient) => {
    void c.closed.then(({ code, reason }) => count(closes, `${code} ${reason || "(no reason)"}`))
    return c
  }
  process.on("message", (message) => {
    if (message !== "stop") return
    running = false
    const report: AttackReport = { closes, errors, updatesSent, groupsAttempted }
    process.send!(report, () => process.exit(0))
  })

  // A group of her own with about 6 MB of history, to ask for and not read.
  const big = newConversationId()
  const builder = track(new TestClient(url, big, await token()))
  await builder.synced()
  createConversation(builder.doc, user, { kind: "group", id: big, participants: [] })
  const body = "x".repeat(15_000)
  for (let i = 0; i < 8 && !builder.closeEvent; i++) {
    builder.doc.transact(() => {
      for (let m = 0; m < 50; m++) sendMessage(builder.doc, user, { body })
    })
    await Promise.race([builder.allSaved(), builder.closed, sleep(10_000)])
  }
  // The flood goes to a small group, from one replica, over many raw connections.
  const floodId = newConversationId()
  const writer = track(new TestClient(url, floodId, await token()))
  await writer.synced()
  createConversation(writer.doc, user, { kind: "group", id: floodId, participants: [] })
  await Promise.race([writer.allSaved(), sleep(5_000)])
  const base = Y.encodeStateAsUpdate(writer.doc)

  process.send!("ready")
  const keep = async (target: number, open: () => Promise<{ done: Promise<unknown> }>) => {
    let live = 0
    while (running) {
      while (running && live < target) {
        live++
        void open()
          .then(({ done }) => done)
          .catch(() => {})
          .finally(() => live--)
        await sleep(2)
      }
      await sleep(200)
    }
  }
  const raw = (name: string, t: string) => {
    const ws = new WebSocket(`${url}/${encodeURIComponent(name)}?${TOKEN_PARAM}=${t}`)
    ws.on("error", () => {})
    ws.on("close", (code, reason) => count(closes, `${code} ${reason.toString() || "(no reason)"}`))
    return ws
  }
  /** Flood connections, each with a replica of its own: a client's updates arrive in order only on one connection. */
  const flooders = new Map<WebSocket, Y.Doc>()
  const attacks = [
    // 150 connections holding a document each (fresh names: they do not exist).
    keep(150, async () => {
      const c = track(new TestClient(url, newConversationId(), await token()))
      return { done: c.closed }
    }),
    // 40 connections asking for the large conversation and never reading.
    keep(40, async () => {
      const c = track(new TestClient(url, big, await token()))
      await c.opened.catch(() => {})
      c.ws.pause()
      return { done: c.closed }
    }),
    // 150 connections for the flood.
    keep(150, async () => {
      const ws = raw(floodId, await token())
      const replica = new Y.Doc()
      Y.applyUpdate(replica, base)
      flooders.set(ws, replica)
      return {
        done: new Promise((resolve) =>
          ws.once("close", () => {
            flooders.delete(ws)
            resolve(undefined)
          }),
        ),
      }
    }),
    // About 1,000 updates a second spread over the flood connections, each under its own limit.
    (async () => {
      while (running) {
        const open = [...flooders].filter(([ws]) => ws.readyState === WebSocket.OPEN)
        for (let i = 0; i < 20 && open.length > 0; i++) {
          const [ws, replica] = open[updatesSent % open.length]!
          let update: Uint8Array | undefined
          const capture = (u: Uint8Array) => {
            update = u
          }
          replica.once("update", capture)
          sendMessage(replica, user, { id: newMessageId(), body: `flood ${updatesSent} ${FLOOD_TEXT}` })
          if (!update) continue
          const encoder = encoding.createEncoder()
          encoding.writeVarUint(encoder, MessageType.sync)
          syncProtocol.writeUpdate(encoder, update)
          ws.send(encoding.toUint8Array(encoder))
          updatesSent++
        }
        await sleep(20)
      }
    })(),
    // Frames that cost their size to read before any rule: 1 MB sync requests listing 130,000
    // made-up clients, 1 MB awareness frames of 80,000 removals, token refreshes, each from a few
    // connections at their frame rate.
    ...(
      [
        [4, () => encodeSyncStep1(stateVectorOf(130_000))],
        [4, () => awarenessRemovals(80_000)],
      ] as const
    ).map(([connections, frame]) =>
      keep(connections, async () => {
        const ws = raw(floodId, await token())
        const bytes = frame()
        await new Promise((resolve) => ws.once("open", resolve))
        const timer = setInterval(() => {
          if (ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 8 * bytes.length)
            for (let i = 0; i < 5; i++) ws.send(bytes)
        }, 50)
        return {
          done: new Promise((resolve) => ws.once("close", resolve)).finally(() => clearInterval(timer)),
        }
      }),
    ),
    keep(20, async () => {
      const t = await token()
      const ws = raw(floodId, t)
      const refresh = encodeTokenRefresh(t)
      await new Promise((resolve) => ws.once("open", resolve))
      const timer = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) for (let i = 0; i < 9; i++) ws.send(refresh)
      }, 100)
      return { done: new Promise((resolve) => ws.once("close", resolve)).finally(() => clearInterval(timer)) }
    }),
    // 2,000 sockets that send half a request and nothing more, from her address.
    keep(2_000, async () => {
      const socket = connect(Number(new URL(url.replace(/^ws/, "http")).port), "127.0.0.1")
      socket.on("error", () => {})
      socket.on("connect", () => socket.write("GET /healthz HTTP/1.1\r\nHost: relay\r\n"))
      return { done: new Promise((resolve) => socket.once("close", resolve)) }
    }),
    // A group with 400 made-up members every 100 ms.
    (async () => {
      while (running) {
        groupsAttempted++
        const id = newConversationId()
        const c = track(new TestClient(url, id, await token()))
        void (async () => {
          await Promise.race([c.synced(), c.closed])
          if (c.closeEvent) return
          const ghosts = Array.from({ length: 400 }, (_, i) => `ghost-${groupsAttempted}-${i}` as UserId)
          createConversation(c.doc, user, { kind: "group", id, participants: ghosts })
          await Promise.race([c.allSaved(), c.until(() => c.errors.length > 0), c.closed, sleep(5_000)])
          for (const e of c.errors) count(errors, e.rule ?? e.code)
          c.close()
        })()
        await sleep(100)
      }
    })(),
  ]
  await Promise.all(attacks)
}

// --- the honest pair -------------------------------------------------------------------------

interface Phase {
  readonly latency: Distribution
  readonly lost: number
}

async function honestPair(relay: RelayProcess) {
  const id = newConversationId()
  const provider = async (user: UserId) =>
    new WebsocketProvider(relay.url, id, new Y.Doc(), {
      WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
      params: { [TOKEN_PARAM]: await relay.token(user) },
      disableBc: true,
    })
  const a = await provider("alice" as UserId)
  const b = await provider("bob" as UserId)
  const synced = (p: WebsocketProvider) =>
    new Promise<void>((resolve) => (p.synced ? resolve() : p.once("sync", () => resolve())))
  await Promise.all([synced(a), synced(b)])
  createConversation(a.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  while (!b.doc.getMap("meta").has("createdAt")) await sleep(10)
  let turn = 0
  /** Sends `messages`, one every 100 ms in turn; latency send → the other replica has it. */
  const measure = async (messages: number): Promise<Phase> => {
    const samples: number[] = []
    let lost = 0
    for (let i = 0; i < messages; i++, turn++) {
      const [from, to, user] = turn % 2 === 0 ? [a, b, "alice"] : [b, a, "bob"]
      const messageId = newMessageId() as MessageId
      const sent = performance.now()
      const arrived = new Promise<void>((resolve) => {
        const check = () => {
          if (getMessage(to.doc, messageId)) {
            to.doc.off("afterTransaction", check)
            resolve()
          }
        }
        to.doc.on("afterTransaction", check)
      })
      sendMessage(from.doc, user as UserId, { id: messageId, body: `honest ${turn}` })
      const ok = await Promise.race([arrived.then(() => true), sleep(60_000).then(() => false)])
      if (ok) samples.push(performance.now() - sent)
      else lost++
      await sleep(100)
    }
    return { latency: distribution(samples), lost }
  }
  return {
    measure,
    destroy: () => {
      a.destroy()
      b.destroy()
    },
  }
}

interface Row {
  readonly label: string
  readonly quiet: Phase
  readonly attack: Phase
  readonly report: AttackReport
  /** The relay's peak resident memory over the run (VmHWM), MB. */
  readonly peakRssMB: number
}

function peakRssMB(pid: number | undefined): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8")
    return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]) / 1024
  } catch {
    return Number.NaN
  }
}

async function scenario(label: string, args: string[], messages: number, rampSeconds: number): Promise<Row> {
  const relay = await startRelayProcess({ args })
  const pair = await honestPair(relay)
  try {
    const quiet = await pair.measure(messages)
    const child = fork(process.argv[1]!, ["--mallory", relay.url, relay.secret], {
      execArgv: process.execArgv,
      stdio: ["ignore", "ignore", "inherit", "ipc"],
    })
    await new Promise((resolve) => child.once("message", resolve))
    await sleep(rampSeconds * 1000)
    const attack = await pair.measure(messages)
    const peak = peakRssMB(relay.child.pid)
    const report = await new Promise<AttackReport>((resolve) => {
      child.once("message", (m) => resolve(m as AttackReport))
      child.send("stop")
    })
    await new Promise((resolve) => child.once("exit", resolve))
    if (process.env.ATTACK_DEBUG) {
      const seen: Record<string, number> = {}
      for (const line of relay.lines) {
        const msg = String(JSON.parse(line).msg).slice(0, 70)
        seen[msg] = (seen[msg] ?? 0) + 1
      }
      console.log(seen)
    }
    return { label, quiet, attack, report, peakRssMB: peak }
  } finally {
    pair.destroy()
    await stopRelayProcesses()
  }
}

const ms = (n: number) => (Number.isFinite(n) ? n.toFixed(n < 10 ? 1 : 0) : "—")

async function main(): Promise<void> {
  const messages = arg("messages", 60)
  const ramp = arg("ramp", 3)
  const rows = [
    await scenario("default limits", [], messages, ramp),
    await scenario("per-user limits off", NO_USER_LIMITS, messages, ramp),
  ]
  console.log(`\nHonest pair: ${messages} messages per phase, one every 100 ms; attack ramp ${ramp} s.\n`)
  console.log(
    "| relay | quiet p50 / p99 ms | under attack p50 / p99 / max ms | lost under attack | mallory updates sent | relay peak RSS MB |",
  )
  console.log("| --- | --- | --- | --- | --- | --- |")
  for (const r of rows) {
    console.log(
      `| ${r.label} | ${ms(r.quiet.latency.p50)} / ${ms(r.quiet.latency.p99)} | ${ms(r.attack.latency.p50)} / ${ms(r.attack.latency.p99)} / ${ms(r.attack.latency.max)} | ${r.attack.lost} | ${r.report.updatesSent} | ${Math.round(r.peakRssMB)} |`,
    )
  }
  for (const r of rows) {
    console.log(`\n${r.label}: what mallory met (close code and reason, or typed error rule: count)`)
    const closes = Object.entries(r.report.closes).sort((x, y) => y[1] - x[1])
    for (const [k, v] of closes) console.log(`  close ${k}: ${v}`)
    for (const [k, v] of Object.entries(r.report.errors)) console.log(`  error ${k}: ${v}`)
    console.log(`  groups attempted: ${r.report.groupsAttempted}`)
  }
}

const i = process.argv.indexOf("--mallory")
if (i > 0) await mallory(process.argv[i + 1]!, process.argv[i + 2]!)
else await main()
