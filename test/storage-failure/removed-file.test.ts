import "fake-indexeddb/auto"
import { rmSync } from "node:fs"
import { join } from "node:path"
import type { ChatClient } from "@parley/client"
import { afterEach, describe, expect, it } from "vitest"
import { SQLITE_FILE } from "../../relay/src/backend/sqlite.js"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"
import { eventually, expectNotReady, healthz, sdkClient } from "./helpers.js"

const clients: ChatClient[] = []
afterEach(async () => {
  for (const client of clients.splice(0)) await client.destroy()
  await stopRelayProcesses()
})

describe("a relay whose SQLite database file is removed while it runs", () => {
  it("acknowledges nothing written afterwards, says it is not ready, and keeps serving", async () => {
    const relay = await startRelayProcess()
    const client = await sdkClient(relay)
    clients.push(client)
    const chat = await client.createConversation({ participants: [], title: "removed" })
    const before = chat.send("before")
    await eventually(() => expect(chat.status(before.id)).toBe("sent"))

    // An operator's mistake: the database and its log deleted under the running relay. SQLite keeps
    // writing through its open descriptors into files nobody will open again.
    for (const suffix of ["", "-wal", "-shm"])
      rmSync(join(relay.dataDir, SQLITE_FILE + suffix), { force: true })
    const after = ["one", "two", "three"].map((body) => chat.send(body))
    await eventually(() => expectNotReady(relay.httpUrl))
    // Before: all three acknowledged ("sent"), /readyz 200, and all three gone at the next start.
    await new Promise((resolve) => setTimeout(resolve, 1000))
    expect(after.map((m) => chat.status(m.id))).toEqual(["pending", "pending", "pending"])
    expect(await healthz(relay.httpUrl)).toBe(200)
    expect(relay.child.exitCode).toBeNull()
  })
})
