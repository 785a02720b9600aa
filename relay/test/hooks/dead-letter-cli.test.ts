import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { PostgresBackend } from "../../src/backend/postgres.js"
import { SqliteBackend } from "../../src/backend/sqlite.js"
import { runDeadLetterCli } from "../../src/hooks/dead-letter-cli.js"
import type { Outbox } from "../../src/hooks/outbox.js"
import { sampleEvent } from "../conformance/outbox.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "../helpers/postgres.js"

const dirs: string[] = []
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

/** Two dead letters in `outbox`: evt_a for a hook, evt_b for a webhook. */
async function addDeadLetters(outbox: Outbox): Promise<void> {
  const deliveries = await outbox.enqueue({
    document: "c1",
    events: [
      { event: sampleEvent("evt_a"), targets: ["hook:push.ts"] },
      { event: sampleEvent("evt_b"), targets: ["webhook:http://x/"] },
    ],
  })
  for (const d of deliveries) await outbox.deadLetter(d.seq, d.target, 8, "down", 0)
}

async function dataDirWithDeadLetters(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "parley-dead-cli-"))
  dirs.push(dir)
  const backend = new SqliteBackend(dir)
  await addDeadLetters(backend.outbox)
  await backend.close()
  return dir
}

async function run(...argv: string[]) {
  const lines: string[] = []
  const code = await runDeadLetterCli(argv, (line) => lines.push(line), {})
  return { code, lines }
}

describe("parley-relay dead-letters", () => {
  it("lists the dead letters of a data directory as JSON lines", async () => {
    const dir = await dataDirWithDeadLetters()
    const { code, lines } = await run("list", "--data-dir", dir)
    expect(code).toBe(0)
    expect(lines.map((l) => JSON.parse(l))).toMatchObject([
      { eventId: "evt_a", target: "hook:push.ts", attempts: 8, lastError: "down", document: "c1" },
      { eventId: "evt_b", target: "webhook:http://x/" },
    ])
  })

  it("replays the matching dead letters into the pending outbox", async () => {
    const dir = await dataDirWithDeadLetters()
    const { code, lines } = await run("replay", "--data-dir", dir, "--target", "hook:push.ts")
    expect(code).toBe(0)
    expect(lines).toEqual(["replayed 1 dead letter(s); the relay delivers them when it next starts"])
    const backend = new SqliteBackend(dir)
    const { outbox } = backend
    expect((await outbox.pending()).map((d) => [d.event.event.id, d.attempts])).toEqual([["evt_a", 0]])
    expect((await outbox.deadLetters()).map((d) => d.event.event.id)).toEqual(["evt_b"])
    await backend.close()
  })

  it("says so when the directory holds no outbox, and explains its usage on a bad command", async () => {
    const empty = mkdtempSync(join(tmpdir(), "parley-dead-cli-"))
    dirs.push(empty)
    const missing = await run("list", "--data-dir", empty)
    expect(missing.code).toBe(1)
    expect(missing.lines[0]).toContain("no hook outbox")
    const bad = await run("purge")
    expect(bad.code).toBe(2)
    expect(bad.lines[0]).toContain("Usage: parley-relay dead-letters list|replay")
  })
})

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("parley-relay dead-letters on PostgreSQL", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails here instead of skipping.
  describe("parley-relay dead-letters on PostgreSQL", () => {
    it("lists and replays the dead letters of the outbox in the database", async () => {
      const scratch = await scratchSchema()
      try {
        const backend = await PostgresBackend.open(scratch.url)
        const { outbox } = backend
        await addDeadLetters(outbox)
        const list = await run("list", "--storage", "postgres", "--database-url", scratch.url)
        expect(list.code).toBe(0)
        expect(list.lines.map((l) => JSON.parse(l).eventId)).toEqual(["evt_a", "evt_b"])
        const replay = await run(
          "replay",
          "--storage",
          "postgres",
          "--database-url",
          scratch.url,
          "--event-id",
          "evt_b",
        )
        expect(replay.lines).toEqual([
          "replayed 1 dead letter(s); the relay delivers them when it next starts",
        ])
        expect((await outbox.pending()).map((d) => d.event.event.id)).toEqual(["evt_b"])
        await backend.close()
      } finally {
        await scratch.drop()
      }
    })

    it("says why when the database cannot be reached", async () => {
      const { code, lines } = await run(
        "list",
        "--storage",
        "postgres",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
      )
      expect(code).toBe(1)
      expect(lines[0]).toContain("cannot open the hook outbox")
    })
  })
}
