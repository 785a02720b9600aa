import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { SqliteBackend } from "../src/backend/sqlite.js"
import { startRelay } from "../src/relay.js"

const alice = "alice" as UserId

describe("a relay on the backend it is given", () => {
  const dirs: string[] = []
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
  })

  it("keeps documents, hook outbox and client-id bindings in that backend, and closes it when it stops", async () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-given-backend-"))
    dirs.push(dir)
    const backend = new SqliteBackend(dir)
    const relay = await startRelay({ backend, dev: true, port: 0, warmUp: false, log: "silent" })
    const id = newConversationId()
    await relay.core.write(id, { kind: "user", user: alice }, (doc) => {
      createConversation(doc, alice, { kind: "group", id, participants: [] })
      sendMessage(doc, alice, { body: "kept" })
    })
    await relay.hooks?.idle()
    await relay.close()
    await expect(backend.documents.load(id)).rejects.toThrow(/closed/)

    const reopened = new SqliteBackend(dir)
    try {
      const stored = await reopened.documents.load(id)
      const last = stored.updates.at(-1)?.position ?? stored.through
      expect(last).toBeGreaterThan(0)
      // The bindings the authorization made (a server-side write runs under the relay's ids), and the
      // outbox's record of the events, live beside the documents.
      expect([...(await reopened.bindings.load(id)).values()]).toContain("relay")
      expect(await reopened.outbox.watermark(id)).toBe(last)
    } finally {
      await reopened.close()
    }
  })
})
