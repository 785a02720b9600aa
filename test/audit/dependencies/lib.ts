// Shared pieces of the audit's reproduction scripts (run with `node --conditions=parley-source --import tsx`).
// Every script starts what it needs and stops it again, whatever happens.
import { type ChildProcess, spawn } from "node:child_process"
import { createConversation, listMessages, newConversationId, type UserId } from "@parley/shared"
import { Redis } from "ioredis"
import { Writer } from "../../../relay/test/cluster/writer.js"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { freePort, type TestCluster } from "../../../relay/test/helpers/cluster.js"

/** The relay the scripts attack: this worktree's build, or `AUDIT4_RELAY_DIST` (another build, to compare). */
export const RELAY_DIST =
  process.env.AUDIT4_RELAY_DIST ?? new URL("../../../relay/dist/main.js", import.meta.url).pathname
// Relays run the compiled relay (`npx tsc -b` first), as an operator runs it.
process.env.PARLEY_TEST_RELAY_SCRIPT ??= RELAY_DIST

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const cleanups: (() => unknown)[] = []
/** Runs at the end (reverse order), also after a failure or Ctrl+C. */
export function atExit(step: () => unknown): void {
  cleanups.push(step)
}
export async function cleanup(): Promise<void> {
  for (const step of cleanups.splice(0).reverse()) {
    try {
      await step()
    } catch (error) {
      console.error("cleanup step failed:", error)
    }
  }
}
for (const signal of ["SIGINT", "SIGTERM"] as const)
  process.on(signal, () => void cleanup().then(() => process.exit(130)))

/** Runs `main`, cleans up, exits 0 when every check held, 1 otherwise (the checks print FAIL lines). */
export function run(main: () => Promise<void>): void {
  main()
    .catch((error) => {
      console.error("ERROR", error)
      failures++
    })
    .finally(async () => {
      await cleanup()
      console.log(failures === 0 ? "RESULT: every check held" : `RESULT: ${failures} check(s) failed`)
      process.exit(failures === 0 ? 0 : 1)
    })
}

let failures = 0
export function check(ok: boolean, what: string, detail?: unknown): boolean {
  if (ok) console.log(`ok   ${what}`)
  else {
    failures++
    console.log(
      `FAIL ${what}${detail === undefined ? "" : `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`}`,
    )
  }
  return ok
}

/**
 * A Redis server of the script's own (port of its own, no persistence): pausing and killing
 * its clients disturbs nobody else on a shared machine.
 */
export async function privateRedis(): Promise<{
  url: string
  port: number
  cli: Redis
  child: ChildProcess
}> {
  const port = await freePort()
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    {
      stdio: "ignore",
    },
  )
  atExit(async () => {
    if (child.exitCode === null) child.kill("SIGKILL")
  })
  const url = `redis://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0 })
    probe.on("error", () => {})
    try {
      await probe.connect()
      await probe.ping()
      probe.disconnect()
      break
    } catch {
      probe.disconnect()
      if (i > 50) throw new Error("redis-server did not start")
      await sleep(100)
    }
  }
  const cli = new Redis(url)
  cli.on("error", () => {})
  atExit(async () => {
    await cli.call("CLIENT", "UNPAUSE").catch(() => undefined)
    cli.disconnect()
  })
  return { url, port, cli, child }
}

/** `GET /readyz` of relay `i`: status and body, or the error (the relay does not answer in 3 s). */
export async function readyz(httpUrl: string): Promise<{ status: number; body: string } | { error: string }> {
  try {
    const r = await fetch(`${httpUrl}/readyz`, { signal: AbortSignal.timeout(3000) })
    return { status: r.status, body: await r.text() }
  } catch (error) {
    return { error: String(error) }
  }
}

/** Whether every relay of the cluster is still running. */
export function allAlive(cluster: TestCluster): boolean {
  return cluster.relays.every((r) => r && r.child.exitCode === null && r.child.signalCode === null)
}

/**
 * A group conversation with one writer per user, writer `n` connected to relay `n % size`
 * directly (no load balancer: a reconnect goes back to the same relay).
 */
export async function conversationOnRelays(
  cluster: TestCluster,
  users: readonly string[],
): Promise<{ id: string; writers: Writer[] }> {
  const id = newConversationId()
  const size = cluster.ports.length
  const writers = await Promise.all(
    users.map(
      async (user, n) =>
        new Writer(user as UserId, id, await cluster.token(user), () => cluster.relay(n % size).url),
    ),
  )
  atExit(() => {
    for (const w of writers) w.stop()
  })
  writers[0]!.connect()
  await writers[0]!.ready("synced")
  createConversation(writers[0]!.doc, users[0] as UserId, {
    kind: "group",
    id,
    participants: users.slice(1) as UserId[],
  })
  await writers[0]!.ready("saved")
  for (const w of writers.slice(1)) w.connect()
  await Promise.all(writers.slice(1).map((w) => w.ready("synced")))
  return { id, writers }
}

/**
 * Reads the conversation through a fresh connection to each relay and checks what the audit
 * promises: every acknowledged message there, none twice, numbers 1..n.
 */
export async function verifyConversation(
  cluster: TestCluster,
  id: string,
  writers: readonly Writer[],
  reader: string,
): Promise<void> {
  const sent = writers.flatMap((w) => w.sent.map((s) => s.id)).sort()
  const acked = writers.flatMap((w) => [...w.acked.keys()])
  for (let i = 0; i < cluster.ports.length; i++) {
    const relay = cluster.relays[i]
    if (!relay) continue
    const client = new TestClient(relay.url, id, await cluster.token(reader))
    try {
      const done = await Promise.race([
        client
          .until(() => {
            const list = listMessages(client.doc, { last: 100_000 })
            return list.length >= sent.length && list.every((m) => m.seq !== undefined)
          })
          .then(() => true),
        sleep(30_000).then(() => false),
      ])
      const messages = listMessages(client.doc, { last: 100_000 })
      check(done, `relay ${i}: all ${sent.length} messages readable and numbered`, {
        have: messages.length,
        unnumbered: messages.filter((m) => m.seq === undefined).length,
      })
      const ids = messages.map((m) => m.id)
      check(new Set(ids).size === ids.length, `relay ${i}: no message twice`, ids.length - new Set(ids).size)
      const missing = acked.filter((a) => !ids.includes(a))
      check(missing.length === 0, `relay ${i}: every acknowledged message present`, missing)
      const seqs = messages.map((m) => m.seq)
      check(
        seqs.every((s, n) => s === n + 1),
        `relay ${i}: sequence numbers 1..${messages.length}, no gap or repeat`,
        seqs.slice(0, 50),
      )
    } finally {
      client.close()
    }
  }
}

/** Counts of pino lines by message, of one relay (errors and warnings), to print. */
export function logSummary(lines: readonly string[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const line of lines) {
    try {
      const parsed = JSON.parse(line) as { level: number; msg: string }
      if (parsed.level >= 40)
        counts[`${parsed.level} ${parsed.msg}`] = (counts[`${parsed.level} ${parsed.msg}`] ?? 0) + 1
    } catch {}
  }
  return counts
}
