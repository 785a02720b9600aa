import { copyFileSync, existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { findDamage } from "../src/storage/integrity.js"
import { CATALOG_FILE, SQLITE_FILE, SqliteStorage } from "../src/storage/sqlite.js"
import { runStorageConformance } from "./conformance/storage.js"
import { sqliteTamper } from "./helpers/damage.js"

runStorageConformance("sqlite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-sqlite-"))
  return {
    open: async () => new SqliteStorage(dir),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    persistent: true,
    tamper: sqliteTamper(dir),
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
    const storage = new SqliteStorage(dir)
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

    const survivor = new SqliteStorage(copy)
    try {
      expect(findDamage(await survivor.load("g~kept"))).toMatch(/ends at position 1, before position 2/)
      expect(findDamage(await survivor.load("g~new"))).toMatch(/none of its data/)
    } finally {
      await survivor.close()
    }
  })

  it("records the documents of a data directory from before the catalog when it first opens", async () => {
    const dir = tempDir()
    const storage = new SqliteStorage(dir)
    await storage.append("g~old", updates())
    await storage.close()
    for (const file of [CATALOG_FILE, `${CATALOG_FILE}-wal`, `${CATALOG_FILE}-shm`])
      rmSync(join(dir, file), { force: true })
    await sqliteTamper(dir).deleteUpdates("g~old", [3])
    const reopened = new SqliteStorage(dir)
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
})
