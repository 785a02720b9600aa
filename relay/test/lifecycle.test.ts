import { createConversation, listMessages, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { TestClient } from "./helpers/clients.js"
import { DATABASE_URL, postgresUnreachable } from "./helpers/postgres.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const alice = "alice" as UserId

const clients: TestClient[] = []
// After the file, not after each test: every test runs at once (the describes too), each on relay
// processes and conversations of its own.
afterAll(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
})

async function open(relay: RelayProcess, name: string, user: string = alice) {
  const c = new TestClient(relay.url, name, await relay.token(user))
  clients.push(c)
  await c.synced()
  return c
}

const bodies = (c: TestClient) => listMessages(c.doc, { last: 1000 }).map((m) => m.body)
const seqs = (c: TestClient) => listMessages(c.doc, { last: 1000 }).map((m) => m.seq)

async function health(relay: RelayProcess): Promise<{ status: string; documents: number }> {
  return (await fetch(`${relay.httpUrl}/healthz`)).json() as Promise<{ status: string; documents: number }>
}

async function metric(relay: RelayProcess, name: string): Promise<number> {
  const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
  return line ? Number(line.split(" ").at(-1)) : 0
}

describe.concurrent("durability", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("keeps every acknowledged update after SIGKILL; on SIGTERM closes with 1001, exits 0 and keeps the data", async () => {
    const relay = await startRelayProcess({ args: ["--compact-after-updates", "7"] })
    const id = newConversationId()
    const a = await open(relay, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    for (let i = 0; i < 20; i++) sendMessage(a.doc, alice, { body: `m${i}` })
    await a.until(() => seqs(a).every((s) => s !== undefined))
    await a.allSaved()
    relay.child.kill("SIGKILL")
    await relay.exited
    const expected = Array.from({ length: 20 }, (_, i) => `m${i}`)

    const again = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    const b = await open(again, id)
    expect(bodies(b)).toEqual(expected)
    expect(seqs(b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1))
    sendMessage(b.doc, alice, { body: "before shutdown" })
    await b.allSaved()
    again.child.kill("SIGTERM")
    expect((await b.closed).code).toBe(1001)
    expect((await again.exited).code).toBe(0)

    const third = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    const c = await open(third, id)
    expect(bodies(c)).toEqual([...expected, "before shutdown"])
    expect(seqs(c).at(-1)).toBe(21)
  })
})

describe.concurrent("shutting down on a terminal's interrupt", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("takes a SIGINT delivered twice at once (the terminal's and a launcher's forward) as one: a graceful shutdown, exit 0", async () => {
    const relay = await startRelayProcess()
    const id = newConversationId()
    const a = await open(relay, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    sendMessage(a.doc, alice, { body: "before Ctrl+C" })
    await a.allSaved()
    relay.child.kill("SIGINT")
    relay.child.kill("SIGINT")
    expect((await a.closed).code).toBe(1001)
    expect((await relay.exited).code).toBe(0)
  })
})

describe.concurrent("document lifecycle", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("unloads an idle document after a final compaction and reloads it on the next connection", async () => {
    const relay = await startRelayProcess({ args: ["--idle-unload-ms", "50"] })
    const id = newConversationId()
    const a = await open(relay, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    sendMessage(a.doc, alice, { body: "kept across unload" })
    await a.allSaved()
    a.close()
    await relay.waitForLog((line) => line.msg === "document unloaded" && line.doc === id)
    expect((await health(relay)).documents).toBe(0)
    expect(await metric(relay, "parley_compactions_total")).toBeGreaterThanOrEqual(1)
    const b = await open(relay, id)
    expect(bodies(b)).toEqual(["kept across unload"])
    expect((await health(relay)).documents).toBe(1)
  })

  it("refuses a new document with 4503 when every loaded document is in use, and makes room from idle ones", async () => {
    const relay = await startRelayProcess({ args: ["--max-documents", "1"] })
    const first = newConversationId()
    const a = await open(relay, first)
    const second = newConversationId()
    const refused = new TestClient(relay.url, second, await relay.token(alice))
    clients.push(refused)
    expect((await refused.closed).code).toBe(4503)
    a.close()
    await a.closed
    // The first document is idle now (not yet unloaded: the idle delay is 30 s), so it makes room.
    const b = await open(relay, second)
    expect(b.closeEvent).toBeUndefined()
  })
})

describe.concurrent("postgres backend", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("keeps acknowledged updates across SIGKILL when running on PostgreSQL", async (context) => {
    const url = DATABASE_URL
    const unreachable = await postgresUnreachable()
    if (unreachable) {
      if (process.env.PARLEY_REQUIRE_SERVICES === "1")
        throw new Error(`PostgreSQL unreachable: ${unreachable}`)
      context.skip(`PostgreSQL unreachable at ${url}: ${unreachable}`)
    }
    const args = ["--storage", "postgres", "--database-url", url]
    const relay = await startRelayProcess({ args })
    const id = newConversationId()
    const a = await open(relay, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    sendMessage(a.doc, alice, { body: "in postgres" })
    await a.allSaved()
    await relay.kill()
    const again = await startRelayProcess({ args, secret: relay.secret })
    const b = await open(again, id)
    expect(bodies(b)).toEqual(["in postgres"])
    expect(seqs(b)).toEqual([1])
  })
})
