import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  createConversation,
  getInboxEntry,
  inboxEntryFor,
  listMessages,
  newConversationId,
  type UserId,
} from "@parley/shared"
import pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { haproxyPath, redisUnreachable, startCluster, startLoadBalancer } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { RECORDER, readLines } from "../hooks/recorder.js"
import { Writer } from "./writer.js"

const users = ["alice", "bob", "carol", "dave", "erin", "frank"] as UserId[]

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** `promise`, or a failure naming `what` (and the state `describe` gives) after `ms`: a stall says where it is. */
async function within<T>(
  ms: number,
  what: string,
  promise: Promise<T>,
  describe: () => string = () => "",
): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms ${describe()}`)), ms)
      }),
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** A seeded generator, so that a failing run can be repeated (the seed is printed). */
function random(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

const haproxy = haproxyPath()
const missing =
  (await postgresUnreachable()) ??
  (await redisUnreachable()) ??
  (haproxy ? undefined : "haproxy is not installed (apt-get install haproxy)")

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("relays killed at random during a burst", () => {
    it.skip(`skipped: ${missing}`, () => {})
  })
} else {
  describe("relays killed at random during a burst", () => {
    it("keeps every acknowledged message exactly once, numbers contiguous, hooks delivered and inboxes current", async () => {
      const seed = Number(process.env.CHAOS_SEED ?? Date.now() % 100_000)
      console.log(`chaos seed ${seed} (CHAOS_SEED=${seed} repeats it)`)
      const rand = random(seed)
      const hooks = mkdtempSync(join(tmpdir(), "parley-chaos-hooks-"))
      cleanup.push(() => rmSync(hooks, { recursive: true, force: true }))
      writeFileSync(join(hooks, "recorder.mjs"), RECORDER)
      const log = join(hooks, "deliveries.jsonl")
      const cluster = await startCluster(3, {
        args: ["--hooks", hooks, "--hook-timeout-ms", "5000"],
        env: { HOOK_LOG: log, HOOK_BLOCK: "0" },
        hooksUseHooksApi: true,
      })
      cleanup.push(() => cluster.stop())
      // Round-robin, not the shipped by-user hash: the participants' sockets spread over the three relays.
      const lb = await startLoadBalancer(haproxy!, cluster.ports, "roundrobin")
      cleanup.push(() => lb.stop())

      const id = newConversationId()
      const writers = await Promise.all(
        users.map(async (user) => new Writer(user, id, await cluster.token(user), () => lb.url)),
      )
      for (const w of writers) cleanup.push(() => w.stop())
      // Each wait follows the writer's reconnects: HAProxy may close a first connection (a relay it marked down).
      writers[0]!.connect()
      await writers[0]!.ready("synced")
      createConversation(writers[0]!.doc, users[0]!, { kind: "group", id, participants: users.slice(1) })
      await writers[0]!.ready("saved")
      // Round-robin: the participants spread over the three relays.
      for (const w of writers.slice(1)) w.connect()
      await Promise.all(writers.slice(1).map((w) => w.ready("synced")))

      // Every relay's log, the killed ones' too: lease losses and forwarding retries are counted at the end.
      const logs: string[] = []
      const keepLog = (i: number) => logs.push(...(cluster.relays[i]?.lines ?? []))
      const count = (msg: string) => logs.filter((line) => line.includes(`"msg":"${msg}`)).length
      let logsKept = false
      const summary = () => {
        if (!logsKept) for (let i = 0; i < 3; i++) keepLog(i)
        logsKept = true
        return (
          `chaos relays: ${count("ordering the document")} takeovers, ${count("lost the document's lease")} lease losses, ` +
          `${count("a forwarded change got no answer in time")} forwarded-change timeouts, ` +
          `${count("the event loop did not answer in time")} renewal pauses, ` +
          `${count("left the conversation's deliveries to its next owner")} deliveries left to a new owner, ` +
          `${count("the lease renewal thread failed")} renewal thread failures`
        )
      }
      // Printed whatever the outcome (before the cluster stops): what the relays went through.
      cleanup.push(() => {
        console.log(summary())
        const errors = logs.filter((line) => line.includes('"level":50'))
        if (errors.length > 0) console.log(`chaos relay errors:\n${errors.slice(0, 20).join("\n")}`)
      })
      // The burst, with a relay SIGKILLed (and restarted a moment later) at random moments.
      let kills = 0
      const chaos = (async () => {
        for (let k = 0; k < 4; k++) {
          await sleep(300 + rand() * 700)
          const victim = Math.floor(rand() * 3)
          if (!cluster.relays[victim]) continue
          keepLog(victim)
          await cluster.kill(victim)
          kills++
          await sleep(200 + rand() * 600)
          await cluster.start(victim)
        }
      })()
      for (let round = 0; round < 40; round++) {
        for (const w of writers) if (rand() < 0.7) w.send(`${w.user} ${round}`)
        await sleep(40 + rand() * 40)
      }
      await within(60_000, "the chaos schedule", chaos)
      await Promise.all(writers.map((w) => w.settled(60_000)))
      expect(kills).toBeGreaterThan(0)
      summary()
      expect(count("the lease renewal thread failed")).toBe(0)

      const sent = writers.flatMap((w) => w.sent.map((s) => s.id)).sort()
      const acked = writers.flatMap((w) => [...w.acked.keys()])
      for (let i = 0; i < 3; i++) {
        const reader = new TestClient(cluster.relay(i).url, id, await cluster.token("alice"))
        cleanup.push(() => reader.close())
        await within(30_000, `reader on relay ${i}: first sync`, reader.synced())
        await within(
          60_000,
          `reader on relay ${i}: every message, numbered`,
          reader.until(() => {
            const list = listMessages(reader.doc, { last: 10_000 })
            return list.length === sent.length && list.every((m) => m.seq !== undefined)
          }),
          () => {
            const list = listMessages(reader.doc, { last: 10_000 })
            return `(${list.length} of ${sent.length} messages, ${list.filter((m) => m.seq === undefined).length} unnumbered)`
          },
        )
        const messages = listMessages(reader.doc, { last: 10_000 })
        expect(messages.map((m) => m.id).sort()).toEqual(sent)
        expect(new Set(messages.map((m) => m.id)).size).toBe(messages.length)
        for (const a of acked) expect(messages.some((m) => m.id === a)).toBe(true)
        expect(messages.map((m) => m.seq)).toEqual(messages.map((_, n) => n + 1))
      }

      // Hooks: every message.sent delivered at least once, with its number; duplicates counted.
      const db = new pg.Client({ connectionString: cluster.schema.url })
      await db.connect()
      cleanup.push(() => db.end())
      const deadline = Date.now() + 30_000
      for (;;) {
        const { rows } = await db.query<{ n: string }>(
          "SELECT count(*) AS n FROM parley_hook_deliveries WHERE dead_at IS NULL",
        )
        if (Number(rows[0]!.n) === 0 || Date.now() > deadline) break
        await sleep(100)
      }
      const deliveries = readLines(log)
      const delivered = new Set(deliveries.map((d) => d.message))
      const missingHooks = sent.filter((m) => !delivered.has(m))
      const duplicates = deliveries.length - delivered.size
      console.log(
        `chaos: ${kills} SIGKILLs, ${sent.length} messages, ${writers.reduce((n, w) => n + w.reconnects, 0)} reconnects, ` +
          `${deliveries.length} hook deliveries (${duplicates} duplicates)`,
      )
      expect(missingHooks).toEqual([])
      const { rows: dead } = await db.query(
        "SELECT seq FROM parley_hook_deliveries WHERE dead_at IS NOT NULL",
      )
      expect(dead).toEqual([])

      // Inboxes are derived (kept current only for connected users, the rest derived when they
      // connect): every user who opens their inbox on any relay sees what a rebuild from the
      // conversation gives.
      const conversation = new TestClient(cluster.relay(0).url, id, await cluster.token("alice"))
      cleanup.push(() => conversation.close())
      await within(30_000, "conversation: first sync", conversation.synced())
      for (const [n, user] of users.entries()) {
        const inbox = new TestClient(cluster.relay(n % 3).url, `inbox~${user}`, await cluster.token(user))
        cleanup.push(() => inbox.close())
        await within(30_000, `${user}'s inbox: first sync`, inbox.synced())
        const expected = inboxEntryFor(conversation.doc, user)
        expect(expected).toBeDefined()
        await within(
          60_000,
          `${user}'s inbox equal to a rebuild`,
          inbox.until(() => {
            const entry = getInboxEntry(inbox.doc, id)
            if (!entry) return false
            const { muted: _, ...rest } = entry
            return JSON.stringify(rest) === JSON.stringify(expected)
          }),
          () => `(has ${JSON.stringify(getInboxEntry(inbox.doc, id))}, expected ${JSON.stringify(expected)})`,
        )
      }
    }, 180_000)
  })
}
