import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { RECORDER, readLines } from "./recorder.js"

const dirs: string[] = []
afterEach(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 20))
}

describe("hook delivery across a crash", () => {
  it("delivers every event at least once, with the same ids, after a SIGKILL in the middle of delivery", async () => {
    const hooks = mkdtempSync(join(tmpdir(), "parley-hooks-restart-"))
    dirs.push(hooks)
    writeFileSync(join(hooks, "recorder.mjs"), RECORDER)
    const log = join(hooks, "deliveries.jsonl")
    const args = ["--hooks", hooks, "--hook-timeout-ms", "600000"]
    const first = await startRelayProcess({ args, env: { HOOK_LOG: log, HOOK_BLOCK: "1" } })
    const id = "g~restart" as ConversationId
    const alice = new TestClient(first.url, id, await first.token("alice"))
    await alice.opened
    await alice.synced()
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
    for (const n of [1, 2, 3])
      sendMessage(alice.doc, "alice" as UserId, { id: `msg-000${n}` as MessageId, body: `m${n}` })
    await alice.allSaved()
    // The first event is being delivered (the handler started) but never acknowledged.
    await until(() => readLines(log).length === 1)
    first.child.kill("SIGKILL")
    await first.exited
    alice.close()

    const second = await startRelayProcess({
      args,
      dataDir: first.dataDir,
      secret: first.secret,
      env: { HOOK_LOG: log, HOOK_BLOCK: "0" },
    })
    await until(() => readLines(log).filter((l) => l.pid === second.child.pid).length >= 3)
    const lines = readLines(log)
    const before = lines.filter((l) => l.pid === first.child.pid)
    const after = lines.filter((l) => l.pid === second.child.pid)
    expect(before.map((l) => l.message)).toEqual(["msg-0001"])
    // In order per conversation, each message once, and the interrupted one again with its id.
    expect(after.map((l) => l.message)).toEqual(["msg-0001", "msg-0002", "msg-0003"])
    expect(after.map((l) => l.seq)).toEqual([1, 2, 3])
    expect(after[0]!.id).toBe(before[0]!.id)
    expect(new Set(after.map((l) => l.id)).size).toBe(3)
  })
})
