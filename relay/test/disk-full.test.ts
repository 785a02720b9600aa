import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  ErrorCode,
  inboxDocumentName,
  listInbox,
  listMessages,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { SqliteBackend } from "../src/backend/sqlite.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import type { DiskSpace } from "../src/storage/disk-space.js"
import { apiClient, createKey } from "./api/helpers.js"
import { TestClient } from "./helpers/clients.js"
import { signToken } from "./helpers/relay-process.js"
import { until } from "./helpers/until.js"

// A full disk without mounting one (test/storage-failure/full-disk.test.ts fills a real tmpfs where
// it may): appends fail as SQLite's do on a full disk, while the probe's own one-row write still
// succeeds — as it does on a disk that just filled up, in pages SQLite had already allocated — and
// the file system's figures, which the probe reads, say how much room is left.

const SECRET = "disk-full-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const MIB = 1024 * 1024

/** A data directory whose disk the test fills and frees. */
class Disk {
  readonly dir = mkdtempSync(join(tmpdir(), "parley-disk-full-"))
  full = false
  /** The file system's figures still show room while the disk is full: it filled since they were last read. */
  figuresLag = false
  /** The figures show the disk full while writes still fit (in pages SQLite holds): nobody wrote since it filled. */
  figuresFull = false
  /**
   * Each probe of the relay's storage that decides whether writes are let through (at the start and
   * while failing; not the watch's while it answers), in order: whether it said they could be.
   */
  readonly probes: boolean[] = []

  space(): DiskSpace {
    return (this.full && !this.figuresLag) || this.figuresFull
      ? { free: 0, size: 8 * MIB }
      : { free: 4096 * MIB, size: 8192 * MIB }
  }

  /** The data directory's backend, its appends failing while the disk is full. */
  backend(): SqliteBackend {
    const backend = new SqliteBackend(this.dir, { diskSpace: () => this.space() })
    const documents = backend.documents
    const append = documents.append.bind(documents)
    documents.append = (name, updates) =>
      this.full
        ? Promise.reject(Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" }))
        : append(name, updates)
    // The hook outbox lives in the same database: on a full disk its writes fail too.
    const outbox = backend.outbox
    const enqueue = outbox.enqueue.bind(outbox)
    outbox.enqueue = (batch) =>
      this.full
        ? Promise.reject(Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" }))
        : enqueue(batch)
    const ping = documents.ping.bind(documents)
    documents.ping = (options) => {
      const probe = ping(options)
      if (!options?.recovering) return probe
      return probe.then(
        () => {
          this.probes.push(true)
        },
        (error: unknown) => {
          this.probes.push(false)
          throw error
        },
      )
    }
    return backend
  }
}

const disks: Disk[] = []
const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
  for (const d of disks.splice(0)) rmSync(d.dir, { recursive: true, force: true })
})

function disk(): Disk {
  const d = new Disk()
  disks.push(d)
  return d
}

async function relayOn(d: Disk): Promise<RunningRelay> {
  const relay = await startRelay({
    backend: d.backend(),
    port: 0,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    warmUp: false,
  })
  relays.push(relay)
  return relay
}

async function client(relay: RunningRelay, name: string, user: UserId): Promise<TestClient> {
  const c = new TestClient(relay.url, name, await signToken(SECRET, user))
  clients.push(c)
  await c.opened
  return c
}

async function readyz(relay: RunningRelay): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${relay.httpUrl}/readyz`)
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

const notReadyForStorage = {
  status: "not ready",
  failing: [
    expect.objectContaining({
      dependency: "storage",
      code: ErrorCode.STORAGE_UNAVAILABLE,
      error: expect.stringMatching(
        /^the disk holding .* is full \(0 B free\): writes resume once 1\.0 MiB is free$/,
      ),
    }),
  ],
}

/** A conversation of alice and bob holding alice's message `body`, written through `relay`. */
async function conversation(relay: RunningRelay, body: string): Promise<ConversationId> {
  const id = newConversationId()
  await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
    createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(doc, alice, { body })
  })
  return id
}

const bodies = (c: TestClient) => listMessages(c.doc, { last: 10 }).map((m) => m.body)

describe("a relay whose disk is full", () => {
  it("stays not ready while the disk is full, though the probe's one-row write still fits, and is ready once space is freed", async () => {
    const d = disk()
    const relay = await relayOn(d)
    const id = await conversation(relay, "before")
    const a = await client(relay, id, alice)
    await a.synced()

    d.full = true
    d.probes.length = 0
    sendMessage(a.doc, alice, { body: "while full" })
    await a.until(() => a.errors.some((e) => e.code === ErrorCode.STORAGE_UNAVAILABLE))
    // Three probes with backoff; the one-row write alone would have said "back" at the first.
    await until(
      () => d.probes.length,
      (n) => n >= 3,
    )
    expect(d.probes).not.toContain(true)
    const notReady = await readyz(relay)
    expect(notReady.status).toBe(503)
    expect(notReady.body).toEqual(notReadyForStorage)

    d.full = false
    // The message refused while the disk was full is stored once storage is back (the socket stayed open).
    await a.allSaved()
    expect((await readyz(relay)).status).toBe(200)
    expect(a.closeEvent).toBeUndefined()
  })

  it("says not ready on a disk that filled while nobody wrote, before a user's write finds it full, and ready once space is freed", async () => {
    const d = disk()
    const relay = await relayOn(d)
    const id = await conversation(relay, "before")
    expect((await readyz(relay)).status).toBe(200)
    // The disk fills (another process, a log) while the relay writes nothing that fails: its probe's write
    // still fits, as the next appends may not.
    d.figuresFull = true
    await until(
      async () => (await readyz(relay)).status,
      (status) => status === 503,
      10_000,
    )
    expect((await readyz(relay)).body).toEqual(notReadyForStorage)
    // Writes are refused retryably meanwhile (not stored into a disk that has no room), and taken once
    // space is freed.
    d.figuresFull = false
    await until(
      async () => (await readyz(relay)).status,
      (status) => status === 200,
      10_000,
    )
    const a = await client(relay, id, alice)
    await a.synced()
    sendMessage(a.doc, alice, { body: "after" })
    await a.allSaved()
    expect((await readyz(relay)).status).toBe(200)
  })

  it("starts on a full disk: not ready with the reason, serves stored conversations, refuses writes retryably, and stores them once space is freed", async () => {
    const d = disk()
    const before = await relayOn(d)
    const first = await conversation(before, "stored in the first")
    const second = await conversation(before, "stored in the second")
    // Bob's inbox holds both (written by the relay's inbox upkeep, after the conversations).
    await until(
      () => before.core.read(inboxDocumentName(bob), (doc) => listInbox(doc).length),
      (entries) => entries === 2,
    )
    await before.close()
    relays.splice(0)

    d.full = true
    const relay = await relayOn(d)
    const notReady = await readyz(relay)
    expect(notReady.status).toBe(503)
    expect(notReady.body).toEqual(notReadyForStorage)
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)

    const a = await client(relay, first, alice)
    await a.synced()
    expect(bodies(a)).toEqual(["stored in the first"])
    sendMessage(a.doc, alice, { body: "written while full" })
    await a.until(() => a.errors.length > 0)
    expect(a.errors).toEqual([expect.objectContaining({ code: ErrorCode.STORAGE_UNAVAILABLE })])
    // Another conversation, loaded after a write was refused: still served to its members.
    const b = await client(relay, second, bob)
    await b.synced()
    expect(bodies(b)).toEqual(["stored in the second"])
    // And his inbox.
    const inbox = await client(relay, inboxDocumentName(bob), bob)
    await inbox.synced()
    const previews = () => new Map(listInbox(inbox.doc).map((e) => [e.conversationId, e.lastMessage?.text]))
    expect(previews()).toEqual(
      new Map([
        [first, "stored in the first"],
        [second, "stored in the second"],
      ]),
    )
    expect(a.closeEvent).toBeUndefined()
    expect(b.closeEvent).toBeUndefined()

    d.full = false
    await until(
      () => readyz(relay).then((r) => r.status),
      (status) => status === 200,
    )
    // Refused at once, it was never stored: the client sends its pending work again (as the SDK does).
    a.sendUpdate(Y.encodeStateAsUpdate(a.doc))
    await a.allSaved()
    const reader = await client(relay, first, bob)
    await reader.until(() => bodies(reader).length === 2)
    expect(bodies(reader)).toEqual(["stored in the first", "written while full"])
    await inbox.until(() => previews().get(first) === "written while full")
    expect(inbox.closeEvent).toBeUndefined()
  })

  it("serves a conversation whose stored messages were never numbered, and numbers them once space is freed", async () => {
    const d = disk()
    // A crash between storing a change and numbering its message: the stored log holds it unnumbered.
    const id = newConversationId()
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id, participants: [bob] })
    sendMessage(doc, alice, { body: "stored, never numbered" })
    const seeding = d.backend()
    await seeding.documents.append(id, [Y.encodeStateAsUpdate(doc)])
    await seeding.close()

    d.full = true
    const relay = await relayOn(d)
    const b = await client(relay, id, bob)
    await b.synced()
    expect(bodies(b)).toEqual(["stored, never numbered"])
    expect(listMessages(b.doc, { last: 10 })[0]!.seq).toBeUndefined()
    expect(b.closeEvent).toBeUndefined()

    d.full = false
    // Numbered without anyone writing or reconnecting.
    await b.until(() => listMessages(b.doc, { last: 10 })[0]?.seq !== undefined)
    expect(listMessages(b.doc, { last: 10 })[0]!.seq).toBe(1)
    expect(b.closeEvent).toBeUndefined()
  }, 30_000)
  it("answers the HTTP API's sends and reads at once while the disk is full, none queued behind a held send, and a retry under the held one's id sends it once", async () => {
    const d = disk()
    const key = await createKey(d.dir, "backend", [
      "conversations:read",
      "conversations:write",
      "messages:read",
      "messages:write",
    ])
    const relay = await relayOn(d)
    const api = apiClient(() => relay.httpUrl, key)
    expect(
      (await api("POST", "/v1/conversations", { id: "g~full", participants: [{ user: "bob" }] })).status,
    ).toBe(201)
    const b = await client(relay, "g~full", bob)
    await b.synced()

    await until(
      () => api("GET", "/v1/users/bob/conversations").then((r) => r.body.total),
      (total) => total === 1,
    )

    // Full before the storage probe knows: the first send's append fails and its message waits in memory.
    d.figuresLag = true
    d.full = true
    const started = performance.now()
    const first = await api("POST", "/v1/conversations/g~full/messages", { body: "first" })
    expect(first.status).toBe(503)
    expect(first.body.code).toBe(ErrorCode.STORAGE_UNAVAILABLE)
    const heldId = /retry with "id": "([^"]+)"/.exec(first.body.detail)?.[1]
    expect(heldId).toBeDefined()
    d.figuresLag = false
    // The next one is refused at once too, not queued behind the held one until space is freed.
    const second = await api("POST", "/v1/conversations/g~full/messages", { body: "second" })
    expect(second.status).toBe(503)
    expect(second.body.code).toBe(ErrorCode.STORAGE_UNAVAILABLE)
    // Reads would show the held message, not yet stored: refused at once as well, not left unanswered.
    for (const path of [
      "/v1/conversations/g~full/messages",
      "/v1/conversations/g~full",
      "/v1/users/bob/conversations",
      "/v1/users/bob/unread",
    ]) {
      const read = await api("GET", path)
      expect(read.status).toBe(503)
      expect(read.body.code).toBe(ErrorCode.STORAGE_UNAVAILABLE)
    }
    expect(performance.now() - started).toBeLessThan(5_000)
    expect(bodies(b)).toEqual([])

    d.full = false
    await until(
      () => readyz(relay).then((r) => r.status),
      (status) => status === 200,
    )
    // The held message was stored without anyone asking again; a retry under its id finds it.
    await b.until(() => bodies(b).length === 1)
    const retried = await api("POST", "/v1/conversations/g~full/messages", { id: heldId, body: "first" })
    expect(retried.status).toBe(200)
    expect(
      (await api("POST", "/v1/conversations/g~full/messages", { id: "m-second", body: "second" })).status,
    ).toBe(201)
    const listed = await api("GET", "/v1/conversations/g~full/messages")
    expect(listed.body.messages.map((m: { body: string }) => m.body)).toEqual(["first", "second"])
    await b.until(() => bodies(b).length === 2)
    expect(bodies(b)).toEqual(["first", "second"])
  }, 30_000)
})
