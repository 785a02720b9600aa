import "fake-indexeddb/auto"
import { join } from "node:path"
import { ErrorCode } from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

const relays: RelayProcess[] = []
afterEach(async () => {
  await destroyClients()
  for (const relay of relays.splice(0)) await relay.stop()
})

describe("a conversation whose stored state is damaged", () => {
  it("is reported unavailable with DAMAGED, keeps pending messages pending, and is not retried", async () => {
    const relay = await startRelay()
    relays.push(relay)
    const alice = await connectClient(relay, "alice-damaged")
    const chat = await alice.createConversation({ participants: ["bob-damaged"], title: "damaged" })
    const saved = chat.send("saved before the damage")
    await eventually(() => expect(chat.status(saved.id)).toBe("sent"))
    alice.disconnect()
    const pending = chat.send("written offline")
    // SIGTERM: the relay compacts the conversation into a snapshot before it exits.
    await relay.stop()
    const db = new Database(join(relay.dataDir, "parley.sqlite"))
    db.prepare("UPDATE snapshots SET data = ? WHERE doc = ?").run(Buffer.from([0x03, 0xff, 0xff]), chat.id)
    db.close()

    const again = await startRelay({ port: relay.port, dataDir: relay.dataDir })
    relays.push(again)
    alice.connect()
    await eventually(() =>
      expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.DAMAGED }),
    )
    expect(chat.connection.status).toBe("offline")
    expect(chat.status(pending.id)).toBe("pending")

    const bob = await connectClient(again, "bob-damaged")
    await expect(bob.conversation(chat.id).ready()).rejects.toMatchObject({ code: ErrorCode.DAMAGED })
  })
})
