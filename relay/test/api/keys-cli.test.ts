import { join, resolve } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { secretMatches, splitApiKey } from "../../src/api/keys.js"
import { runKeysCli } from "../../src/api/keys-cli.js"
import { PostgresBackend } from "../../src/backend/postgres.js"
import { SqliteBackend } from "../../src/backend/sqlite.js"
import { DATABASE_URL, postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { freshDataDir } from "./helpers.js"

async function run(...argv: string[]) {
  const lines: string[] = []
  const notes: string[] = []
  const code = await runKeysCli(
    argv,
    (line) => lines.push(line),
    {},
    (line) => notes.push(line),
  )
  return { code, lines, notes }
}

/** The checks every storage location passes: `where` are the flags naming it. */
async function createListRevoke(
  where: string[],
  stored: () => Promise<{ get(id: string): Promise<unknown> }>,
) {
  const created = await run("create", "peek", "--scopes", "messages:write,events:read", ...where)
  expect(created.code).toBe(0)
  const shown = JSON.parse(created.lines[0]!)
  expect(shown).toMatchObject({ name: "peek", scopes: ["messages:write", "events:read"] })
  const { id, secret } = splitApiKey(shown.key)!
  const record = (await (await stored()).get(id)) as Parameters<typeof secretMatches>[0]
  expect(secretMatches(record, secret)).toBe(true)

  const listed = await run("list", ...where)
  expect(listed.code).toBe(0)
  expect(listed.lines.map((l) => JSON.parse(l).name)).toEqual(["peek"])
  expect(listed.lines.join("\n")).not.toContain(secret)

  const twice = await run("create", "peek", "--scopes", "messages:write", ...where)
  expect(twice).toMatchObject({ code: 2, lines: [expect.stringContaining("already named")] })
  expect((await run("revoke", id, ...where)).code).toBe(0)
  expect((await run("revoke", "peek", ...where)).code).toBe(1)
  expect(JSON.parse((await run("list", ...where)).lines[0]!).revokedAt).toEqual(expect.any(String))
}

describe("parley-relay keys", () => {
  const opened: { close(): Promise<void> }[] = []
  afterEach(async () => {
    for (const backend of opened.splice(0)) await backend.close()
  })

  it("creates a key shown once, lists keys without secrets, refuses a duplicate name and revokes (SQLite)", async () => {
    const dir = freshDataDir()
    await createListRevoke(["--data-dir", dir], async () => {
      const backend = new SqliteBackend(dir)
      opened.push(backend)
      return backend.keys
    })
  })

  it("says on stderr which store it wrote to, and when it had to create a new, empty one", async () => {
    const dir = freshDataDir()
    const database = join(resolve(dir), "parley.sqlite")
    const first = await run("create", "peek", "--scopes", "events:read", "--data-dir", dir)
    expect(first.code).toBe(0)
    // stdout stays the key's one JSON line, for scripts.
    expect(first.lines).toHaveLength(1)
    expect(first.notes).toEqual([
      `parley-relay keys: store: SQLite ${database} (--data-dir ${resolve(dir)})`,
      expect.stringContaining("created a new, empty one"),
    ])
    const second = await run("create", "poke", "--scopes", "events:read", "--data-dir", dir)
    expect(second.notes).toEqual([
      `parley-relay keys: store: SQLite ${database} (--data-dir ${resolve(dir)})`,
    ])
    expect((await run("list", "--data-dir", dir)).notes).toEqual(second.notes)
  })

  it("explains bad use: unknown scopes, no scopes, bad names, a missing database", async () => {
    const dir = freshDataDir()
    expect((await run("create", "x", "--scopes", "admin", "--data-dir", dir)).lines[0]).toContain(
      'unknown scope "admin"',
    )
    expect((await run("create", "x", "--data-dir", dir)).lines[0]).toContain("at least one scope")
    expect((await run("create", "Bad Name", "--scopes", "events:read", "--data-dir", dir)).code).toBe(2)
    expect((await run("list", "--data-dir", `${dir}/nothing`)).lines[0]).toContain("no relay database")
    const usage = await run("rotate", "--data-dir", dir)
    expect(usage.code).toBe(2)
    expect(usage.lines[0]).toContain("Usage: parley-relay keys")
  })
})

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("parley-relay keys on PostgreSQL", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails here instead of skipping.
  describe("parley-relay keys on PostgreSQL", () => {
    it("creates, lists and revokes keys in the database", async () => {
      const scratch = await scratchSchema()
      const opened: PostgresBackend[] = []
      try {
        await createListRevoke(["--storage", "postgres", "--database-url", scratch.url], async () => {
          const backend = await PostgresBackend.open(scratch.url)
          opened.push(backend)
          return backend.keys
        })
      } finally {
        for (const backend of opened) await backend.close()
        await scratch.drop()
      }
    })
  })
}
