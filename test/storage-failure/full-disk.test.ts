import "fake-indexeddb/auto"
import { execFileSync, spawn } from "node:child_process"
import { closeSync, mkdtempSync, openSync, readdirSync, rmdirSync, rmSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  ErrorCode,
  listMessages,
  sendMessage,
  type UserId,
} from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { FsBlobStore } from "../../relay/src/attachments/fs-blob-store.js"
import { TestClient } from "../../relay/test/helpers/clients.js"
import { relayEntry, startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"
import { eventually, expectNotReady, healthz, readyz, sdkClient, storedTwice } from "./helpers.js"

const cleanups: (() => unknown)[] = []
afterEach(async () => {
  await stopRelayProcesses()
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/**
 * A data directory on a tmpfs of its own, `size` bytes: a disk the test can
 * fill. Undefined (with why) where mounting is not allowed (not root, a
 * container without CAP_SYS_ADMIN).
 */
function smallDisk(size: number): { dir: string } | { unavailable: string } {
  const dir = mkdtempSync(join(tmpdir(), "parley-full-disk-"))
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { stdio: "pipe" })
  } catch (error) {
    rmdirSync(dir)
    return { unavailable: (error as { stderr?: Buffer }).stderr?.toString().trim() || String(error) }
  }
  cleanups.push(() => {
    execFileSync("umount", [dir])
    rmdirSync(dir)
  })
  return { dir }
}

/** Writes to `path` until the disk is full. */
function fill(path: string): void {
  const fd = openSync(path, "w")
  const chunk = Buffer.alloc(64 * 1024, 1)
  try {
    for (;;) writeSync(fd, chunk)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error
  } finally {
    closeSync(fd)
  }
}

const probe = smallDisk(1024 * 1024)
const mountable = "dir" in probe
if (mountable) {
  execFileSync("umount", [probe.dir])
  rmdirSync(probe.dir)
  cleanups.splice(0)
}

if (!mountable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("a relay whose disk fills up", () => {
    it.skip(`skipped: cannot mount a tmpfs here (${"unavailable" in probe ? probe.unavailable : ""})`, () => {})
  })
} else {
  describe("a relay whose disk fills up", () => {
    it("refuses writes retryably while the disk is full and stores the SDK's pending messages once space is freed", async () => {
      const disk = smallDisk(8 * 1024 * 1024)
      if (!("dir" in disk)) throw new Error(`cannot mount a tmpfs: ${disk.unavailable}`)
      const relay = await startRelayProcess({ dataDir: disk.dir, args: ["--storage-timeout-ms", "1000"] })
      const client = await sdkClient(relay)
      cleanups.push(() => client.destroy())
      const chat = await client.createConversation({ participants: [], title: "full disk" })
      const before = chat.send("before")
      await eventually(() => expect(chat.status(before.id)).toBe("sent"))

      const statuses: string[] = []
      chat.on("status", ({ status }) => statuses.push(status))
      const reconnects: string[] = []
      chat.connection.on("status", ({ status }) => reconnects.push(status))
      const refusals: string[] = []
      chat.connection.on("refused", ({ error }) => refusals.push(error.code))

      const filler = join(disk.dir, "filler")
      // Readiness, polled throughout: once storage failed it stays failing until space is freed.
      const readiness: number[] = []
      let polling = true
      const poller = (async () => {
        while (polling) {
          readiness.push((await readyz(relay.httpUrl)).status)
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
      })()
      fill(filler)
      // SQLite may still write into WAL pages it allocated before (the WAL restarts after each
      // checkpoint): a message stored there is durable and acknowledged. Messages go one at a time
      // until the relay refuses one, then two more.
      const sent: ReturnType<typeof chat.send>[] = []
      while (refusals.length === 0) {
        if (sent.length >= 100) throw new Error("the full disk never refused a write")
        const message = chat.send(`after ${sent.length}`)
        sent.push(message)
        await eventually(() => expect(chat.status(message.id) === "sent" || refusals.length > 0).toBe(true))
      }
      expect(refusals[0]).toBe("STORAGE_UNAVAILABLE")
      sent.push(chat.send("while full 1"), chat.send("while full 2"))
      await eventually(() => expect(readiness).toContain(503))
      // Full for a while: the probe runs several times meanwhile (after 100 ms, then doubling).
      await eventually(() => expect(readiness.length - readiness.indexOf(503)).toBeGreaterThan(60))
      expect(await healthz(relay.httpUrl)).toBe(200)
      // A refused message waits (pending), it is never marked failed.
      expect(sent.map((m) => chat.status(m.id))).not.toContain("failed")

      // Answers of requests made while the disk was full (later ones may find room again).
      const whileFull = readiness.length
      rmSync(filler)
      await eventually(() => expect(sent.map((m) => chat.status(m.id))).toEqual(sent.map(() => "sent")))
      polling = false
      await poller
      // A one-row write still fits in pages SQLite had allocated: it used to say "storage is back" for
      // a few hundred milliseconds at a time, and a load balancer sent traffic to a relay that could not store.
      expect(readiness.slice(readiness.indexOf(503), whileFull)).not.toContain(200)
      await eventually(async () => expect((await readyz(relay.httpUrl)).status).toBe(200))
      expect(statuses).not.toContain("failed")
      expect(reconnects).toEqual([])
      expect(relay.child.exitCode).toBeNull()

      const db = new Database(join(disk.dir, "parley.sqlite"), { readonly: true })
      const rows = db
        .prepare<[string], { data: Buffer }>("SELECT data FROM updates WHERE doc = ? ORDER BY position")
        .all(chat.id)
      db.close()
      const log = rows.map((row) => new Uint8Array(row.data))
      expect(storedTwice(log)).toEqual([])
      const stored = new Y.Doc()
      for (const update of log) Y.applyUpdate(stored, update)
      expect(listMessages(stored, { last: 200 }).map((m) => m.body)).toEqual([
        "before",
        ...sent.map((m) => m.body),
      ])
    })

    it("restarted on a full disk, starts not ready, serves what is stored, refuses writes retryably, and stores them once space is freed", async () => {
      const disk = smallDisk(8 * 1024 * 1024)
      if (!("dir" in disk)) throw new Error(`cannot mount a tmpfs: ${disk.unavailable}`)
      const args = ["--storage-timeout-ms", "1000"]
      const first = await startRelayProcess({ dataDir: disk.dir, args })
      const id = "g~restarted-full" as ConversationId
      const [alice, bob] = ["alice", "bob"] as UserId[]
      const writer = new TestClient(first.url, id, await first.token(alice!))
      cleanups.push(() => writer.close())
      await writer.synced()
      createConversation(writer.doc, alice!, { kind: "group", id, participants: [bob!] })
      sendMessage(writer.doc, alice!, { body: "stored before" })
      await writer.allSaved()
      fill(join(disk.dir, "filler"))
      // Written until the relay refuses one (SQLite may still fit a few into pages it holds).
      for (let i = 0; !writer.errors.some((e) => e.code === ErrorCode.STORAGE_UNAVAILABLE); i++) {
        if (i >= 100) throw new Error("the full disk never refused a write")
        const saved = writer.saves.length
        sendMessage(writer.doc, alice!, { body: `while full ${i}` })
        await writer.until(() => writer.saves.length > saved || writer.errors.length > 0)
      }
      // Killed while the disk is full (a crash, a supervisor that gave up waiting), then started again.
      await first.kill()

      const relay = await startRelayProcess({ dataDir: disk.dir, args })
      await expectNotReady(relay.httpUrl)
      expect((await readyz(relay.httpUrl)).body).toMatchObject({
        failing: expect.arrayContaining([
          expect.objectContaining({ error: expect.stringMatching(/is full/) }),
        ]),
      })
      expect(await healthz(relay.httpUrl)).toBe(200)
      const reader = new TestClient(relay.url, id, await relay.token(bob!))
      cleanups.push(() => reader.close())
      await reader.synced()
      expect(listMessages(reader.doc, { last: 200 }).map((m) => m.body)).toContain("stored before")
      sendMessage(reader.doc, bob!, { body: "bob while full" })
      await reader.until(() => reader.errors.length > 0)
      expect(reader.errors.map((e) => e.code)).toEqual([ErrorCode.STORAGE_UNAVAILABLE])
      expect(reader.closeEvent).toBeUndefined()

      rmSync(join(disk.dir, "filler"))
      await eventually(async () => expect((await readyz(relay.httpUrl)).status).toBe(200))
      // Refused at once, never stored: sent again, as the SDK does with its pending work.
      reader.sendUpdate(Y.encodeStateAsUpdate(reader.doc))
      await reader.allSaved()
      expect(relay.child.exitCode).toBeNull()
    })

    it("refuses an upload's chunk retryably while the disk is full, leaving no partial file, and takes it once space is freed", async () => {
      const disk = smallDisk(1024 * 1024)
      if (!("dir" in disk)) throw new Error(`cannot mount a tmpfs: ${disk.unavailable}`)
      const store = new FsBlobStore(join(disk.dir, "blobs"))
      const chunk = new Uint8Array(Buffer.alloc(256 * 1024, 7))
      await store.append("uploads/u1", 0, chunk)
      fill(join(disk.dir, "filler"))

      const refused = await store.append("uploads/u1", chunk.length, chunk).then(
        () => undefined,
        (error: unknown) => error,
      )
      expect(refused).toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })
      expect((refused as Error).message).toContain("ENOSPC")
      // The partial temporary file was removed: it would hold space on the full disk.
      const files = readdirSync(join(disk.dir, "blobs"), { recursive: true }) as string[]
      expect(files.filter((f) => f.includes("#tmp-"))).toEqual([])

      rmSync(join(disk.dir, "filler"))
      await store.append("uploads/u1", chunk.length, chunk)
      expect((await store.get("uploads/u1"))?.length).toBe(2 * chunk.length)
    })

    it("stopped cleanly, then the disk filled: will not start, and says the disk is full (exit 4)", async () => {
      const disk = smallDisk(8 * 1024 * 1024)
      if (!("dir" in disk)) throw new Error(`cannot mount a tmpfs: ${disk.unavailable}`)
      const first = await startRelayProcess({ dataDir: disk.dir })
      first.child.kill("SIGTERM")
      expect((await first.exited).code).toBe(0)
      // SQLite cannot create the database's -wal and -shm files again: nothing to serve even reads from.
      fill(join(disk.dir, "filler"))
      const child = spawn(
        process.execPath,
        [relayEntry(), "--port", "0", "--data-dir", disk.dir, "--auth-secret", "s"],
        {
          stdio: ["ignore", "pipe", "pipe"],
        },
      )
      let stderr = ""
      child.stderr.on("data", (d: Buffer) => {
        stderr += d
      })
      // "close", not "exit": the process may exit before its output is read to the end.
      const code = await new Promise<number | null>((done) => child.on("close", done))
      expect(code).toBe(4)
      expect(stderr).toContain("the disk holding it is full")
      expect(stderr).not.toContain("make it a directory this user can write")
    })
  })
}
