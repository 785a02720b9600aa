import { createConversation, listMessages, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
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
    // The creation plus six frames per round.
    expect(report.frames).toBe(14)
    // And each round's upkeep piece sealed what its bulk update made due (the path a large frame takes after its answer).
    expect(report.seals).toBeGreaterThanOrEqual(2)
  })

  it("stops at its next piece once the relay is shutting down", async () => {
    let pieces = 0
    const report = await warmUpUpdatePath({ stopped: () => ++pieces > 3 })
    expect(report.stopped).toBe(true)
    expect(report.frames).toBeLessThan(4)
  })

  it("serves clients while it warms up and leaves nothing of its own in the relay", async () => {
    const relay = await startRelayProcess({ args: ["--storage", "memory"] })
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
    expect(done.frames).toBe(28)
    // Only the two clients' updates (and the relay's sequencing) count: none of the warm-up's frames.
    // The conversation and the two users' inboxes; the warm-up's scratch document lives in a core of its own.
    const health = (await (await fetch(`${relay.httpUrl}/healthz`)).json()) as { documents: number }
    expect(health.documents).toBe(3)
    // The clients' updates, the relay's numbers and the inbox writes; the warm-up sent 28 frames.
    expect(await metric(relay, "parley_updates_total")).toBeLessThan(12)
  })

  it("reports not ready on /readyz until the warm-up is done, then ready", async () => {
    const relay = await startRelayProcess({ args: ["--storage", "memory"] })
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
