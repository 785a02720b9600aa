import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { PostgresBackend } from "../src/backend/postgres.js"
import { SQLITE_FILE, SqliteBackend } from "../src/backend/sqlite.js"
import { runDamagedCli } from "../src/storage/damaged-cli.js"
import { loadVerified } from "../src/storage/integrity.js"
import type { RelayStorage } from "../src/storage/types.js"
import { postgresTamper, sqliteTamper } from "./helpers/damage.js"
import { postgresUnreachable, type ScratchSchema, scratchSchema } from "./helpers/postgres.js"

const cleanup: (() => Promise<void> | void)[] = []
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn()
})

function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), "parley-damaged-cli-"))
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

async function run(...argv: string[]) {
  const lines: string[] = []
  const code = await runDamagedCli(argv, (line) => lines.push(line), {})
  return { code, out: lines.join("\n") }
}

/** Stores a conversation-like document of `texts` in `storage`, one update each. */
async function store(storage: RelayStorage, name: string, texts: string[]) {
  const doc = new Y.Doc()
  const updates: Uint8Array[] = []
  doc.on("update", (u: Uint8Array) => updates.push(u))
  for (const text of texts) doc.getArray<string>("a").push([text])
  await storage.append(name, updates)
}

const textsOf = async (storage: RelayStorage, name: string) =>
  loadVerified(await storage.load(name))
    .getArray<string>("a")
    .toArray()

const unreachable = await postgresUnreachable()

describe("parley-relay damaged", () => {
  it("prints its usage and exits 2 on a wrong command line", async () => {
    expect((await run()).code).toBe(2)
    expect((await run("restore", "g~x")).code).toBe(2)
    expect((await run("list", "--bogus")).code).toBe(2)
    expect((await run("list", "--storage", "memory")).code).toBe(2)
    const help = await run("--help")
    expect(help.code).toBe(0)
    expect(help.out).toMatch(/STOP THE RELAY FIRST/)
  })

  it("refuses a backup that lacks the document or holds it damaged too", async () => {
    const live = tempDir()
    const backend = new SqliteBackend(live)
    await store(backend.documents, "g~doc", ["a", "b"])
    await backend.documents.markDamaged("g~doc", "test")
    await backend.close()
    const backup = tempDir()
    const copy = new SqliteBackend(backup)
    await store(copy.documents, "g~other", ["x"])
    await store(copy.documents, "g~doc", ["a", "b", "c"])
    await copy.close()
    const from = join(backup, SQLITE_FILE)
    await sqliteTamper(backup).deleteUpdates("g~doc", [2])
    const damagedToo = await run("restore", "g~doc", "--from", from, "--data-dir", live)
    expect(damagedToo).toMatchObject({
      code: 1,
      out: expect.stringMatching(/damaged too: the log has a gap/),
    })
    const missing = await run("restore", "g~none", "--from", from, "--data-dir", live, "--force")
    expect(missing).toMatchObject({ code: 1, out: expect.stringMatching(/holds nothing of g~none/) })
    expect((await run("list", "--data-dir", live)).out).toMatch(/"document":"g~doc","reason":"test"/)
  })

  it.skipIf(unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
    "lists and restores a damaged document in PostgreSQL from a restored copy of the database",
    async () => {
      const schemas: ScratchSchema[] = [await scratchSchema(), await scratchSchema()]
      cleanup.push(async () => {
        for (const s of schemas) await s.drop()
      })
      const [live, restored] = schemas as [ScratchSchema, ScratchSchema]
      const copy = await PostgresBackend.open(restored.url)
      await store(copy.documents, "g~pg", ["a", "b", "c"])
      await copy.close()
      const backend = await PostgresBackend.open(live.url)
      await store(backend.documents, "g~pg", ["a", "b", "c"])
      await backend.close()
      const tamper = postgresTamper(live.url)
      await tamper.deleteUpdates("g~pg", [3])
      await tamper.end()

      const pg = ["--storage", "postgres", "--database-url", live.url]
      expect((await run("list", ...pg)).out).toBe("")
      const result = await run("restore", "g~pg", "--from", restored.url, ...pg)
      expect(result.code).toBe(0)
      expect(JSON.parse(result.out)).toEqual({ document: "g~pg", restoredThrough: 3 })
      const after = await PostgresBackend.open(live.url)
      cleanup.push(() => after.close())
      expect(await textsOf(after.documents, "g~pg")).toEqual(["a", "b", "c"])
      expect(await after.documents.append("g~pg", [new Uint8Array([0, 0])])).toEqual([4])
    },
  )
})
