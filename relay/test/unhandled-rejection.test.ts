import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  listMessages,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { TestClient } from "./helpers/clients.js"
import { hooksApi, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const api = hooksApi()

// A careless hook module: it starts a request it never awaits, which fails with nobody handling it.
const CARELESS = `import { defineHooks } from ${JSON.stringify(api)}
export default defineHooks({
  onMessageSent() {
    void Promise.reject(new Error("the push service refused (nobody awaited this)"))
  },
})
`

const dirs: string[] = []
afterAll(async () => {
  await stopRelayProcesses()
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

describe("a promise rejected with nobody handling it", () => {
  it("is logged, and the relay keeps serving (a hook module's unawaited promise does not end the process)", async () => {
    const hooks = mkdtempSync(join(tmpdir(), "parley-careless-hooks-"))
    dirs.push(hooks)
    writeFileSync(join(hooks, "careless.mjs"), CARELESS)
    const relay = await startRelayProcess({ args: ["--hooks", hooks], hooksUseHooksApi: true })
    const id = "g~careless" as ConversationId
    const alice = new TestClient(relay.url, id, await relay.token("alice"))
    await alice.synced()
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
    sendMessage(alice.doc, "alice" as UserId, { body: "first" })
    await alice.allSaved()
    await relay.waitForLog((line) => String(line.msg).includes("nothing handled it"))
    sendMessage(alice.doc, "alice" as UserId, { body: "second" })
    await alice.allSaved()
    const bob = new TestClient(relay.url, id, await relay.token("bob"))
    await bob.synced()
    expect(listMessages(bob.doc, { last: 10 }).map((m) => m.body)).toEqual(["first", "second"])
    expect(relay.child.exitCode).toBeNull()
    alice.close()
    bob.close()
  })
})
