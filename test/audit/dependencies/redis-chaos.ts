// Three relays in a cluster under a Redis stall (CLIENT PAUSE) or repeated Redis connection resets
// (CLIENT KILL), or their PostgreSQL sessions terminated or a table held locked.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/redis-chaos.ts pause|pause-write|kill|pg-terminate|pg-lock:<table>
//
// Three relays over PostgreSQL (a scratch schema of test) and a Redis server of the script's own,
// six writers spread over the relays writing throughout. Checks: no relay ends, /readyz says
// what Redis does, writes are answered (saved or a typed error) within a bound instead of hanging,
// and afterwards every acknowledged message is there once with contiguous numbers, on every relay.
import pg from "pg"
import { startCluster, type TestCluster } from "../../../relay/test/helpers/cluster.js"
import {
  allAlive,
  atExit,
  check,
  conversationOnRelays,
  logSummary,
  privateRedis,
  readyz,
  run,
  sleep,
  verifyConversation,
} from "./lib.js"

const mode = process.argv[2] ?? "pause"
const users = ["alice", "bob", "carol", "dave", "erin", "frank"]

run(async () => {
  const redis = await privateRedis()
  const cluster: TestCluster = await startCluster(3, {
    redisUrl: redis.url,
    // Every message stays in the live document, where the checks read them (no sealed history).
    args: ["--history-segment-size", "0"],
    // Tagged, so that pg-* modes terminate (or stall) the relays' sessions and nobody else's.
    databaseUrl: (url) => {
      const tagged = new URL(url)
      tagged.searchParams.set("application_name", "audit4-cluster")
      return tagged.toString()
    },
  })
  atExit(() => cluster.stop())
  const { id, writers } = await conversationOnRelays(cluster, users)
  console.log(`conversation ${id}, relays on ${cluster.ports.join(", ")}, redis ${redis.url}`)

  let writing = true
  let round = 0
  const writing$ = (async () => {
    while (writing) {
      for (const w of writers) w.send(`${w.user} ${round}`)
      round++
      await sleep(200)
    }
  })()

  const readiness: { t: number; relay: number; status: number | string }[] = []
  let probing = true
  const start = Date.now()
  const probing$ = (async () => {
    while (probing) {
      for (let i = 0; i < 3; i++) {
        const r = await readyz(cluster.relay(i).httpUrl)
        readiness.push({ t: Date.now() - start, relay: i, status: "status" in r ? r.status : r.error })
      }
      await sleep(300)
    }
  })()

  await sleep(1500)
  const chaosStart = Date.now() - start
  if (mode === "pause" || mode === "pause-write") {
    const kind = mode === "pause" ? "ALL" : "WRITE"
    console.log(`CLIENT PAUSE 10000 ${kind}`)
    await redis.cli.call("CLIENT", "PAUSE", "10000", kind)
    await sleep(10_500)
    await redis.cli.call("CLIENT", "UNPAUSE")
  } else if (mode === "pg-terminate") {
    const admin = new pg.Client({ connectionString: cluster.schema.url })
    await admin.connect()
    let terminated = 0
    for (let k = 0; k < 40; k++) {
      const { rows } = await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'audit4-cluster'",
      )
      terminated += rows.length
      await sleep(300)
    }
    await admin.end()
    console.log(`terminated ${terminated} PostgreSQL sessions`)
  } else if (mode.startsWith("pg-lock:")) {
    const locker = new pg.Client({ connectionString: cluster.schema.url })
    await locker.connect()
    atExit(() => locker.end().catch(() => undefined))
    await locker.query("BEGIN")
    await locker.query(`LOCK TABLE ${mode.slice(8)} IN ACCESS EXCLUSIVE MODE`)
    console.log(`holding ACCESS EXCLUSIVE on ${mode.slice(8)} for 20 s`)
    await sleep(20_000)
    await locker.query("COMMIT")
  } else {
    // Every 700 ms for 12 s: every normal connection (commands, lease renewal) is reset.
    for (let k = 0; k < 17; k++) {
      const killed = await redis.cli.call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
      const pubsub = k % 4 === 3 ? await redis.cli.call("CLIENT", "KILL", "TYPE", "pubsub") : 0
      if (k % 4 === 0) console.log(`CLIENT KILL: ${killed} normal, ${pubsub} pubsub`)
      await sleep(700)
    }
  }
  const chaosEnd = Date.now() - start
  console.log("chaos over")
  await sleep(4000)
  writing = false
  await writing$

  // During the chaos: what /readyz said.
  const during = readiness.filter((r) => r.t > chaosStart + 3500 && r.t < chaosEnd - 500)
  const after = readiness.filter((r) => r.t > chaosEnd + 3000)
  probing = false
  await probing$
  console.log(
    "readyz during the chaos:",
    [0, 1, 2].map((i) =>
      during
        .filter((r) => r.relay === i)
        .map((r) => r.status)
        .join(","),
    ),
  )
  if (mode === "pause")
    check(
      during.every((r) => r.status === 503),
      "/readyz says 503 while Redis answers no command",
      `${during.filter((r) => r.status !== 503).length} of ${during.length} probes were not 503`,
    )
  check(
    after.every((r) => r.status === 200),
    "/readyz is 200 again once Redis answers",
    after.filter((r) => r.status !== 200),
  )
  check(allAlive(cluster), "every relay still running")

  // Writes sent during the chaos: answered (saved, or a typed error the client acts on) in bounded time.
  const errors = writers.flatMap((w) => w.client?.errors ?? [])
  const byKind = new Map<string, number>()
  for (const e of errors)
    byKind.set(`${e.code} ${e.message}`, (byKind.get(`${e.code} ${e.message}`) ?? 0) + 1)
  console.log("typed errors:", JSON.stringify([...byKind]))
  const unanswered = writers.flatMap((w) =>
    w.sent.filter((s) => !w.acked.has(s.id)).map((s) => ({ user: w.user, at: s.at - Date.now() })),
  )
  console.log(
    `${writers.reduce((n, w) => n + w.sent.length, 0)} sent, ${unanswered.length} not acknowledged before the resync`,
  )
  const latencies = writers.flatMap((w) =>
    w.sent.filter((s) => w.acked.has(s.id)).map((s) => w.acked.get(s.id)! - s.at),
  )
  latencies.sort((a, b) => a - b)
  console.log(`ack latency: p50 ${latencies[latencies.length >> 1]} ms, max ${latencies.at(-1)} ms`)

  // What the SDK does: re-send pending work (here by reconnecting: the first sync carries it).
  for (const w of writers) w.client?.close()
  const settled = await Promise.all(
    writers.map((w) =>
      w.settled(60_000).then(
        () => true,
        (e) => String(e),
      ),
    ),
  )
  check(
    settled.every((s) => s === true),
    "every message acknowledged after a resync",
    settled,
  )
  await verifyConversation(cluster, id, writers, "alice")

  for (let i = 0; i < 3; i++) {
    console.log(`relay ${i} warnings/errors:`, logSummary(cluster.relay(i).lines))
    for (const line of cluster
      .relay(i)
      .lines.filter((l) => l.includes('"level":50'))
      .slice(0, 3))
      console.log(`  ${line.slice(0, 1500)}`)
  }
})
