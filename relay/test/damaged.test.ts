import { execFile } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import {
  CloseCode,
  createConversation,
  listMessages,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { SQLITE_FILE } from "../src/backend/sqlite.js"
import { runDamagedCli } from "../src/storage/damaged-cli.js"
import { stockProvider, TestClient } from "./helpers/clients.js"
import { sqliteTamper } from "./helpers/damage.js"
import {
  type RelayProcess,
  relayEntry,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

const clients: TestClient[] = []
const dirs: string[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function client(relay: RelayProcess, name: string, token: string) {
  const c = new TestClient(relay.url, name, token)
  clients.push(c)
  return c
}

async function open(relay: RelayProcess, name: string, user: UserId) {
  const c = client(relay, name, await relay.token(user))
  await c.synced()
  return c
}

const bodies = (c: TestClient) => listMessages(c.doc, { last: 1000 }).map((m) => m.body)
const seqs = (c: TestClient) => listMessages(c.doc, { last: 1000 }).map((m) => m.seq)

async function metric(relay: RelayProcess, name: string, label = ""): Promise<number> {
  const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`${name}${label} `))
  return line ? Number(line.split(" ").at(-1)) : 0
}

/** The log positions stored for `name`, read from the stopped relay's database. */
function positions(dataDir: string, name: string): number[] {
  const db = new Database(join(dataDir, SQLITE_FILE), { readonly: true })
  try {
    return db
      .prepare<[string], { position: number }>("SELECT position FROM updates WHERE doc = ? ORDER BY position")
      .all(name)
      .map((r) => r.position)
  } finally {
    db.close()
  }
}

/** Runs `parley-relay damaged ...` as an operator would. */
async function damagedCli(...args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [relayEntry(), "damaged", ...args])
    return { code: 0, stdout }
  } catch (error) {
    const failed = error as { code: number; stdout: string }
    return { code: failed.code, stdout: failed.stdout }
  }
}

/** The same command in this process (quicker than spawning one per document). */
async function damagedInProcess(...args: string[]): Promise<{ code: number; stdout: string }> {
  const lines: string[] = []
  const code = await runDamagedCli(args, (line) => lines.push(line), {})
  return { code, stdout: lines.map((l) => `${l}\n`).join("") }
}

/** Closes with 4510 for everyone: both participants, a stranger, and a stock y-websocket stranger. */
async function expectRefusedToEveryone(relay: RelayProcess, name: string): Promise<void> {
  for (const user of [alice, bob, mallory]) {
    const c = client(relay, name, await relay.token(user))
    expect(await c.closed, `${user} on ${name}`).toEqual({
      code: CloseCode.Damaged.code,
      reason: CloseCode.Damaged.reason,
    })
    // Not one byte of the conversation before the refusal.
    expect(c.frames).toEqual([])
  }
  const stock = stockProvider(relay.url, name, await relay.token(mallory))
  const code = await new Promise<number>((resolve) =>
    stock.ws?.addEventListener("close", (event) => resolve(event.code)),
  )
  stock.destroy()
  expect(code).toBe(CloseCode.Damaged.code)
}

describe("damaged documents", () => {
  it("refuses a damaged document to everyone with 4510, lists it, and restores it from an online backup", async () => {
    const relay = await startRelayProcess({ args: ["--idle-unload-ms", "50"] })
    const dataDir = relay.dataDir
    const names = {
      snapshot: newConversationId(),
      gap: newConversationId(),
      tail: newConversationId(),
      garbage: newConversationId(),
      // An entry replaced by another valid update: Yjs would apply it, only its checksum tells.
      swapped: newConversationId(),
      gone: newConversationId(),
      healthy: newConversationId(),
    }
    const expected = ["m0", "m1", "m2", "m3"]
    const writers = new Map<string, TestClient>()
    for (const name of Object.values(names)) {
      const a = await open(relay, name, alice)
      createConversation(a.doc, alice, { kind: "group", id: name, participants: [bob] })
      // One message per append, so that the log holds several entries.
      for (const body of expected) {
        sendMessage(a.doc, alice, { body })
        await a.allSaved()
      }
      await a.until(() => seqs(a).every((s) => s !== undefined))
      writers.set(name, a)
    }
    // The snapshot document is unloaded (compacted into a snapshot), the others keep their logs.
    writers.get(names.snapshot)!.close()
    await relay.waitForLog((line) => line.msg === "document unloaded" && line.doc === names.snapshot)

    // An online backup with SQLite's backup API while the relay runs, as relay/README.md says.
    const backupDir = mkdtempSync(join(tmpdir(), "parley-backup-"))
    dirs.push(backupDir)
    const backup = join(backupDir, "parley.sqlite")
    const live = new Database(join(dataDir, SQLITE_FILE), { readonly: true })
    await live.backup(backup)
    live.close()
    await relay.kill()

    const tamper = sqliteTamper(dataDir)
    await tamper.overwriteSnapshot(names.snapshot, new Uint8Array([0x07, 0xff, 0x00, 0x13]))
    const gap = positions(dataDir, names.gap)
    await tamper.deleteUpdates(names.gap, [gap[2]!])
    const tail = positions(dataDir, names.tail)
    await tamper.deleteUpdates(names.tail, tail.slice(-2))
    const garbage = positions(dataDir, names.garbage)
    await tamper.overwriteUpdate(names.garbage, garbage[3]!, new Uint8Array([0x01, 0x99, 0xff, 0xff, 0x02]))
    const forged = new Y.Doc()
    forged.getMap("forged").set("by", mallory)
    await tamper.overwriteUpdate(
      names.swapped,
      positions(dataDir, names.swapped)[3]!,
      Y.encodeStateAsUpdate(forged),
    )
    await tamper.deleteData(names.gone)
    const damaged = [names.snapshot, names.gap, names.tail, names.garbage, names.swapped, names.gone]

    const again = await startRelayProcess({ dataDir, secret: relay.secret })
    for (const name of damaged) await expectRefusedToEveryone(again, name)
    for (const name of damaged) {
      const line = await again.waitForLog(
        (l) => l.msg?.toString().startsWith("document damaged") === true && l.doc === name,
      )
      expect(line.level).toBe(50)
    }
    expect(await metric(again, "parley_damaged_documents")).toBe(damaged.length)
    expect(await metric(again, "parley_errors_total", '{code="DAMAGED"}')).toBeGreaterThanOrEqual(
      damaged.length * 4,
    )

    // Other documents keep working, old and new.
    const healthy = await open(again, names.healthy, bob)
    expect(bodies(healthy)).toEqual(expected)
    sendMessage(healthy.doc, bob, { body: "still here" })
    await healthy.allSaved()
    const fresh = newConversationId()
    const m = await open(again, fresh, mallory)
    createConversation(m.doc, mallory, { kind: "group", id: fresh, participants: [] })
    await m.allSaved()

    const listed = await damagedCli("list", "--data-dir", dataDir)
    expect(listed.code).toBe(0)
    const lines = listed.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l))
    expect(lines.map((l) => l.document).sort()).toEqual([...damaged].sort())
    expect(lines.find((l) => l.document === names.gap).reason).toMatch(/gap/)
    expect(lines.find((l) => l.document === names.tail).reason).toMatch(/ends at position/)
    expect(lines.find((l) => l.document === names.gone).reason).toMatch(/none of its data/)
    expect(lines.find((l) => l.document === names.snapshot).reason).toMatch(/snapshot/)
    expect(lines.find((l) => l.document === names.garbage).reason).toMatch(/position/)
    expect(lines.find((l) => l.document === names.swapped).reason).toMatch(/does not match its checksum/)

    // Restarted while still damaged: refused from the start, nobody re-creates it.
    await again.kill()
    const third = await startRelayProcess({ dataDir, secret: relay.secret })
    expect(await metric(third, "parley_damaged_documents")).toBe(damaged.length)
    const squatter = client(third, names.gone, await third.token(mallory))
    expect((await squatter.closed).code).toBe(CloseCode.Damaged.code)
    await third.kill()

    // The relay is stopped for the restore.
    const refused = await damagedInProcess("restore", names.healthy, "--from", backup, "--data-dir", dataDir)
    expect(refused.code).toBe(1)
    expect(refused.stdout).toMatch(/not damaged/)
    for (const [i, name] of damaged.entries()) {
      const args = ["restore", name, "--from", backup, "--data-dir", dataDir]
      const restored = i === 0 ? await damagedCli(...args) : await damagedInProcess(...args)
      expect(restored.code).toBe(0)
      expect(JSON.parse(restored.stdout)).toMatchObject({ document: name })
    }
    expect((await damagedInProcess("list", "--data-dir", dataDir)).stdout).toBe("")

    const fourth = await startRelayProcess({ dataDir, secret: relay.secret })
    expect(await metric(fourth, "parley_damaged_documents")).toBe(0)
    for (const name of damaged) {
      const b = await open(fourth, name, bob)
      expect(bodies(b)).toEqual(expected)
      expect(seqs(b)).toEqual([1, 2, 3, 4])
      sendMessage(b.doc, bob, { body: "after the restore" })
      await b.allSaved()
      await b.until(() => seqs(b).at(-1) === 5)
      // The restored owner is still the owner: a stranger is refused as before the damage.
      const stranger = client(fourth, name, await fourth.token(mallory))
      expect((await stranger.closed).code).toBe(CloseCode.Forbidden.code)
    }
    const healthyAgain = await open(fourth, names.healthy, alice)
    expect(bodies(healthyAgain)).toEqual([...expected, "still here"])
  }, 120_000)
})
