import { rmSync } from "node:fs"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import pg from "pg"
import { afterAll, describe, expect, it } from "vitest"
import type { HookEvent } from "../../src/hooks/events.js"
import { TestClient } from "../helpers/clients.js"
import { type StoredEvent, storedEventLog } from "../helpers/event-log.js"
import { DATABASE_URL, postgresUnreachable, type ScratchSchema, scratchSchema } from "../helpers/postgres.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const dirs: string[] = []
const schemas: ScratchSchema[] = []
// After the file, not after each test: the SQLite and the PostgreSQL run go at once (relays, data
// directories and schemas of their own).
afterAll(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  for (const schema of schemas.splice(0)) await schema.drop()
})

const sentMessages = (log: StoredEvent[]) =>
  log
    .filter((e) => e.event.event.type === "message.sent")
    .map((e) => (e.event.subject as { message: { id: string } }).message.id)

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 15_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

const id = "g~eventlog" as ConversationId

async function send(relay: RelayProcess, numbers: readonly number[], create = false): Promise<void> {
  const alice = new TestClient(relay.url, id, await relay.token("alice"))
  await alice.opened
  await alice.synced()
  if (create)
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  for (const n of numbers)
    sendMessage(alice.doc, "alice" as UserId, { id: `msg-000${n}` as MessageId, body: `m${n}` })
  await alice.allSaved()
  alice.close()
}

/** Where the relays keep their data, and how the test reads their event log from outside. */
interface Store {
  readonly args: readonly string[]
  readLog(dataDir: string): Promise<StoredEvent[]>
}

const sqlite = async (): Promise<Store> => ({ args: [], readLog: async (dataDir) => storedEventLog(dataDir) })

async function postgres(): Promise<Store> {
  const scratch = await scratchSchema()
  schemas.push(scratch)
  return {
    args: ["--storage", "postgres", "--database-url", scratch.url],
    readLog: async () => {
      const client = new pg.Client({ connectionString: scratch.url })
      await client.connect()
      try {
        const { rows } = await client.query<{ id: string; payload: string }>(
          "SELECT id, payload FROM parley_event_log ORDER BY id",
        )
        return rows.map((row) => ({ id: Number(row.id), event: JSON.parse(row.payload) as HookEvent }))
      } finally {
        await client.end()
      }
    },
  }
}

function restartSuite(name: string, open: () => Promise<Store>) {
  describe.concurrent(`the event log across relay crashes: ${name}`, {
    timeout: CONCURRENT_TIMEOUT_MS,
  }, () => {
    it("keeps every event exactly once, with ids that keep increasing, through SIGKILLs and restarts", async () => {
      const store = await open()
      const first = await startRelayProcess({ args: store.args })
      dirs.push(first.dataDir)
      const sent = async (n: number) => sentMessages(await store.readLog(first.dataDir)).length >= n
      // Killed as soon as the changes are saved: their events may not be recorded yet.
      await send(first, [1, 2, 3], true)
      await first.kill()

      const again = { args: store.args, dataDir: first.dataDir, secret: first.secret }
      const second = await startRelayProcess(again)
      // Opening the document re-derives what the crash left unrecorded; the new messages follow.
      await send(second, [4, 5])
      await until(() => sent(5), "five message.sent events")
      // Killed once everything is recorded: nothing may be recorded twice after this restart.
      await second.kill()

      const third = await startRelayProcess(again)
      await send(third, [6])
      await until(() => sent(6), "six message.sent events")
      await third.kill()

      const log = await store.readLog(first.dataDir)
      expect(sentMessages(log)).toEqual([
        "msg-0001",
        "msg-0002",
        "msg-0003",
        "msg-0004",
        "msg-0005",
        "msg-0006",
      ])
      expect(log.filter((e) => e.event.event.type === "conversation.created")).toHaveLength(1)
      const ids = log.map((e) => e.id)
      expect(ids.every((n, i) => i === 0 || n > ids[i - 1]!)).toBe(true)
      expect(new Set(log.map((e) => e.event.event.id)).size).toBe(log.length)
      // Every message carries its number: the sequencing after the crash was waited for.
      const seqs = log
        .filter((e) => e.event.event.type === "message.sent")
        .map((e) => (e.event.subject as { message: { seq?: number } }).message.seq)
      expect(seqs).toEqual([1, 2, 3, 4, 5, 6])
    }, 60_000)
  })
}

restartSuite("sqlite", sqlite)

const unreachable = await postgresUnreachable()
if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("the event log across relay crashes: postgres", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails here instead of skipping.
  restartSuite("postgres", postgres)
}
