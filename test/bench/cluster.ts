/**
 * Several relays: throughput and saved-ack latency for 1, 2 and 3 relays over
 * PostgreSQL and Redis against one relay on PostgreSQL alone, the cost of the
 * forwarded path, and how long ordering takes to move after a SIGKILL.
 * Real relay processes on this machine; prints figures, asserts nothing.
 *
 *   npm run bench:cluster [-- --conversations 12 --messages 40 --hot-writers 6]
 *
 * Needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL). Every process shares
 * this machine's cores with the clients: figures are for comparing setups.
 */
import { readFileSync } from "node:fs"
import { createConversation, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { TestClient } from "../../relay/test/helpers/clients.js"
import { redisUnreachable, startCluster, type TestCluster } from "../../relay/test/helpers/cluster.js"
import { postgresUnreachable, scratchSchema } from "../../relay/test/helpers/postgres.js"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const CONVERSATIONS = arg("conversations", 12)
const MESSAGES = arg("messages", 40)
const HOT_WRITERS = arg("hot-writers", 6)
const FAILOVERS = arg("failovers", 3)

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? Number.NaN
}
const ms = (n: number) => `${n.toFixed(1)} ms`

/** CPU time (user + system) the processes used so far, in ms (Linux /proc; clock ticks of 10 ms). */
function cpuMs(pids: readonly number[]): number {
  let ticks = 0
  for (const pid of pids) {
    try {
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {}
  }
  return ticks * 10
}
const sleep = (t: number) => new Promise((r) => setTimeout(r, t))

/** What one setup runs on: the URL of relay `i` (modulo the number of relays), and a token. */
interface Setup {
  readonly label: string
  readonly relays: number
  /** Process ids of the relays (their CPU time is read from /proc). */
  pids(): number[]
  url(i: number): string
  token(user: string): Promise<string>
  stop(): Promise<void>
}

async function single(): Promise<Setup> {
  const schema = await scratchSchema()
  const relay: RelayProcess = await startRelayProcess({
    args: ["--storage", "postgres", "--database-url", schema.url],
  })
  return {
    label: "1 relay, PostgreSQL only",
    relays: 1,
    pids: () => [relay.child.pid!],
    url: () => relay.url,
    token: (user) => relay.token(user),
    stop: async () => {
      await relay.kill()
      await schema.drop()
    },
  }
}

async function clustered(size: number): Promise<Setup & { cluster: TestCluster }> {
  const cluster = await startCluster(size)
  return {
    label: `${size} relay${size > 1 ? "s" : ""}, PostgreSQL + Redis`,
    relays: size,
    cluster,
    pids: () => cluster.relays.flatMap((r) => (r?.child.pid ? [r.child.pid] : [])),
    url: (i) => cluster.relay(i % size).url,
    token: (user) => cluster.token(user),
    stop: () => cluster.stop(),
  }
}

/** Sends `count` messages one after another (each waits for its "saved"); returns each ack's latency. */
async function closedLoop(client: TestClient, user: UserId, count: number): Promise<number[]> {
  const latencies: number[] = []
  for (let n = 0; n < count; n++) {
    const start = performance.now()
    sendMessage(client.doc, user, { body: `${user} ${n}` })
    await client.allSaved()
    latencies.push(performance.now() - start)
  }
  return latencies
}

/**
 * `conversations` conversations of two participants; the creator (whose relay
 * then orders the conversation) on relay c, the other on relay c + 1: with
 * several relays, half the writes are forwarded to the owner.
 */
async function spread(setup: Setup, conversations: number, messages: number) {
  const pairs = await Promise.all(
    Array.from({ length: conversations }, async (_, c) => {
      const id = newConversationId()
      const [u0, u1] = [`a${c}`, `b${c}`] as UserId[]
      const owner = new TestClient(setup.url(c), id, await setup.token(u0!))
      await owner.synced()
      createConversation(owner.doc, u0!, { kind: "group", id, participants: [u1!] })
      await owner.allSaved()
      const other = new TestClient(setup.url(c + 1), id, await setup.token(u1!))
      await other.synced()
      return { owner, other, u0: u0!, u1: u1! }
    }),
  )
  const start = performance.now()
  const cpuBefore = cpuMs(setup.pids())
  const results = await Promise.all(
    pairs.flatMap(({ owner, other, u0, u1 }) => [
      closedLoop(owner, u0, messages).then((l) => ({ local: true, l })),
      closedLoop(other, u1, messages).then((l) => ({ local: setup.relays === 1, l })),
    ]),
  )
  const seconds = (performance.now() - start) / 1000
  const cpu = cpuMs(setup.pids()) - cpuBefore
  for (const { owner, other } of pairs) {
    owner.close()
    other.close()
  }
  const all = results.flatMap((r) => r.l)
  const local = results.filter((r) => r.local).flatMap((r) => r.l)
  const forwarded = results.filter((r) => !r.local).flatMap((r) => r.l)
  return { rate: all.length / seconds, all, local, forwarded, cpuPerMessage: cpu / all.length }
}

/** One conversation, `writers` participants spread over the relays, all writing at once. */
async function hot(setup: Setup, writers: number, messages: number) {
  const id = newConversationId()
  const users = Array.from({ length: writers }, (_, i) => `h${i}` as UserId)
  const clients: TestClient[] = []
  for (const [i, user] of users.entries()) {
    const client = new TestClient(setup.url(i), id, await setup.token(user))
    await client.synced()
    if (i === 0) {
      createConversation(client.doc, user, { kind: "group", id, participants: users.slice(1) })
      await client.allSaved()
    }
    clients.push(client)
  }
  const start = performance.now()
  const latencies = (await Promise.all(clients.map((c, i) => closedLoop(c, users[i]!, messages)))).flat()
  const seconds = (performance.now() - start) / 1000
  for (const c of clients) c.close()
  return { rate: latencies.length / seconds, latencies }
}

/** SIGKILLs the relay ordering a busy conversation; the time until a write on another relay is acknowledged. */
async function failover(setup: Setup & { cluster: TestCluster }): Promise<number> {
  const { cluster } = setup
  const id = newConversationId()
  const users = ["fa", "fb", "fc"] as UserId[]
  const creator = new TestClient(cluster.relay(0).url, id, await cluster.token(users[0]!))
  await creator.synced()
  createConversation(creator.doc, users[0]!, { kind: "group", id, participants: users.slice(1) })
  await creator.allSaved()
  const writers = await Promise.all(
    [1, 2].map(async (i) => {
      const c = new TestClient(cluster.relay(i).url, id, await cluster.token(users[i]!))
      await c.synced()
      return c
    }),
  )
  let killedAt = Number.POSITIVE_INFINITY
  let firstAck = Number.POSITIVE_INFINITY
  let stop = false
  const loops = writers.map(async (c, i) => {
    while (!stop) {
      const sentAt = performance.now()
      sendMessage(c.doc, users[i + 1]!, { body: "tick" })
      await c.allSaved()
      if (sentAt > killedAt) firstAck = Math.min(firstAck, performance.now())
      await sleep(5)
    }
  })
  await sleep(500)
  killedAt = performance.now()
  await cluster.kill(0)
  while (firstAck === Number.POSITIVE_INFINITY && performance.now() - killedAt < 30_000) await sleep(5)
  stop = true
  await Promise.race([Promise.all(loops), sleep(2000)])
  for (const c of [creator, ...writers]) c.close()
  await cluster.start(0)
  return firstAck - killedAt
}

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())
if (missing) {
  console.error(`bench:cluster needs PostgreSQL and Redis: ${missing}`)
  process.exit(1)
}

console.log(
  `bench:cluster — ${CONVERSATIONS} conversations × 2 writers × ${MESSAGES} messages (closed loop: each waits for its "saved"); ` +
    `hot: 1 conversation × ${HOT_WRITERS} writers × ${MESSAGES} messages`,
)
const rows: string[][] = []
let baseline: number | undefined
for (const make of [single, () => clustered(1), () => clustered(2), () => clustered(3)]) {
  const setup = await make()
  try {
    const s = await spread(setup, CONVERSATIONS, MESSAGES)
    const h = await hot(setup, HOT_WRITERS, MESSAGES)
    const p50 = percentile(s.local, 0.5)
    baseline ??= p50
    rows.push([
      setup.label,
      `${s.rate.toFixed(0)}`,
      ms(s.cpuPerMessage),
      ms(percentile(s.all, 0.5)),
      ms(percentile(s.all, 0.99)),
      ms(p50),
      s.forwarded.length > 0 ? ms(percentile(s.forwarded, 0.5)) : "-",
      `${h.rate.toFixed(0)}`,
      ms(percentile(h.latencies, 0.5)),
      ms(percentile(h.latencies, 0.99)),
    ])
  } finally {
    await setup.stop()
  }
}
const header = [
  "setup",
  "msgs/s",
  "relay CPU/msg",
  "ack p50",
  "ack p99",
  "p50 on owner",
  "p50 forwarded",
  "hot msgs/s",
  "hot p50",
  "hot p99",
]
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
for (const row of [header, ...rows]) console.log(row.map((c, i) => c.padEnd(widths[i]!)).join("  "))
const col = (row: number, column: string) => Number.parseFloat(rows[row]![header.indexOf(column)]!)
console.log(
  `cluster vs one relay on PostgreSQL alone, per message: relay CPU +${ms(col(1, "relay CPU/msg") - col(0, "relay CPU/msg"))} ` +
    `(1 relay), +${ms(col(3, "relay CPU/msg") - col(0, "relay CPU/msg"))} (3 relays, all relays summed); ack p50 on the owner ` +
    `${ms(col(1, "p50 on owner") - baseline!)}; forwarding adds ${ms(col(3, "p50 forwarded") - col(3, "p50 on owner"))} (3 relays)`,
)

const three = await clustered(3)
try {
  const times: number[] = []
  for (let i = 0; i < FAILOVERS; i++) times.push(await failover(three))
  console.log(
    `failover (SIGKILL of the ordering relay → first ack of a write sent after it, default lease 1500 ms): ${times
      .map((t) => ms(t))
      .join(", ")}`,
  )
} finally {
  await three.stop()
  await stopRelayProcesses()
}
process.exit(0)
