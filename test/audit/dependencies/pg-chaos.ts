// PostgreSQL as the backend, under connection terminations or a table held locked.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/pg-chaos.ts terminate|lock:<table>[,<table>...]
//
// One relay on PostgreSQL (a scratch schema of test; its connections carry application_name
// audit4-relay, so only they are terminated), with a hook module that records every
// message.sent, and four writers writing throughout. `terminate`: pg_terminate_backend of the
// relay's connections every 300 ms for 12 s. `lock:T`: a session of the script's own holds
// `LOCK TABLE T IN ACCESS EXCLUSIVE MODE` for 20 s. Checks: the relay keeps running and answers
// /healthz, /readyz says what storage does and is 200 again afterwards, every acknowledged message
// is stored once with numbers 1..n, and every message.sent reaches the hook.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import type { TestCluster } from "../../../relay/test/helpers/cluster.js"
import { scratchSchema } from "../../../relay/test/helpers/postgres.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import {
  atExit,
  check,
  conversationOnRelays,
  logSummary,
  RELAY_DIST,
  readyz,
  run,
  sleep,
  verifyConversation,
} from "./lib.js"

const mode = process.argv[2] ?? "terminate"
const users = ["alice", "bob", "carol", "dave"]
const DIST_INDEX = new URL("../../../relay/dist/index.js", import.meta.url).href

run(async () => {
  const schema = await scratchSchema()
  atExit(() => schema.drop())
  const url = new URL(schema.url)
  url.searchParams.set("application_name", "audit4-relay")
  const hooks = mkdtempSync(join(tmpdir(), "audit4-hooks-"))
  atExit(() => rmSync(hooks, { recursive: true, force: true }))
  const deliveries = join(hooks, "deliveries.jsonl")
  writeFileSync(
    join(hooks, "recorder.mjs"),
    `import { appendFileSync } from "node:fs"
import { defineHooks } from ${JSON.stringify(DIST_INDEX)}
export default defineHooks({
  async onMessageSent({ event, subject }) {
    appendFileSync(${JSON.stringify(deliveries)}, JSON.stringify({ id: event.id, message: subject.message.id, seq: subject.message.seq }) + "\\n")
  },
})
`,
  )
  const relay = await startRelayProcess({
    script: RELAY_DIST,
    // --history-segment-size 0: every message stays in the live document, where the checks read them.
    args: [
      "--storage",
      "postgres",
      "--database-url",
      url.toString(),
      "--hooks",
      hooks,
      "--history-segment-size",
      "0",
    ],
  })
  atExit(() => relay.kill())
  // The helpers take a cluster; a one-relay "cluster" is enough for them.
  const cluster = {
    relays: [relay],
    ports: [relay.port],
    relay: () => relay,
    token: (u: string) => relay.token(u),
  }
  const { id, writers } = await conversationOnRelays(cluster as unknown as TestCluster, users)

  const admin = new pg.Client({ connectionString: schema.url })
  await admin.connect()
  atExit(() => admin.end())

  let writing = true
  const writing$ = (async () => {
    for (let round = 0; writing; round++) {
      for (const w of writers) w.send(`${w.user} ${round}`)
      await sleep(200)
    }
  })()
  const probes: { t: number; ready: number | string; health: number; ms: number }[] = []
  let probing = true
  const start = Date.now()
  const probing$ = (async () => {
    while (probing) {
      const t0 = Date.now()
      const r = await readyz(relay.httpUrl)
      const h = await fetch(`${relay.httpUrl}/healthz`, { signal: AbortSignal.timeout(3000) }).then(
        (x) => x.status,
        () => 0,
      )
      probes.push({
        t: t0 - start,
        ready: "status" in r ? r.status : r.error,
        health: h,
        ms: Date.now() - t0,
      })
      await sleep(300)
    }
  })()

  await sleep(1500)
  const chaosStart = Date.now() - start
  if (mode === "terminate") {
    let terminated = 0
    for (let k = 0; k < 40; k++) {
      const { rows } = await admin.query(
        "SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity WHERE application_name = 'audit4-relay'",
      )
      terminated += rows.length
      await sleep(300)
    }
    console.log(`terminated ${terminated} backends`)
  } else if (mode.startsWith("lock:")) {
    const tables = mode.slice(5)
    const locker = new pg.Client({ connectionString: schema.url })
    await locker.connect()
    atExit(() => locker.end().catch(() => undefined))
    await locker.query("BEGIN")
    await locker.query(`LOCK TABLE ${tables} IN ACCESS EXCLUSIVE MODE`)
    console.log(`holding ACCESS EXCLUSIVE on ${tables} for 20 s`)
    await sleep(20_000)
    await locker.query("COMMIT")
    await locker.end()
  } else throw new Error(`unknown mode ${mode}`)
  const chaosEnd = Date.now() - start
  console.log("chaos over")
  await sleep(5000)
  writing = false
  await writing$
  probing = false
  await probing$

  const during = probes.filter((p) => p.t > chaosStart && p.t < chaosEnd)
  console.log("readyz during:", during.map((p) => p.ready).join(","))
  console.log("healthz during:", during.map((p) => `${p.health}/${p.ms}ms`).join(","))
  check(relay.child.exitCode === null && relay.child.signalCode === null, "the relay is still running")
  check(
    during.every((p) => p.health === 200),
    "/healthz answered 200 throughout",
    during.filter((p) => p.health !== 200),
  )
  const after = probes.filter((p) => p.t > chaosEnd + 3000)
  check(
    after.every((p) => p.ready === 200),
    "/readyz is 200 again afterwards",
    after.map((p) => p.ready),
  )

  const errors = writers.flatMap((w) => w.client?.errors ?? [])
  const byKind = new Map<string, number>()
  for (const e of errors)
    byKind.set(`${e.code} ${e.message}`, (byKind.get(`${e.code} ${e.message}`) ?? 0) + 1)
  console.log("typed errors:", JSON.stringify([...byKind]))
  const latencies = writers.flatMap((w) =>
    w.sent.filter((s) => w.acked.has(s.id)).map((s) => w.acked.get(s.id)! - s.at),
  )
  latencies.sort((a, b) => a - b)
  console.log(
    `${latencies.length} of ${writers.reduce((n, w) => n + w.sent.length, 0)} acknowledged before the resync; ` +
      `ack latency p50 ${latencies[latencies.length >> 1]} ms, max ${latencies.at(-1)} ms; reconnects ${writers.reduce((n, w) => n + w.reconnects, 0)}`,
  )
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
  await verifyConversation(cluster as unknown as TestCluster, id, writers, "alice")

  // Hook deliveries: every message.sent at least once.
  const sent = writers.flatMap((w) => w.sent.map((s) => s.id))
  const deadline = Date.now() + 30_000
  let lines: { message: string }[] = []
  for (;;) {
    lines = (await import("node:fs"))
      .readFileSync(deliveries, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
    const got = new Set(lines.map((l) => l.message))
    if (sent.every((m) => got.has(m)) || Date.now() > deadline) break
    await sleep(200)
  }
  const got = new Set(lines.map((l) => l.message))
  check(
    sent.every((m) => got.has(m)),
    "every message.sent delivered to the hook",
    sent.filter((m) => !got.has(m)).length,
  )
  console.log(`${lines.length} deliveries, ${lines.length - got.size} repeats`)
  const { rows: dead } = await admin.query(
    "SELECT count(*)::int AS n FROM parley_hook_deliveries WHERE dead_at IS NOT NULL",
  )
  check(dead[0].n === 0, "no dead letters", dead[0].n)

  // A fresh reader still loads the conversation (storage fully back).
  const late = new TestClient(relay.url, id, await relay.token("bob"))
  atExit(() => late.close())
  check(
    await Promise.race([late.synced().then(() => true), sleep(10_000).then(() => false)]),
    "a new connection syncs",
  )
  console.log("relay warnings/errors:", logSummary(relay.lines))
  for (const line of relay.lines.filter((l) => l.includes('"level":50')).slice(0, 3))
    console.log(`  ${line.slice(0, 1500)}`)
})
