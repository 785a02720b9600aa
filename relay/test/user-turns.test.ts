import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, listMessages, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import { SqliteBackend } from "../src/backend/sqlite.js"
import { MAX_TURN_WAIT_MS, UserTurns } from "../src/user-turns.js"
import { docUntil, stockProvider, synced, TestClient } from "./helpers/clients.js"
import { updateFrame } from "./helpers/frame-probe.js"
import { atCapShapes, DEFAULT_CAPS, seedConversation } from "./helpers/frame-shapes.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const carol = "carol" as UserId
const dave = "dave" as UserId

const clients: TestClient[] = []
const providers: WebsocketProvider[] = []
const dirs: string[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const p of providers.splice(0)) p.destroy()
  await stopRelayProcesses()
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

describe("UserTurns", () => {
  it("runs one user's work in the order it came, one at a time, and other users' beside it", async () => {
    const turns = new UserTurns()
    const log: string[] = []
    const job =
      (name: string, fail = false) =>
      async () => {
        log.push(`start ${name}`)
        await new Promise((resolve) => setTimeout(resolve, 5))
        log.push(`end ${name}`)
        if (fail) throw new Error(name)
        return name
      }
    const a = "a" as UserId
    const b = "b" as UserId
    const results = [
      turns.run(a, "d1", job("a1")),
      turns.run(a, "d2", job("a2", true)),
      turns.run(a, "d3", job("a3")),
      turns.run(b, "d1", job("b1")),
    ]
    expect(turns.size).toBe(2)
    const settled = await Promise.allSettled(results)
    expect(settled.map((s) => s.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"])
    // b's work started beside a's first; a's ran one after another, a failure not stopping the next.
    expect(log.indexOf("start b1")).toBeLessThan(log.indexOf("end a1"))
    expect(log.indexOf("start a2")).toBeGreaterThan(log.indexOf("end a1"))
    expect(log.indexOf("start a3")).toBeGreaterThan(log.indexOf("end a2"))
    await new Promise((resolve) => setImmediate(resolve))
    expect(turns.size).toBe(0)
  })

  it("does not hold a user's next update behind one that waits on I/O longer than a frame's work, and still starts queued ones one at a time", async () => {
    const turns = new UserTurns()
    const a = "a" as UserId
    const startedAt: number[] = []
    const releases: (() => void)[] = []
    // Three updates queued at once, each stalling (storage that does not answer).
    const stalled = [0, 1, 2].map((i) =>
      turns.run(a, `d${i}`, () => {
        startedAt[i] = performance.now()
        return new Promise<number>((resolve) => releases.push(() => resolve(i)))
      }),
    )
    await new Promise((resolve) => setTimeout(resolve, 2.5 * MAX_TURN_WAIT_MS))
    expect(startedAt).toHaveLength(3)
    // Each waited for the one before it to have started MAX_TURN_WAIT_MS ago, not all of them at once.
    expect(startedAt[1]! - startedAt[0]!).toBeGreaterThanOrEqual(MAX_TURN_WAIT_MS - 5)
    expect(startedAt[2]! - startedAt[1]!).toBeGreaterThanOrEqual(MAX_TURN_WAIT_MS - 5)
    for (const release of releases) release()
    await expect(Promise.all(stalled)).resolves.toEqual([0, 1, 2])
  })
})

describe("one user's frames on many sockets", () => {
  it("do not hold an honest pair's message behind all of them: it is delivered before most of them are saved", async () => {
    // The flooder (alice of the seeded conversations) has one socket per conversation and sends each
    // an at-cap frame at once; each costs the relay tens of milliseconds of CPU.
    const flooded = 8
    const shape = atCapShapes(DEFAULT_CAPS)[0]!
    expect(shape.name).toMatch(/the value cap/)
    const ids = Array.from({ length: flooded }, () => newConversationId())
    const seeds = ids.map((id) => seedConversation(id, 100))
    const dataDir = mkdtempSync(join(tmpdir(), "parley-turns-"))
    dirs.push(dataDir)
    const backend = new SqliteBackend(dataDir)
    for (let i = 0; i < flooded; i++) await backend.documents.append(ids[i]!, [seeds[i]!.stored])
    await backend.close()
    const relay = await startRelayProcess({ dataDir })

    const id = newConversationId()
    const c = stockProvider(relay.url, id, await relay.token(carol))
    const d = stockProvider(relay.url, id, await relay.token(dave))
    providers.push(c, d)
    await Promise.all([synced(c), synced(d)])
    createConversation(c.doc, carol, { kind: "group", id, participants: [dave] })
    await docUntil(d.doc, () => d.doc.getMap("meta").has("createdAt"))

    const flooders: TestClient[] = []
    for (const conversation of ids) {
      const f = new TestClient(relay.url, conversation, await relay.token(shape.user))
      clients.push(f)
      await f.opened
      await f.synced()
      flooders.push(f)
    }
    const frames = flooders.map((f, i) => updateFrame(shape.build(f.doc, seeds[i]!)))
    const savesBefore = flooders.map((f) => f.saves.length)
    const saved = () => flooders.filter((f, i) => f.saves.length > savesBefore[i]!).length

    for (const [i, f] of flooders.entries()) f.send(frames[i]!)
    sendMessage(c.doc, carol, { body: "are you there?" })
    await docUntil(d.doc, () => listMessages(d.doc, { last: 1 }).some((m) => m.body === "are you there?"))
    const savedWhenDelivered = saved()
    await Promise.all(
      flooders.map((f, i) => f.until(() => f.saves.length > savesBefore[i]! || !!f.closeEvent)),
    )

    // Every flood frame is accepted (nothing honest-looking is refused), and the honest message did not
    // wait for them: before, all of them were checked, applied and committed together first (8 of 8).
    expect(saved()).toBe(flooded)
    expect(flooders.every((f) => f.errors.length === 0)).toBe(true)
    expect(savedWhenDelivered).toBeLessThanOrEqual(flooded / 2)
  })
})
