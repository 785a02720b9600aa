import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { SqliteOutbox } from "../../src/hooks/sqlite-outbox.js"
import { runOutboxConformance } from "./outbox-conformance.js"

runOutboxConformance("memory", async () => ({ outbox: new MemoryOutbox() }))

runOutboxConformance("sqlite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-outbox-"))
  return {
    outbox: new SqliteOutbox(dir),
    reopen: async () => new SqliteOutbox(dir),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  }
})
