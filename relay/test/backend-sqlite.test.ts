import { spawnSync } from "node:child_process"
import { copyFileSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { UserId } from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { CATALOG_FILE, LEGACY_FILES, SQLITE_FILE, SqliteBackend } from "../src/backend/sqlite.js"
import { SqliteOutbox } from "../src/hooks/sqlite-outbox.js"
import { SqliteClientBindingStore } from "../src/policy/client-bindings.js"
import { findDamage } from "../src/storage/integrity.js"
import { POSITIONS_KEPT, SqliteStorage } from "../src/storage/sqlite.js"
import { WalCheckpointer } from "../src/storage/wal-checkpointer.js"
import { runBackendConformance } from "./conformance/backend.js"
import { sampleEvent } from "./conformance/outbox.js"
import { sqliteTamper } from "./helpers/damage.js"

/** The documents of a new SQLite backend in `dir`: closing them closes the backend. */
function sqliteDocuments(dir: string) {
  const backend = new SqliteBackend(dir)
  return Object.assign(Object.create(backend.documents) as typeof backend.documents, {
    close: () => backend.close(),
  })
}

runBackendConformance("sqlite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-sqlite-"))
  return {
    open: async () => new SqliteBackend(dir),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    persistent: true,
    tamper: sqliteTamper(dir),
    footprint: async () => {
      const db = new Database(join(dir, SQLITE_FILE), { readonly: true })
      try {
        const events = db
          .prepare(
            `SELECT COUNT(*) AS rows, COALESCE(SUM(LENGTH(payload)), 0) AS bytes, COALESCE(MAX(LENGTH(payload)), 0) AS max
               FROM (SELECT payload FROM event_log UNION ALL SELECT payload FROM hook_events)`,
          )
          .get() as { rows: number; bytes: number; max: number }
        const lists = db
          .prepare("SELECT COUNT(*) AS rows, COALESCE(SUM(LENGTH(json)), 0) AS bytes FROM member_lists")
          .get() as { rows: number; bytes: number }
        return {
          rows: events.rows,
          payloadBytes: events.bytes,
          maxPayload: events.max,
          lists: lists.rows,
          listBytes: lists.bytes,
        }
      } finally {
        db.close()
      }
    },
  }
})

describe("sqlite catalog", () => {
  const dirs: string[] = []
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-catalog-"))
    dirs.push(dir)
    return dir
  }
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  })
  const updates = () => {
    const doc = new Y.Doc()
    const out: Uint8Array[] = []
    doc.on("update", (u: Uint8Array) => out.push(u))
    for (const text of ["a", "b", "c"]) doc.getArray<string>("a").push([text])
    return out
  }

  it("finds what the main file lost with its WAL frames damaged, not new, because the catalog is a file of its own", async () => {
    const dir = tempDir()
    const storage = sqliteDocuments(dir)
    const [u1, u2, u3] = updates()
    await storage.append("g~kept", [u1!])
    const db = new Database(join(dir, SQLITE_FILE))
    db.pragma("wal_checkpoint(TRUNCATE)")
    db.close()
    // From here on the main file's changes live only in its WAL.
    await storage.append("g~kept", [u2!])
    await storage.append("g~new", [u3!])
    const copy = tempDir()
    for (const file of [SQLITE_FILE, CATALOG_FILE, `${CATALOG_FILE}-wal`])
      if (existsSync(join(dir, file))) copyFileSync(join(dir, file), join(copy, file))
    await storage.close()

    const survivor = sqliteDocuments(copy)
    try {
      expect(findDamage(await survivor.load("g~kept"))).toMatch(/ends at position 1, before position 2/)
      expect(findDamage(await survivor.load("g~new"))).toMatch(/none of its data/)
    } finally {
      await survivor.close()
    }
  })

  it("records the documents of a data directory from before the catalog when it first opens", async () => {
    const dir = tempDir()
    const storage = sqliteDocuments(dir)
    await storage.append("g~old", updates())
    await storage.close()
    for (const file of [CATALOG_FILE, `${CATALOG_FILE}-wal`, `${CATALOG_FILE}-shm`])
      rmSync(join(dir, file), { force: true })
    await sqliteTamper(dir).deleteUpdates("g~old", [3])
    const reopened = sqliteDocuments(dir)
    try {
      const loaded = await reopened.load("g~old")
      expect(loaded.record).toEqual({ lastPosition: 2, damaged: null })
      expect(findDamage(loaded)).toBeUndefined()
      await sqliteTamper(dir).deleteData("g~old")
      expect(findDamage(await reopened.load("g~old"))).toMatch(/none of its data/)
    } finally {
      await reopened.close()
    }
  })

  it("adds checksums to tables made before them: old rows load unchecked, new rows are checked", async () => {
    const dir = tempDir()
    const storage = sqliteDocuments(dir)
    await storage.append("g~pre", updates())
    await storage.close()
    // The tables as an earlier version made them, without the checksum column.
    const db = new Database(join(dir, SQLITE_FILE))
    for (const table of ["updates", "snapshots"]) db.exec(`ALTER TABLE ${table} DROP COLUMN crc`)
    db.close()
    const reopened = sqliteDocuments(dir)
    try {
      const old = await reopened.load("g~pre")
      expect(old.updates.map((u) => u.checksum)).toEqual([null, null, null])
      expect(findDamage(old)).toBeUndefined()
      await reopened.append("g~pre", [updates()[0]!])
      await sqliteTamper(dir).overwriteUpdate("g~pre", 4, updates()[1]!)
      expect(findDamage(await reopened.load("g~pre"))).toMatch(/position 4 does not match its checksum/)
    } finally {
      await reopened.close()
    }
  })
})

describe("sqlite backend files", () => {
  const dirs: string[] = []
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-files-"))
    dirs.push(dir)
    return dir
  }
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  })

  it("keeps documents, hook outbox and client-id bindings in one database file beside the catalog", async () => {
    const dir = tempDir()
    const backend = new SqliteBackend(dir)
    const doc = new Y.Doc()
    doc.getArray<string>("a").push(["x"])
    await backend.documents.append("g~one", [Y.encodeStateAsUpdate(doc)])
    await backend.outbox.enqueue({
      document: "c~one",
      events: [{ event: sampleEvent("e1"), targets: ["t"] }],
    })
    await backend.bindings.bind("g~one", [[1, "user:alice"]])
    await backend.close()
    expect(
      readdirSync(dir)
        .filter((f) => f.endsWith(".sqlite"))
        .sort(),
    ).toEqual([CATALOG_FILE, SQLITE_FILE])
    const db = new Database(join(dir, SQLITE_FILE), { readonly: true })
    try {
      const count = (table: string) =>
        (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n
      // The delivery still owed is on its event's row (`owed`): delivery rows are for retried ones.
      expect([count("updates"), count("hook_events"), count("parley_client_bindings")]).toEqual([1, 1, 1])
    } finally {
      db.close()
    }
  })

  it("syncs the documents' commits (synchronous=FULL) after opening and after the outbox's own unsynced commits", async () => {
    const backend = new SqliteBackend(tempDir())
    try {
      // The connection is the backend's own; 2 is FULL, 1 NORMAL (a commit without an fsync).
      const db = (backend as unknown as { db: Database.Database }).db
      const level = () => db.pragma("synchronous", { simple: true })
      expect(level()).toBe(2)
      // The appends' own commits are synced by an fdatasync of the log off the event loop (WalSync).
      expect((backend as unknown as { walSync: unknown }).walSync).toBeDefined()
      // With no append due, the outbox commits on its own at NORMAL, then must put FULL back.
      const [delivery] = await backend.outbox.enqueue({
        document: "g~one",
        events: [{ event: sampleEvent("e1"), targets: ["t"] }],
      })
      expect(level()).toBe(2)
      await backend.documents.append("g~one", [new Uint8Array([1])])
      await backend.outbox.delivered(delivery!.seq, "t")
      expect(level()).toBe(2)
      await backend.documents.append("g~one", [new Uint8Array([2])])
      expect(level()).toBe(2)
    } finally {
      await backend.close()
    }
  })

  it("keeps the next log positions of recently written documents only, and numbers on correctly after forgetting them", async () => {
    const dir = tempDir()
    const db = new Database(join(dir, "documents.sqlite"))
    db.pragma("journal_mode = WAL")
    db.pragma("synchronous = FULL")
    const catalog = new Database(join(dir, "catalog.sqlite"))
    catalog.pragma("journal_mode = WAL")
    const storage = new SqliteStorage(db, catalog)
    const update = Y.encodeStateAsUpdate(new Y.Doc())
    const cached = () => (storage as unknown as { next: Map<string, number> }).next.size
    try {
      // A relay that lives long writes to ever more documents (each new conversation and inbox).
      for (let round = 0; round < 3; round++)
        await Promise.all(
          Array.from({ length: POSITIONS_KEPT / 2 }, (_, i) => storage.append(`g~${round}-${i}`, [update])),
        )
      expect(cached()).toBeLessThanOrEqual(POSITIONS_KEPT)
      // Documents whose positions were forgotten go on from where their log is.
      await expect(storage.append("g~0-1", [update, update])).resolves.toEqual([2, 3])
      await expect(storage.append("g~2-7", [update])).resolves.toEqual([2])
    } finally {
      await storage.close()
      db.close()
      catalog.close()
    }
  })

  it("acknowledges appends once their commit is synced off the event loop, and commits those made meanwhile together", async () => {
    const dir = tempDir()
    const file = join(dir, "documents.sqlite")
    const db = new Database(file)
    db.pragma("journal_mode = WAL")
    db.pragma("synchronous = FULL")
    const catalog = new Database(join(dir, "catalog.sqlite"))
    catalog.pragma("journal_mode = WAL")
    // The disk's syncs, finished by the test: a sync under way is what the relay waits for.
    const syncs: (() => void)[] = []
    const storage = new SqliteStorage(db, catalog, {
      syncLog: () => new Promise<void>((resolve) => syncs.push(resolve)),
    })
    const reader = new Database(file, { readonly: true })
    const stored = () => (reader.prepare("SELECT count(*) AS n FROM updates").get() as { n: number }).n
    const recorded = (name: string) =>
      catalog.prepare("SELECT last_position FROM documents WHERE doc = ?").get(name)
    const update = Y.encodeStateAsUpdate(new Y.Doc())
    try {
      let acknowledged = false
      const first = storage.append("g~a", [update]).then((positions) => {
        acknowledged = true
        return positions
      })
      await expect.poll(() => syncs.length).toBe(1)
      // Committed (another connection sees it), not acknowledged, nor in the catalog, before the sync ends.
      expect(stored()).toBe(1)
      expect(acknowledged).toBe(false)
      expect(recorded("g~a")).toBeUndefined()
      // The event loop goes on meanwhile; appends made now wait for the next commit, all in one.
      const second = storage.append("g~b", [update])
      const third = storage.append("g~a", [update])
      await new Promise((resolve) => setTimeout(resolve, 20))
      expect([syncs.length, stored(), acknowledged]).toEqual([1, 1, false])
      syncs[0]!()
      await expect(first).resolves.toEqual([1])
      expect(recorded("g~a")).toEqual({ last_position: 1 })
      await expect.poll(() => syncs.length).toBe(2)
      expect(stored()).toBe(3)
      syncs[1]!()
      await expect(Promise.all([second, third])).resolves.toEqual([[1], [2]])
      // Only the appends' commit went without SQLite's own sync: the connection is back to FULL (2).
      expect(db.pragma("synchronous", { simple: true })).toBe(2)
    } finally {
      reader.close()
      await storage.close()
      db.close()
      catalog.close()
    }
  })

  it("keeps statement journals in memory: the hook rows' savepoint in each commit writes no temporary file", async () => {
    const backend = new SqliteBackend(tempDir())
    try {
      // The connection is the backend's own; 2 is MEMORY (0, the default, puts them in files).
      const db = (backend as unknown as { db: Database.Database }).db
      expect(db.pragma("temp_store", { simple: true })).toBe(2)
    } finally {
      await backend.close()
    }
  })

  it("checkpoints its WAL into the database file from a thread of its own while it stays open", async () => {
    const dir = tempDir()
    const backend = new SqliteBackend(dir)
    try {
      // About 1 MB of appends: below any threshold at which the relay's own connection would checkpoint.
      for (let i = 0; i < 64; i++) {
        const doc = new Y.Doc()
        doc.getText("t").insert(0, `${i}`.padEnd(16_000, "x"))
        await backend.documents.append(`g~${i}`, [Y.encodeStateAsUpdate(doc)])
      }
      const file = join(dir, SQLITE_FILE)
      // In WAL mode pages reach the database file only through a checkpoint.
      while (statSync(file).size < 512 * 1024) await new Promise((resolve) => setTimeout(resolve, 20))
      expect(statSync(file).size).toBeGreaterThanOrEqual(512 * 1024)
    } finally {
      await backend.close()
    }
  })

  it("truncates the write-ahead log at every scrub, though another connection is checkpointing it", async () => {
    const dir = tempDir()
    const backend = new SqliteBackend(dir)
    // A second checkpointing thread, as often as it can: scrubs meet its checkpoints (SQLite answers
    // "busy" at once to a checkpoint while another runs, and truncates nothing).
    const rival = new WalCheckpointer(join(dir, SQLITE_FILE), () => {}, 1)
    try {
      const wal = join(dir, `${SQLITE_FILE}-wal`)
      for (let i = 0; i < 60; i++) {
        const doc = new Y.Doc()
        doc.getText("t").insert(0, `${i}`.padEnd(40_000, "x"))
        await backend.documents.append(`g~${i}`, [Y.encodeStateAsUpdate(doc)])
        await backend.purge.scrub()
        // What a purge deleted lives on in the log's old pages until it is truncated.
        expect(statSync(wal).size).toBe(0)
      }
    } finally {
      await rival.stop()
      await backend.close()
    }
  })

  it("tells the relay when its checkpointing thread fails, and still stops", async () => {
    const heard: string[] = []
    const checkpointer = new WalCheckpointer(join(tempDir(), "missing.sqlite"), (message) =>
      heard.push(message),
    )
    await expect.poll(() => heard.length, { timeout: 10_000 }).toBeGreaterThan(0)
    expect(heard[0]).toMatch(/directory does not exist|unable to open|no such file/i)
    await checkpointer.stop()
  })

  /** Runs `body` as a script of its own, with `backend` a SqliteBackend on `dir`: its exit status and output. */
  const runScript = (dir: string, body: string) => {
    const script = join(dir, "script.mts")
    writeFileSync(
      script,
      `import { SqliteBackend } from ${JSON.stringify(new URL("../src/backend/sqlite.ts", import.meta.url).pathname)}
import { sampleEvent } from ${JSON.stringify(new URL("./conformance/outbox.ts", import.meta.url).pathname)}
const backend = new SqliteBackend(${JSON.stringify(dir)})
${body}
`,
    )
    const run = spawnSync(process.execPath, ["--conditions=parley-source", "--import", "tsx", script], {
      encoding: "utf8",
      timeout: 30_000,
    })
    return { status: run.status, stdout: run.stdout.trim() }
  }

  it("lets a process with nothing else to do finish closing it and exit 0", () => {
    // Its checkpointing thread never keeps a process up, yet must not let one exit in the middle of close().
    expect(runScript(tempDir(), `await backend.close()\nconsole.log("closed")`)).toEqual({
      status: 0,
      stdout: "closed",
    })
  })

  it("lets a process with nothing else to do wait for its outbox's enqueue", () => {
    // The enqueue waits a few ms for a documents' commit to ride in: that wait must keep the process up.
    const body = `const deliveries = await backend.outbox.enqueue({ document: "g~c1", events: [{ event: sampleEvent("e1", "g~c1"), targets: ["hook:a"] }] })
console.log(deliveries.length, (await backend.events.read({ limit: 10 })).length)
await backend.close()`
    expect(runScript(tempDir(), body)).toEqual({ status: 0, stdout: "1 1" })
  })

  it("takes over the outbox and bindings files of a data directory from an earlier version", async () => {
    const dir = tempDir()
    // The earlier layout: each store in a file of its own, its last commits still in the file's WAL.
    const hooksDb = new Database(join(dir, "hooks.sqlite"))
    hooksDb.pragma("journal_mode = WAL")
    const old = new SqliteOutbox(hooksDb)
    const [dead, owed] = await old.enqueue({
      document: "c~old",
      events: [
        { event: sampleEvent("e1", "old"), targets: ["hook:a"] },
        { event: sampleEvent("e2", "old"), targets: ["hook:a"] },
      ],
      through: 5,
    })
    await old.deadLetter(dead!.seq, "hook:a", 8, "gave up", 1000)
    const bindingsDb = new Database(join(dir, "client-bindings.sqlite"))
    bindingsDb.pragma("journal_mode = WAL")
    await new SqliteClientBindingStore(bindingsDb).bind("g~old", [[9, "user:carol"]])
    const copy = tempDir()
    for (const file of readdirSync(dir))
      if (!file.endsWith("-shm")) copyFileSync(join(dir, file), join(copy, file))
    hooksDb.close()
    bindingsDb.close()

    const backend = new SqliteBackend(copy)
    try {
      expect((await backend.outbox.pending()).map((d) => [d.seq, d.event.event.id])).toEqual([
        [owed!.seq, "e2"],
      ])
      expect((await backend.outbox.deadLetters()).map((d) => [d.event.event.id, d.lastError])).toEqual([
        ["e1", "gave up"],
      ])
      expect(await backend.outbox.watermark("c~old")).toBe(5)
      expect(await backend.bindings.load("g~old")).toEqual(new Map([[9, "user:carol"]]))
      // New events continue the old sequence: they are delivered after the old ones.
      const [next] = await backend.outbox.enqueue({
        document: "c~old",
        events: [{ event: sampleEvent("e3", "old"), targets: ["hook:a"] }],
      })
      expect(next!.seq).toBeGreaterThan(owed!.seq)
    } finally {
      await backend.close()
    }
    for (const { file } of LEGACY_FILES) {
      expect(existsSync(join(copy, file))).toBe(false)
      expect(existsSync(join(copy, `${file}.migrated`))).toBe(true)
    }
    // Opening again finds nothing left to take over and keeps what it took.
    const again = new SqliteBackend(copy)
    try {
      expect((await again.outbox.pending()).map((d) => d.event.event.id)).toEqual(["e2", "e3"])
    } finally {
      await again.close()
    }
  })
})

describe("sqlite stored member lists", () => {
  it("takes each list's newest event from an older database's index, drops the index, and sweeps as before", async () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-members-"))
    const withMembers = (id: string, users: string[]) => {
      const event = sampleEvent(id)
      const participants = users.map((user, i) => ({
        user: user as UserId,
        role: "member" as const,
        addedBy: "alice" as UserId,
        addedAt: i,
      }))
      return { ...event, conversation: { ...event.conversation, participants } }
    }
    const lists = () => {
      const db = new Database(join(dir, SQLITE_FILE), { readonly: true })
      try {
        return {
          lists: db.prepare("SELECT COUNT(*) FROM member_lists").pluck().get(),
          indexes: db
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%by_members'")
            .pluck()
            .all(),
        }
      } finally {
        db.close()
      }
    }
    try {
      const first = new SqliteBackend(dir)
      try {
        // Ids 1 and 3 reference one list, 2 another.
        for (const [id, users] of [
          ["a", ["alice", "bob"]],
          ["b", ["alice", "carol"]],
          ["c", ["alice", "bob"]],
        ] as const)
          await first.outbox.enqueue({
            document: "g~c1",
            events: [{ event: withMembers(id, [...users]), targets: [] }],
          })
      } finally {
        await first.close()
      }
      expect(lists()).toEqual({ lists: 2, indexes: [] })
      // As an earlier version left it: the index, and no record of the lists' newest events.
      const old = new Database(join(dir, SQLITE_FILE))
      old.exec(`CREATE INDEX event_log_by_members ON event_log (members) WHERE members IS NOT NULL;
        CREATE INDEX hook_events_by_members ON hook_events (members) WHERE members IS NOT NULL;
        DELETE FROM member_list_uses;`)
      old.close()
      const backend = new SqliteBackend(dir)
      try {
        expect(lists()).toEqual({ lists: 2, indexes: [] })
        // Event 2 pruned: its list goes; the other is still referenced by event 3.
        expect(await backend.events.prune({ maxAgeMs: Number.MAX_SAFE_INTEGER, maxEvents: 1 })).toBe(2)
        expect(lists().lists).toBe(1)
        expect((await backend.events.read({ limit: 10 })).map((e) => JSON.stringify(e.event))).toEqual([
          JSON.stringify(withMembers("c", ["alice", "bob"])),
        ])
        await backend.events.prune({ maxAgeMs: Number.MAX_SAFE_INTEGER, maxEvents: 0 })
        expect(lists().lists).toBe(0)
      } finally {
        await backend.close()
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it("reads the whole payloads an older database stored, and stores new events' member lists apart", async () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-members-"))
    try {
      // The tables as they were before stored events referenced member lists.
      const old = new Database(join(dir, SQLITE_FILE))
      old.exec(`
        CREATE TABLE hook_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, document TEXT NOT NULL, payload TEXT NOT NULL);
        CREATE TABLE hook_deliveries (seq INTEGER NOT NULL REFERENCES hook_events(seq), target TEXT NOT NULL,
          attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL DEFAULT 0, last_error TEXT, dead_at INTEGER,
          PRIMARY KEY (seq, target)) WITHOUT ROWID;
        CREATE TABLE event_log (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL, type TEXT NOT NULL,
          at INTEGER NOT NULL, payload TEXT NOT NULL);
      `)
      const legacy = sampleEvent("old")
      old
        .prepare("INSERT INTO hook_events (document, payload) VALUES ('g~c1', ?)")
        .run(JSON.stringify(legacy))
      old.prepare("INSERT INTO hook_deliveries (seq, target) VALUES (1, 'hook:a')").run()
      old
        .prepare("INSERT INTO event_log (conversation, type, at, payload) VALUES (?, ?, ?, ?)")
        .run(legacy.event.conversationId, legacy.event.type, legacy.event.time, JSON.stringify(legacy))
      // Ids AUTOINCREMENT gave to events since pruned: never given again.
      old
        .prepare("INSERT INTO event_log (id, conversation, type, at, payload) VALUES (41, 'x', 'x', 0, '{}')")
        .run()
      old.prepare("DELETE FROM event_log WHERE id = 41").run()
      old.close()
      const backend = new SqliteBackend(dir)
      try {
        expect((await backend.outbox.pending()).map((d) => d.event)).toEqual([legacy])
        expect((await backend.events.read({ limit: 10 })).map((e) => e.event)).toEqual([legacy])
        const fresh = sampleEvent("new")
        await backend.outbox.enqueue({ document: "g~c1", events: [{ event: fresh, targets: ["hook:a"] }] })
        expect((await backend.outbox.pending()).map((d) => JSON.stringify(d.event))).toEqual(
          [legacy, fresh].map((e) => JSON.stringify(e)),
        )
        expect((await backend.events.read({ limit: 10 })).map((e) => JSON.stringify(e.event))).toEqual(
          [legacy, fresh].map((e) => JSON.stringify(e)),
        )
        expect((await backend.events.read({ limit: 10 })).map((e) => e.id)).toEqual(["1", "42"])
        await backend.events.prune({ maxAgeMs: Number.MAX_SAFE_INTEGER, maxEvents: Number.MAX_SAFE_INTEGER })
        const db = new Database(join(dir, SQLITE_FILE), { readonly: true })
        const stored = db.prepare("SELECT members FROM event_log ORDER BY id").pluck().all()
        const lists = db.prepare("SELECT COUNT(*) FROM member_lists").pluck().get()
        db.close()
        expect(stored[0]).toBeNull()
        expect(typeof stored[1]).toBe("string")
        expect(lists).toBe(1)
      } finally {
        await backend.close()
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("sqlite event log: a message's rows", () => {
  const event = (id: string, type: string, subject: unknown) => {
    const base = sampleEvent(id, "g~c1")
    return { ...base, event: { ...base.event, type }, subject }
  }
  const message = (id: string, body: string) => ({
    id,
    author: "alice",
    body,
    type: "text",
    createdAt: 1,
    attachments: [],
    metadata: {},
  })

  it("finds a deleted message's logged content through an index, in a log an older relay wrote too", async () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-log-message-"))
    try {
      // The table as it was before rows named their message, with a document.updated logged whole.
      const old = new Database(join(dir, SQLITE_FILE))
      old.exec(`CREATE TABLE event_log (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL,
        type TEXT NOT NULL, at INTEGER NOT NULL, payload TEXT NOT NULL)`)
      const insert = old.prepare(
        "INSERT INTO event_log (conversation, type, at, payload) VALUES ('g~c1', ?, 1, ?)",
      )
      const rows = [
        event("o1", "message.sent", { message: message("m1", "Old-Secret-Sent") }),
        event("o2", "message.edited", { messageId: "m1", body: "Old-Secret-Edit", editedAt: 2 }),
        event("o3", "reaction.added", { messageId: "m1", user: "bob", emoji: "👍" }),
        event("o4", "document.updated", {
          changes: [{ type: "message.sent", message: message("m1", "Old-Secret-Whole") }],
          positions: [1],
        }),
        event("o5", "message.sent", { message: message("m2", "Old-Kept") }),
      ]
      for (const row of rows) insert.run(row.event.type, JSON.stringify(row))
      old.close()

      const backend = new SqliteBackend(dir)
      try {
        await backend.outbox.enqueue({
          document: "g~c1",
          events: [
            {
              event: event("n1", "message.edited", { messageId: "m1", body: "New-Secret-Edit", editedAt: 3 }),
              targets: [],
            } as never,
          ],
        })
        const db = new Database(join(dir, SQLITE_FILE), { readonly: true })
        try {
          expect(db.prepare("SELECT message FROM event_log ORDER BY id").pluck().all()).toEqual([
            "m1",
            "m1",
            null,
            null,
            "m2",
            "m1",
          ])
          // The whole document.updated of the older relay was made lean: its message content is gone.
          expect(db.prepare("SELECT payload FROM event_log WHERE id = 4").pluck().get()).not.toContain(
            "Old-Secret",
          )
          // A deletion reads the message's rows by index, not the conversation's whole log.
          const plan = db
            .prepare(
              "EXPLAIN QUERY PLAN SELECT id, payload FROM event_log WHERE conversation = ? AND message = ?",
            )
            .all("g~c1", "m1") as { detail: string }[]
          expect(plan.map((p) => p.detail).join(" ")).toContain("event_log_by_message")
        } finally {
          db.close()
        }
        await backend.purge!.redactEvents("g~c1", "g~c1", { kind: "messages", ids: new Set(["m1"]) })
        const logged = JSON.stringify((await backend.events.read({ limit: 100 })).map((e) => e.event))
        expect(logged).not.toMatch(/(Old|New)-Secret/)
        expect(logged).toContain("Old-Kept")
        expect(logged).toContain("👍")
      } finally {
        await backend.close()
      }
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
