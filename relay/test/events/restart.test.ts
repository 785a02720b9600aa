import { rmSync } from "node:fs"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { type StoredEvent, storedEventLog } from "../helpers/event-log.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"

const dirs: string[] = []
afterEach(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

const sentMessages = (log: StoredEvent[]) =>
  log
    .filter((e) => e.event.event.type === "message.sent")
    .map((e) => (e.event.subject as { message: { id: string } }).message.id)

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 15_000
  while (!check()) {
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

describe("the event log across relay crashes", () => {
  it("keeps every event exactly once, with ids that keep increasing, through SIGKILLs and restarts", async () => {
    const first = await startRelayProcess()
    dirs.push(first.dataDir)
    // Killed as soon as the changes are saved: their events may not be recorded yet.
    await send(first, [1, 2, 3], true)
    await first.kill()

    const again = { dataDir: first.dataDir, secret: first.secret }
    const second = await startRelayProcess(again)
    // Opening the document re-derives what the crash left unrecorded; the new messages follow.
    await send(second, [4, 5])
    await until(() => sentMessages(storedEventLog(first.dataDir)).length >= 5, "five message.sent events")
    // Killed once everything is recorded: nothing may be recorded twice after this restart.
    await second.kill()

    const third = await startRelayProcess(again)
    await send(third, [6])
    await until(() => sentMessages(storedEventLog(first.dataDir)).length >= 6, "six message.sent events")
    await third.kill()

    const log = storedEventLog(first.dataDir)
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
  })
})
