import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, listMessages, newConversationId, sendMessage, type UserId } from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import { SQLITE_FILE } from "../src/backend/sqlite.js"
import { warmUpUpdatePath } from "../src/warm-up.js"
import { TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
})

async function open(relay: RelayProcess, name: string, user: UserId) {
  const c = new TestClient(relay.url, name, await relay.token(user))
  clients.push(c)
  await c.synced()
  return c
}

async function metric(relay: RelayProcess, name: string): Promise<number> {
  const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
  // Summed over its labels.
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0)
}

describe("warm-up of the update path", () => {
  it("runs every synthetic frame through the rules and has each one accepted", async () => {
    // A refused frame would warm the refusal path instead of the path large honest frames take.
    const report = await warmUpUpdatePath({ rounds: 2, frameMessages: 30 })
    expect(report.stopped).toBe(false)
    expect(report.refused).toBe(0)
    // The creation plus six frames per round, and the seal piece's one-message frame, its offline
    // device's mixed work and one bulk frame (900 messages: three segments, in frames of up to 900).
    expect(report.frames).toBe(20)
    // Each round's seal piece sealed through the relay's history code at the default segment size
    // (300, 100 kept live): one segment after the one-message frame (the stored conversation was due),
    // one after the offline work, three at once after the bulk frame.
    expect(report.seals).toBe(12)
    // And the scratch hooks recorded the frames' events (the seals' too) in their event log.
    expect(report.events).toBeGreaterThan(2 * 3 * 500)
  })

  it("seals at the relay's segment size and within the value cap", async () => {
    const base = { rounds: 1, frameMessages: 30, history: { segmentSize: 100, keepLive: 50 } } as const
    const sized = await warmUpUpdatePath(base)
    expect(sized.refused).toBe(0)
    expect(sized.frames).toBe(7 + 3)
    expect(sized.seals).toBe(10)
    expect(sized.events).toBeGreaterThan(300)
    // Bulk frames of at most nine tenths of the value cap: three segments of 100 take four frames; the
    // offline work fits the cap too.
    const capped = await warmUpUpdatePath({ ...base, limits: { maxUpdateValues: 100 } })
    expect(capped.refused).toBe(0)
    expect(capped.frames).toBe(7 + 6)
    expect(capped.seals).toBe(4)
    // A relay that does not seal: no seal piece.
    const unsealed = await warmUpUpdatePath({ ...base, history: false })
    expect(unsealed.frames).toBe(7)
    expect(unsealed.seals).toBe(0)
  })

  it("seals tiny segments at a size the rounds' own conversation never reaches (its replayed frames pass)", async () => {
    // Sealed, the round's conversation holds relay writes that differ between rounds: replayed frames
    // built on the first round's were refused.
    const report = await warmUpUpdatePath({ rounds: 3, history: { segmentSize: 40, keepLive: 20 } })
    expect(report.refused).toBe(0)
    expect(report.seals).toBe(3 * 5)
  })

  it("finishes, every frame accepted, with the relay's epochs set to come at once (its scratch conversation starts none)", async () => {
    // A fresh epoch drops the scratch conversation's sessions: the round waited for their answers for
    // good, and a relay with a low --epoch-garbage-bytes never finished its shutdown (it awaits the warm-up).
    const report = await warmUpUpdatePath({
      rounds: 2,
      history: { segmentSize: 20, keepLive: 5, epochClientIds: 2 },
      limits: { epochGarbageBytes: 2048, epochGarbageIntervalMs: 0 },
    })
    expect(report.refused).toBe(0)
    expect(report.stopped).toBe(false)
  })

  it("stops at its next piece once the relay is shutting down", async () => {
    let pieces = 0
    const report = await warmUpUpdatePath({ stopped: () => ++pieces > 3 })
    expect(report.stopped).toBe(true)
    expect(report.frames).toBeLessThan(4)
  })

  it("serves clients while it warms up and leaves nothing of its own in the relay", async () => {
    const relay = await startRelayProcess({ args: ["--storage", "memory"], warmUp: true })
    // Connected right after "listening", while the warm-up runs between serving.
    const id = newConversationId()
    const a = await open(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(a.doc, alice, { body: "hello during the warm-up" })
    await a.allSaved()
    const b = await open(relay, id, bob)
    await b.until(() => listMessages(b.doc, { last: 10 }).some((m) => m.body === "hello during the warm-up"))
    const done = await relay.waitForLog((line) => line.msg === "warmed up the update path")
    expect(done.refused).toBe(0)
    expect(done.frames).toBe(44)
    // Only the two clients' updates (and the relay's sequencing) count: none of the warm-up's frames.
    // The conversation and the two users' inboxes; the warm-up's scratch document lives in a core of its own.
    const health = (await (await fetch(`${relay.httpUrl}/healthz`)).json()) as { documents: number }
    expect(health.documents).toBe(3)
    // The clients' updates, the relay's numbers and the inbox writes; the warm-up sent 44 frames.
    expect(await metric(relay, "parley_updates_total")).toBeLessThan(12)
  })

  it("on SQLite, leaves no event, segment or document of its own in the relay's database", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "parley-warm-up-"))
    try {
      const relay = await startRelayProcess({ dataDir, warmUp: true })
      const id = newConversationId()
      const a = await open(relay, id, alice)
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
      sendMessage(a.doc, alice, { body: "hello during the warm-up" })
      await a.allSaved()
      const done = await relay.waitForLog((line) => line.msg === "warmed up the update path")
      // It sealed and recorded events (in its scratch in-memory database)...
      expect(done.seals).toBeGreaterThan(0)
      expect(done.events).toBeGreaterThan(1_000)
      a.close()
      relay.child.kill("SIGTERM")
      expect((await relay.exited).code).toBe(0)
      // ...none of which is in the relay's: only the client's conversation (and its users' inboxes).
      const db = new Database(join(dataDir, SQLITE_FILE), { readonly: true })
      try {
        const conversations = db.prepare("SELECT DISTINCT conversation FROM event_log").pluck().all()
        expect(conversations).toEqual([id])
        expect(db.prepare("SELECT COUNT(*) FROM history_segments").pluck().get()).toBe(0)
        const docs = db
          .prepare("SELECT doc FROM updates UNION SELECT doc FROM snapshots")
          .pluck()
          .all() as string[]
        expect(docs.sort()).toEqual([id, "inbox~alice", "inbox~bob"].sort())
      } finally {
        db.close()
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true })
    }
  })

  it("reports not ready on /readyz until the warm-up is done, then ready", async () => {
    const relay = await startRelayProcess({ args: ["--storage", "memory"], warmUp: true })
    const early = await fetch(`${relay.httpUrl}/readyz`)
    const body = (await early.json()) as { failing?: { dependency: string }[] }
    // The warm-up takes about a second; the answer right after "listening" comes before its end.
    expect(early.status).toBe(503)
    expect(body.failing?.map((f) => f.dependency)).toEqual(["warm-up"])
    await relay.waitForLog((line) => line.msg === "warmed up the update path")
    expect((await fetch(`${relay.httpUrl}/readyz`)).status).toBe(200)
  })

  it("is skipped with --skip-warm-up", async () => {
    const relay = await startRelayProcess({ args: ["--storage", "memory", "--skip-warm-up"] })
    const id = newConversationId()
    const a = await open(relay, id, alice)
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    await a.allSaved()
    await relay.waitForLog((line) => line.msg === "warm-up skipped (--skip-warm-up)")
    expect((await fetch(`${relay.httpUrl}/readyz`)).status).toBe(200)
    relay.child.kill("SIGTERM")
    expect((await relay.exited).code).toBe(0)
    expect(relay.lines.some((line) => line.includes("warmed up"))).toBe(false)
  })
})
