import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { runDeadLetterCli } from "../../src/hooks/dead-letter-cli.js"
import { SqliteOutbox } from "../../src/hooks/sqlite-outbox.js"
import { sampleEvent } from "./outbox-conformance.js"

const dirs: string[] = []
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

async function dataDirWithDeadLetters(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "parley-dead-cli-"))
  dirs.push(dir)
  const outbox = new SqliteOutbox(dir)
  const deliveries = await outbox.enqueue({
    document: "c1",
    events: [
      { event: sampleEvent("evt_a"), targets: ["hook:push.ts"] },
      { event: sampleEvent("evt_b"), targets: ["webhook:http://x/"] },
    ],
  })
  for (const d of deliveries) await outbox.deadLetter(d.seq, d.target, 8, "down", 0)
  await outbox.close()
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
    const outbox = new SqliteOutbox(dir)
    expect((await outbox.pending()).map((d) => [d.event.event.id, d.attempts])).toEqual([["evt_a", 0]])
    expect((await outbox.deadLetters()).map((d) => d.event.event.id)).toEqual(["evt_b"])
    await outbox.close()
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
