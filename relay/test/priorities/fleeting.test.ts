import { join } from "node:path"
import {
  createConversation,
  getMessage,
  newConversationId,
  sendMessage,
  setFleetingSeconds,
  type UserId,
} from "@parley/shared"
import Database from "better-sqlite3"
import { afterAll, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { rawFiles } from "../helpers/raw-files.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const alice = "alice" as UserId
const bob = "bob" as UserId

const clients: TestClient[] = []
// After the file, not after each test: the tests run at once, each on a relay process of its own.
afterAll(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
})

async function joinAs(relay: RelayProcess, user: UserId, id: string): Promise<TestClient> {
  const client = new TestClient(relay.url, id, await relay.token(user))
  clients.push(client)
  await client.synced()
  return client
}

/** Tables whose rows hold `text`. */
function rowsHolding(dir: string, text: string): string[] {
  const db = new Database(join(dir, "parley.sqlite"), { readonly: true })
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as {
      name: string
    }[]
    const found: string[] = []
    for (const { name } of tables)
      for (const row of db.prepare(`SELECT * FROM "${name}"`).all() as Record<string, unknown>[])
        for (const value of Object.values(row))
          if (
            (typeof value === "string" && value.includes(text)) ||
            (value instanceof Uint8Array && Buffer.from(value).toString("latin1").includes(text))
          )
            found.push(name)
    return found
  } finally {
    db.close()
  }
}

async function until(check: () => boolean, ms = 15_000): Promise<void> {
  for (const deadline = Date.now() + ms; !check(); ) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

async function stop(relay: RelayProcess): Promise<void> {
  relay.child.kill("SIGTERM")
  await relay.exited
}

describe.concurrent("fleeting messages (relay process, SQLite)", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("disappear for everyone after the conversation's time, and their text leaves every file", async () => {
    const relay = await startRelayProcess()
    const id = newConversationId()
    const a = await joinAs(relay, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    setFleetingSeconds(a.doc, alice, 2)
    const gone = sendMessage(a.doc, alice, { body: "Fleeting-Ocelot-Text", priority: "fleeting" })
    sendMessage(a.doc, alice, { body: "Stays-Heron-Text" })
    await a.allSaved()
    const b = await joinAs(relay, bob, id)
    expect(getMessage(b.doc, gone.id)?.body).toBe("Fleeting-Ocelot-Text")
    expect(rawFiles(relay.dataDir)).toContain("Fleeting-Ocelot-Text")

    // Every replica is told: the message is a deletion placeholder there too.
    await b.until(() => getMessage(b.doc, gone.id)?.deleted !== undefined)
    expect(getMessage(b.doc, gone.id)?.deleted?.by).toBe(alice)
    await until(() => rowsHolding(relay.dataDir, "Fleeting-Ocelot-Text").length === 0)
    await stop(relay)
    const files = rawFiles(relay.dataDir)
    expect(files).not.toContain("Fleeting-Ocelot-Text")
    expect(files).toContain("Stays-Heron-Text")
  })

  it("many due at once go in a few changes, not one change each", async () => {
    const relay = await startRelayProcess()
    const id = newConversationId()
    const a = await joinAs(relay, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    setFleetingSeconds(a.doc, alice, 1)
    const sent = Array.from({ length: 200 }, (_, i) =>
      sendMessage(a.doc, alice, { body: `burst ${i}`, priority: "fleeting" }),
    )
    await a.allSaved()
    const b = await joinAs(relay, bob, id)
    let changes = 0
    b.doc.on("update", () => changes++)
    await b.until(() => sent.every((m) => getMessage(b.doc, m.id)?.deleted !== undefined))
    // Before: 200 changes (a relay write, a broadcast and a purge per message).
    expect(changes).toBeLessThanOrEqual(40)
  })

  it("still disappear when the relay was down at the time: overdue ones are purged at start", async () => {
    const first = await startRelayProcess()
    const id = newConversationId()
    const a = await joinAs(first, alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    setFleetingSeconds(a.doc, alice, 3)
    const gone = sendMessage(a.doc, alice, { body: "Overdue-Quetzal-Text", priority: "fleeting" })
    await a.allSaved()
    a.close()
    // Killed before the message is due: nothing but the stored schedule remembers it.
    await first.kill()
    expect(rawFiles(first.dataDir)).toContain("Overdue-Quetzal-Text")
    await new Promise((resolve) => setTimeout(resolve, 3_500))

    const second = await startRelayProcess({ dataDir: first.dataDir, secret: first.secret })
    // A start's warm-up, hook recovery and first delivery: seconds on a quiet machine, 15 s and more on a
    // loaded CI machine (it timed out once there).
    await until(() => rowsHolding(second.dataDir, "Overdue-Quetzal-Text").length === 0, 40_000)
    const b = await joinAs(second, bob, id)
    expect(getMessage(b.doc, gone.id)?.deleted).toBeDefined()
    await stop(second)
    expect(rawFiles(second.dataDir)).not.toContain("Overdue-Quetzal-Text")
  }, 60_000)
})
