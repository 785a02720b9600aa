import { join } from "node:path"
import { createConversation, newConversationId, sendMessage, type UserId } from "@parley/shared"
import Database from "better-sqlite3"
import { afterAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { SQLITE_FILE } from "../src/backend/sqlite.js"
import { TestClient } from "./helpers/clients.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

afterAll(() => stopRelayProcesses())

/** The client ids the relay has bound for `doc`, and every client id its stored log and snapshot write under. */
function stored(dataDir: string, doc: string): { bound: number; writers: Set<number>; unbound: number[] } {
  const db = new Database(join(dataDir, SQLITE_FILE), { readonly: true })
  try {
    const bindings = db
      .prepare("SELECT client_id FROM parley_client_bindings WHERE document = ?")
      .all(doc) as { client_id: number }[]
    const rows = [
      ...(db.prepare("SELECT data FROM snapshots WHERE doc = ?").all(doc) as { data: Buffer }[]),
      ...(db.prepare("SELECT data FROM updates WHERE doc = ? ORDER BY position").all(doc) as {
        data: Buffer
      }[]),
    ]
    const writers = new Set<number>()
    for (const { data } of rows)
      for (const struct of Y.decodeUpdate(new Uint8Array(data)).structs) writers.add(struct.id.client)
    const boundIds = new Set(bindings.map((b) => Number(b.client_id)))
    return { bound: bindings.length, writers, unbound: [...writers].filter((id) => !boundIds.has(id)) }
  } finally {
    db.close()
  }
}

describe("the relay's own client ids", () => {
  it("are stored when the relay writes under them, not at every load: readers loading a conversation add no rows", async () => {
    const relay = await startRelayProcess({ args: ["--idle-unload-ms", "50"] })
    const id = newConversationId()
    // The next unload of the conversation (the relay's log holds every earlier one too).
    const unloads = () =>
      relay.lines.filter((l) => l.includes('"document unloaded"') && l.includes(id)).length
    /** Opens the conversation as `user`, runs `use`, closes it, and waits for the relay to unload it. */
    const session = async (user: UserId, use: (client: TestClient) => void | Promise<void>) => {
      const client = new TestClient(relay.url, id, await relay.token(user))
      await client.synced()
      await use(client)
      const before = unloads()
      client.close()
      const deadline = Date.now() + 10_000
      while (unloads() === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
      expect(unloads()).toBe(before + 1)
    }

    await session(alice, async (a) => {
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
      sendMessage(a.doc, alice, { body: "numbered by the relay, under its own client id" })
      await a.allSaved()
    })
    const written = stored(relay.dataDir, id)
    // Every id the stored document writes under is bound, the relay's (the message's number) included.
    expect(written.unbound).toEqual([])
    expect(written.writers.size).toBeGreaterThanOrEqual(2)

    // Bob reads it five times, the conversation loaded afresh each time (new relay ids each load).
    for (let load = 0; load < 5; load++)
      await session(bob, (reader) => expect(reader.doc.getMap("meta").size).toBeGreaterThan(0))
    // Before: two rows for the relay's ids at every load, kept for good.
    expect(stored(relay.dataDir, id).bound).toBe(written.bound)

    // A load the relay writes in again stores its new ids before what it writes under them.
    await session(alice, async (again) => {
      sendMessage(again.doc, alice, { body: "numbered again" })
      await again.allSaved()
    })
    const after = stored(relay.dataDir, id)
    expect(after.unbound).toEqual([])
    expect(after.writers.size).toBeGreaterThan(written.writers.size)
  })

  it("are not stored for an update the relay refuses: a stranger's updates to made-up ids leave no rows", async () => {
    const relay = await startRelayProcess()
    const ids = [newConversationId(), newConversationId(), newConversationId()]
    for (const id of ids) {
      const carol = new TestClient(relay.url, id, await relay.token("carol"))
      // Not a creation: a bare title, refused (the conversation does not exist).
      carol.doc.getMap("meta").set("title", "squatted")
      const deadline = Date.now() + 10_000
      while (carol.errors.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
      expect(carol.errors[0]?.code).toBe("FORBIDDEN")
      carol.close()
    }
    // Before: two rows (the relay's document and sequence-writer ids) per id, kept for good.
    for (const id of ids) expect(stored(relay.dataDir, id).bound).toBe(0)
  })
})
