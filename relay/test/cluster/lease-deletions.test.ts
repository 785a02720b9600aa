import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, listMessages, newConversationId, type UserId } from "@parley/shared"
import { Redis } from "ioredis"
import pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import { REDIS_URL, redisUnreachable, startCluster } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { RECORDER, readLines } from "../hooks/recorder.js"
import { Writer } from "./writer.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function until(what: string, check: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what}: not done after ${ms} ms`)
    await sleep(100)
  }
}

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("hook deliveries while the cluster's leases keep vanishing", () => {
    it.skip(`skipped: ${missing}`, () => {})
  })
} else {
  describe("hook deliveries while the cluster's leases keep vanishing", () => {
    it("leaves none owed while the relays run, and delivers and logs a conversation's messages in order", async () => {
      const hooks = mkdtempSync(join(tmpdir(), "parley-lease-deletions-hooks-"))
      cleanup.push(() => rmSync(hooks, { recursive: true, force: true }))
      writeFileSync(join(hooks, "recorder.mjs"), RECORDER)
      const log = join(hooks, "deliveries.jsonl")
      const cluster = await startCluster(2, {
        args: ["--hooks", hooks, "--hook-timeout-ms", "5000"],
        env: { HOOK_LOG: log, HOOK_BLOCK: "0" },
        hooksUseHooksApi: true,
      })
      cleanup.push(() => cluster.stop())
      const id = newConversationId()
      const users = ["alice", "bob"] as UserId[]
      // One writer on each relay: both relays hold the conversation, and the one that does not order it
      // forwards its writer's changes, or takes the conversation over once its lease is gone.
      const writers = await Promise.all(
        users.map(
          async (user, i) => new Writer(user, id, await cluster.token(user), () => cluster.relay(i).url),
        ),
      )
      for (const w of writers) cleanup.push(() => w.stop())
      writers[0]!.connect()
      await writers[0]!.ready("synced")
      createConversation(writers[0]!.doc, users[0]!, { kind: "group", id, participants: users })
      await writers[0]!.ready("saved")
      writers[1]!.connect()
      await writers[1]!.ready("synced")

      // A Redis restart as an outside probe simulated it: the conversation's lease deleted every 500 ms for 6 s.
      const redis = new Redis(REDIS_URL)
      cleanup.push(() => redis.disconnect())
      const deletions = (async () => {
        for (let n = 0; n < 12; n++) {
          await sleep(500)
          await redis.del(`${cluster.prefix}lease:${id}`)
        }
      })()
      for (let round = 0; round < 60; round++) {
        for (const w of writers) w.send(`${w.user} ${round}`)
        await sleep(100)
      }
      await deletions
      await Promise.all(writers.map((w) => w.settled(60_000)))
      const sent = writers.flatMap((w) => w.sent.map((s) => s.id))

      // Nothing stays owed while both relays run (before: a delivery stayed owed, never attempted, while
      // hundreds of later ones went out, until a relay was started again).
      const db = new pg.Client({ connectionString: cluster.schema.url })
      await db.connect()
      cleanup.push(() => db.end())
      const owed = async () =>
        Number(
          (
            await db.query<{ n: string }>(
              "SELECT count(*) AS n FROM parley_hook_deliveries WHERE dead_at IS NULL",
            )
          ).rows[0]!.n,
        )
      const undelivered = () => {
        const delivered = new Set(readLines(log).map((d) => d.message))
        return sent.filter((m) => !delivered.has(m))
      }
      // Delivered (the last changes' events may be recorded by a takeover still under way), then paid.
      await until(
        "every message delivered to the hook",
        async () => undelivered().length === 0,
        30_000,
      ).catch(() => undefined)
      await until("nothing owed", async () => (await owed()) === 0, 30_000)
      const deliveries = readLines(log)
      const delivered = new Set(deliveries.map((d) => d.message))
      expect(sent.filter((m) => !delivered.has(m))).toEqual([])
      // In the conversation's order: each message's first delivery after its predecessor's (a repeat,
      // at least once, may come later).
      const firsts: number[] = []
      const seen = new Set<string>()
      for (const d of deliveries) {
        if (seen.has(d.message)) continue
        seen.add(d.message)
        firsts.push(d.seq)
      }
      expect(firsts).toEqual([...firsts].sort((a, b) => a - b))
      // And the event log holds them in that order, once each.
      const { rows } = await db.query<{ payload: string }>(
        "SELECT payload FROM parley_event_log WHERE type = 'message.sent' ORDER BY id",
      )
      const logged = rows.map(
        (r) => (JSON.parse(r.payload) as { subject: { message: { seq: number } } }).subject.message.seq,
      )
      expect(logged).toEqual(listMessages(writers[0]!.doc, { last: 10_000 }).map((m) => m.seq))
    }, 120_000)
  })
}
