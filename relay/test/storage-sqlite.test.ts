import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { SqliteStorage } from "../src/storage/sqlite.js"
import { runStorageConformance } from "./conformance/storage.js"

runStorageConformance("sqlite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-sqlite-"))
  return {
    open: async () => new SqliteStorage(dir),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
    persistent: true,
  }
})
