import { describe, expect, it } from "vitest"
import { PostgresBackend } from "../../src/backend/postgres.js"
import { sampleEvent } from "../conformance/outbox.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "../helpers/postgres.js"

// Every backend's outbox passes the backend suite (`../conformance/backend.ts`, run by `../backend-*.test.ts`);
// these are PostgreSQL's concurrency cases on top.
const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("postgres outbox", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  describe("postgres outbox", () => {
    it("removes an event once its last target has it, also when targets finish at the same time", async () => {
      const scratch = await scratchSchema()
      const backend = await PostgresBackend.open(scratch.url)
      const { outbox } = backend
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
        await backend.close()
        await scratch.drop()
      }
    })

    it("records an error message holding NUL (PostgreSQL text cannot) instead of failing", async () => {
      const scratch = await scratchSchema()
      const backend = await PostgresBackend.open(scratch.url)
      const { outbox } = backend
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
        await backend.close()
        await scratch.drop()
      }
    })

    it("keeps every event and the highest watermark when enqueues of one document run at the same time", async () => {
      const scratch = await scratchSchema()
      const one = await PostgresBackend.open(scratch.url)
      const other = await PostgresBackend.open(scratch.url)
      const [first, second] = [one.outbox, other.outbox]
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
        await one.close()
        await other.close()
        await scratch.drop()
      }
    })
  })
}
