import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { PostgresOutbox } from "../../src/hooks/postgres-outbox.js"
import { SqliteOutbox } from "../../src/hooks/sqlite-outbox.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { runOutboxConformance, sampleEvent } from "./outbox-conformance.js"

runOutboxConformance("memory", async () => ({ outbox: new MemoryOutbox() }))

runOutboxConformance("sqlite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-outbox-"))
  return {
    outbox: new SqliteOutbox(dir),
    reopen: async () => new SqliteOutbox(dir),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  }
})

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("outbox conformance: postgres", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  runOutboxConformance("postgres", async () => {
    // A schema per test: other test files share the database, and each test starts empty.
    const scratch = await scratchSchema()
    return {
      outbox: await PostgresOutbox.open(scratch.url),
      reopen: () => PostgresOutbox.open(scratch.url),
      cleanup: () => scratch.drop(),
    }
  })

  describe("postgres outbox", () => {
    it("removes an event once its last target has it, also when targets finish at the same time", async () => {
      const scratch = await scratchSchema()
      const outbox = await PostgresOutbox.open(scratch.url)
      try {
        const targets = ["a", "b", "c", "d"]
        const deliveries = await outbox.enqueue({
          document: "c1",
          events: Array.from({ length: 10 }, (_, i) => ({ event: sampleEvent(`e${i}`), targets })),
        })
        await Promise.all(deliveries.map((d) => outbox.delivered(d.seq, d.target)))
        expect(await outbox.pending()).toEqual([])
        const { default: pg } = await import("pg")
        const client = new pg.Client({ connectionString: scratch.url })
        await client.connect()
        const { rows } = await client.query("SELECT count(*)::int AS n FROM parley_hook_events")
        await client.end()
        expect(rows[0].n).toBe(0)
      } finally {
        await outbox.close()
        await scratch.drop()
      }
    })

    it("records an error message holding NUL (PostgreSQL text cannot) instead of failing", async () => {
      const scratch = await scratchSchema()
      const outbox = await PostgresOutbox.open(scratch.url)
      try {
        const [d] = await outbox.enqueue({
          document: "c1",
          events: [{ event: sampleEvent("e1"), targets: ["a"] }],
        })
        await outbox.retryLater(d!.seq, "a", 1, 5, "bad\u0000byte")
        expect((await outbox.pending())[0]).toMatchObject({ attempts: 1, lastError: "bad\uFFFDbyte" })
        await outbox.deadLetter(d!.seq, "a", 2, "still\u0000bad", 6)
        expect((await outbox.deadLetters())[0]).toMatchObject({ attempts: 2, lastError: "still\uFFFDbad" })
      } finally {
        await outbox.close()
        await scratch.drop()
      }
    })

    it("keeps every event and the highest watermark when enqueues of one document run at the same time", async () => {
      const scratch = await scratchSchema()
      const first = await PostgresOutbox.open(scratch.url)
      const second = await PostgresOutbox.open(scratch.url)
      try {
        const ids = Array.from({ length: 20 }, (_, i) => `e${i}`)
        const seqs = await Promise.all(
          ids.map(async (id, i) => {
            const [d] = await (i % 2 ? first : second).enqueue({
              document: "c1",
              events: [{ event: sampleEvent(id), targets: ["a"] }],
              through: i,
            })
            return d!.seq
          }),
        )
        expect(new Set(seqs).size).toBe(ids.length)
        const pending = await first.pending()
        expect(pending.map((d) => d.seq)).toEqual([...seqs].sort((a, b) => a - b))
        expect(await first.watermark("c1")).toBe(ids.length - 1)
      } finally {
        await first.close()
        await second.close()
        await scratch.drop()
      }
    })
  })
}
