import { createHash } from "node:crypto"
import { createConversation, newConversationId, sendMessage, type UserId } from "@parley/shared"
import pg from "pg"
import { afterAll, describe, expect, it } from "vitest"
import { runRebuildInboxesCli } from "../src/inbox/rebuild-cli.js"
import { runEraseUserCli } from "../src/purge/erase-user-cli.js"
import { runDamagedCli } from "../src/storage/damaged-cli.js"
import { lockPostgresForCommand } from "../src/storage/postgres-relays-lock.js"
import { TestClient } from "./helpers/clients.js"
import { DATABASE_URL, postgresUnreachable, type ScratchSchema, scratchSchema } from "./helpers/postgres.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const schemas: ScratchSchema[] = []
afterAll(async () => {
  await stopRelayProcesses()
  for (const schema of schemas.splice(0)) await schema.drop()
})

/** Storage flags for a schema of the test's own, and the schema's name. */
async function storage(): Promise<{ args: string[]; schema: string }> {
  const scratch = await scratchSchema()
  schemas.push(scratch)
  return { args: ["--storage", "postgres", "--database-url", scratch.url], schema: scratch.schema }
}

/** Runs `erase-user bob` on `args`' database: its exit code and the one line it printed, if any. */
async function eraseBob(args: string[]): Promise<{ code: number; said: string }> {
  const lines: string[] = []
  const code = await runEraseUserCli(["bob", ...args], (l) => lines.push(l), {})
  return { code, said: lines.join("\n") }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Waits for `check`, at most 10 s: on time-out the test's assertions show what happened instead. */
async function until(check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!(await check()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
}

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("offline commands beside relays on PostgreSQL", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  describe("offline commands beside relays on PostgreSQL", { timeout: 60_000 }, () => {
    it("are refused while a relay uses the database's schema, and run once it is gone, however it went", async () => {
      const { args, schema } = await storage()
      const relay = await startRelayProcess({ args })
      // Before, erase-user reported the messages erased and the running relay wrote them back.
      const refused = await eraseBob(args)
      expect(refused.code).toBe(1)
      expect(refused.said).toMatch(
        /^parley-relay erase-user: parley-relay \(.*since .*\) is using it: stop the relays first/,
      )
      const lines: string[] = []
      expect(await runRebuildInboxesCli(args, (l) => lines.push(l), {})).toBe(1)
      expect(
        await runDamagedCli(["restore", "g~x", "--from", DATABASE_URL, ...args], (l) => lines.push(l), {}),
      ).toBe(1)
      expect(lines).toEqual([
        expect.stringMatching(/^parley-relay rebuild-inboxes: .* is using it/),
        expect.stringMatching(/^parley-relay damaged restore: .* is using it/),
      ])
      // Listing damaged documents runs beside relays; so do commands on another schema of the database.
      expect(await runDamagedCli(["list", ...args], () => {}, {})).toBe(0)
      // Another schema of the database holding no relay's tables: refused, not created and "erased".
      const empty = await eraseBob((await storage()).args)
      expect(empty).toEqual({
        code: 1,
        said: "parley-relay erase-user: no relay's documents in this database (schema): check --database-url",
      })

      // PostgreSQL drops the lock's connection (a restart, a failover): the relay holds the lock again.
      const admin = new pg.Client({ connectionString: DATABASE_URL })
      await admin.connect()
      try {
        // This relay's lock only: relays of other test files hold theirs, under their schemas' keys.
        const key = createHash("sha256").update(schema).digest().readUInt32BE(0) >>> 1
        const holders = `FROM pg_locks
            WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 2 AND granted`
        const held = async () =>
          (await admin.query<{ pid: number }>(`SELECT pid ${holders}`, [0x50726c72, key])).rows.map(
            (r) => r.pid,
          )
        const lost = await held()
        expect(lost.length).toBeGreaterThan(0)
        await admin.query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", [lost])
        // Watched without taking the lock: a command that took it in the gap would stop the relay
        // (the next test), which is not what this one is about.
        await until(async () => (await held()).some((pid) => !lost.includes(pid)))
      } finally {
        await admin.end()
      }
      const during = await eraseBob(args)
      expect(during).toMatchObject({
        code: 1,
        said: expect.stringMatching(/is using it: stop the relays first/),
      })
      expect(relay.lines.some((line) => line.includes("holding the relays' lock on PostgreSQL again"))).toBe(
        true,
      )

      // SIGKILL: the session ends with the process, and the command runs at once.
      await relay.kill()
      let after = { code: -1, said: "" }
      await until(async () => {
        after = await eraseBob(args)
        return after.code === 0
      })
      expect(after).toMatchObject({ code: 0, said: expect.stringContaining('"messages":0') })
    })

    it("refuses a second relay without a cluster on the same database (each would compact away the other's changes)", async () => {
      const { args } = await storage()
      await startRelayProcess({ args })
      // Before: both ran; clients of one never saw the other's messages, and at the stop half the
      // acknowledged messages were gone (each relay's compaction deleted the other's log rows).
      const second = await startRelayProcess({ args }).then(
        () => "started",
        (error: Error) => error.message,
      )
      expect(second).toMatch(
        /parley-relay \(alone\) \(.*\) is using it: several relays on one database must all run as a cluster \(--redis-url/,
      )
      // Another schema of the same database is another deployment.
      expect((await startRelayProcess({ args: (await storage()).args })).url).toMatch(/^ws/)
    })

    it("stops a relay without a cluster whose lock another took while its lock's connection was down, storing nothing more", async () => {
      const { args, schema } = await storage()
      const relay = await startRelayProcess({ args })
      const id = newConversationId()
      const alice = new TestClient(relay.url, id, await relay.token("alice"))
      await alice.synced()
      createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
      await alice.allSaved()
      const key = createHash("sha256").update(schema).digest().readUInt32BE(0) >>> 1
      const admin = new pg.Client({ connectionString: DATABASE_URL })
      await admin.connect()
      let release: (() => Promise<void>) | undefined
      try {
        await admin.query(
          `SELECT pg_terminate_backend(pid) FROM pg_locks
            WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 2 AND granted`,
          [0x50726c72, key],
        )
        // Taken before the relay holds it again (it waits a second): it must not go on writing beside.
        release = await lockPostgresForCommand(args[3]!, "erase-user", () => {}, 10_000)
        expect(release).toBeDefined()
        // Before: stored and acknowledged until the relay's next attempt at its lock (up to 10 s later),
        // and lost once the other relay compacted what it had loaded (an outside probe: 175 of 330).
        const saves = alice.saves.length
        sendMessage(alice.doc, "alice" as UserId, { body: "after the takeover" })
        // Refused, or (the relay already found its lock taken and stopped) its connection closed: never saved.
        await alice.until(
          () => alice.errors.length > 0 || alice.saves.length > saves || alice.closeEvent !== undefined,
        )
        expect(alice.saves.length).toBe(saves)
        // Storage refused it, or the relay, stopping already, did: retryable either way.
        for (const error of alice.errors) expect(["STORAGE_UNAVAILABLE", "UNAVAILABLE"]).toContain(error.code)
        alice.close()
        await relay.waitForLog((l) => typeof l.msg === "string" && l.msg.includes("this relay stops"))
        await relay.waitForLog((l) => l.msg === "stopped")
        // The process ends, for its supervisor to start it again (refused while the other holds it).
        expect(
          await Promise.race([relay.exited.then(() => "exited"), sleep(10_000).then(() => "running")]),
        ).toBe("exited")
      } finally {
        await release?.()
        await admin.end()
      }
    })

    it("names the fence's table when another session locks its row: not ready, and ready again once released", async () => {
      const { args, schema } = await storage()
      const relay = await startRelayProcess({ args })
      const readyz = async () => {
        const response = await fetch(`${relay.httpUrl}/readyz`)
        return { status: response.status, body: await response.text() }
      }
      const admin = new pg.Client({ connectionString: DATABASE_URL })
      await admin.connect()
      try {
        await admin.query("BEGIN")
        await admin.query(`SELECT * FROM ${schema}.parley_relay_fence FOR UPDATE`)
        // Before: "canceling statement due to lock timeout", naming nothing.
        let answer = { status: 0, body: "" }
        await until(async () => {
          answer = await readyz()
          return answer.status === 503
        })
        expect(answer.body).toContain("parley_relay_fence is locked")
        await admin.query("ROLLBACK")
        await until(async () => (await readyz()).status === 200)
        expect((await readyz()).status).toBe(200)
      } finally {
        await admin.end()
      }
    })

    it("keeps a relay from starting while a command runs on its database", async () => {
      const { args } = await storage()
      // A database a relay has used (its tables there), now stopped.
      await (await startRelayProcess({ args })).kill()
      let said: string[] = []
      let release: (() => Promise<void>) | undefined
      // The killed relay's session holds the lock until PostgreSQL notices its connection is gone (in CI,
      // under load, not yet when asked at once): asked again until then.
      await until(async () => {
        said = []
        release = await lockPostgresForCommand(args[3]!, "erase-user", (l) => said.push(l), 10_000)
        return release !== undefined
      })
      expect(release).toBeDefined()
      const refused = await startRelayProcess({ args }).then(
        () => "started",
        (error: Error) => error.message,
      )
      expect(refused).toMatch(/parley-relay erase-user \(.*\) is using it: start the relay once it finished/)
      await release!()
      const relay = await startRelayProcess({ args })
      expect(relay.url).toMatch(/^ws/)
      expect(said).toEqual([])
    })
  })
}
