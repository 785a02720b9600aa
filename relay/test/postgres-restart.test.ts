import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  createConversation,
  ErrorCode,
  listMessages,
  type MessageId,
  newConversationId,
  Rule,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { TestClient } from "./helpers/clients.js"
import { DATABASE_URL, postgresUnreachable, type ScratchSchema, scratchSchema } from "./helpers/postgres.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"
import { RECORDER, readLines } from "./hooks/recorder.js"
import { updateOf } from "./policy/fixtures.js"

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const alice = "alice" as UserId
const mallory = "mallory" as UserId

/** Waits for `check`, at most 10 s: on time-out the test's assertions show what happened instead. */
async function until(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
}

const clients: TestClient[] = []
const dirs: string[] = []
const schemas: ScratchSchema[] = []
// After the file, not after each test: the tests run at once (relays, folders and schemas of their own).
afterAll(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  for (const schema of schemas.splice(0)) await schema.drop()
})

/** Relay flags for PostgreSQL storage in a schema of this test's own (other files share the database). */
async function postgresArgs(): Promise<string[]> {
  const scratch = await scratchSchema()
  schemas.push(scratch)
  return ["--storage", "postgres", "--database-url", scratch.url]
}

const unreachable = await postgresUnreachable()

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("a relay on PostgreSQL across a restart", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
  })
} else {
  // With PARLEY_REQUIRE_SERVICES=1 an unreachable database fails every test here instead of skipping.
  describe.concurrent("a relay on PostgreSQL across a restart", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
    it("delivers an event whose delivery a SIGKILL interrupted, with its id, after the restart", async () => {
      const hooks = mkdtempSync(join(tmpdir(), "parley-pg-hooks-"))
      dirs.push(hooks)
      writeFileSync(join(hooks, "recorder.mjs"), RECORDER)
      const log = join(hooks, "deliveries.jsonl")
      const args = [...(await postgresArgs()), "--hooks", hooks, "--hook-timeout-ms", "600000"]
      const first = await startRelayProcess({
        args,
        hooksUseHooksApi: true,
        env: { HOOK_LOG: log, HOOK_BLOCK: "1" },
      })
      const id = newConversationId()
      const a = new TestClient(first.url, id, await first.token(alice))
      clients.push(a)
      await a.synced()
      createConversation(a.doc, alice, { kind: "group", id, participants: [] })
      for (const n of [1, 2, 3]) sendMessage(a.doc, alice, { id: `msg-000${n}` as MessageId, body: `m${n}` })
      await a.allSaved()
      // The first event is being delivered (the handler started) but never acknowledged.
      await until(() => readLines(log).length === 1)
      await first.kill()

      // Only the outbox remembers these events: the documents were all recorded (watermark at their end).
      const second = await startRelayProcess({
        args,
        hooksUseHooksApi: true,
        secret: first.secret,
        env: { HOOK_LOG: log, HOOK_BLOCK: "0" },
      })
      await until(() => readLines(log).filter((l) => l.pid === second.child.pid).length >= 3)
      const lines = readLines(log)
      const before = lines.filter((l) => l.pid === first.child.pid)
      const after = lines.filter((l) => l.pid === second.child.pid)
      expect(before.map((l) => l.message)).toEqual(["msg-0001"])
      expect(after.map((l) => l.message)).toEqual(["msg-0001", "msg-0002", "msg-0003"])
      expect(after.map((l) => l.seq)).toEqual([1, 2, 3])
      expect(after[0]!.id).toBe(before[0]!.id)
    })

    it("keeps a client id bound to its user: another user writing under it after the restart is refused", async () => {
      const args = await postgresArgs()
      const first = await startRelayProcess({ args })
      const id = newConversationId()
      const a = new TestClient(first.url, id, await first.token(alice))
      clients.push(a)
      await a.synced()
      createConversation(a.doc, alice, { kind: "group", id, participants: [mallory] })
      sendMessage(a.doc, alice, { body: "from alice" })
      await a.allSaved()
      const aliceClientId = a.doc.clientID
      await first.kill()

      const second = await startRelayProcess({ args, secret: first.secret })
      const m = new TestClient(second.url, id, await second.token(mallory))
      clients.push(m)
      await m.synced()
      await m.until(() => listMessages(m.doc, { last: 10 }).some((msg) => msg.body === "from alice"))
      // A scratch replica of mallory's state that writes under alice's client id, with mallory as author.
      const forged = new Y.Doc()
      Y.applyUpdate(forged, Y.encodeStateAsUpdate(m.doc))
      forged.clientID = aliceClientId
      m.sendUpdate(updateOf(forged, (d) => sendMessage(d, mallory, { body: "under alice's id" })))
      const forgedClock = Y.getState(forged.store, aliceClientId)
      // Refused, or (were the binding lost) acknowledged as saved: either way the assertion decides.
      await m.until(
        () =>
          m.errors.length > 0 ||
          m.saves.some((sv) => (Y.decodeStateVector(sv).get(aliceClientId) ?? 0) >= forgedClock),
      )
      expect(m.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.clientIdOwner })
      // Mallory under an id of her own is still accepted.
      sendMessage(m.doc, mallory, { body: "from mallory" })
      await m.allSaved()
      expect(listMessages(m.doc, { last: 10 }).map((msg) => msg.body)).toEqual(["from alice", "from mallory"])
    })
  })
}
