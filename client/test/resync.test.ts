import "fake-indexeddb/auto"
import { type RunningRelay, startRelay } from "@parley/relay"
import { ErrorCode, type PendingChange, Rule } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
// The relay process does not run the full per-update checker by default yet; this test plugs it in.
import { AuthorizationPolicy } from "../../relay/src/policy/authorization-policy.js"
import { MemoryClientBindingStore } from "../../relay/src/policy/client-bindings.js"
import { connectClient, destroyClients, eventually, type RelayProcess, SAVED } from "./support.js"

let running: RunningRelay
let relay: RelayProcess
beforeAll(async () => {
  running = await startRelay({
    port: 0,
    warmUp: false,
    dev: true,
    storage: "memory",
    policy: new AuthorizationPolicy(new MemoryClientBindingStore()),
    log: "warn",
  })
  relay = {
    port: running.port,
    url: running.url,
    httpUrl: running.httpUrl,
    dataDir: "",
    stop: () => running.close(),
  }
})
afterAll(async () => {
  await running?.close()
})
afterEach(destroyClients)

describe("resync after the relay refuses an update", () => {
  it("re-applies the valid pending work and fails the refused change with its rule, surviving a reload", async () => {
    const alice = await connectClient(relay, "alice")
    const chat = await alice.createConversation({ participants: ["bob"], title: "original" })
    chat.changeRole("bob", "admin")
    await eventually(() => expect(chat.connection.status).toBe("online"))
    const bob = await connectClient(relay, "bob", { storage: "indexeddb" })
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bobChat.role).toBe("admin"))

    // Bob, offline and still an admin here, renames and writes; meanwhile Alice demotes him.
    bob.disconnect()
    bobChat.rename("bob's title")
    const valid = bobChat.send("still valid")
    chat.changeRole("bob", "member")
    await eventually(() => expect(chat.participants.find((p) => p.user === "bob")?.role).toBe("member"))
    const errors: { code: string; rule?: string; change?: PendingChange }[] = []
    bobChat.on("error", ({ error, change }) =>
      errors.push({
        code: error.code,
        ...(error.rule ? { rule: error.rule } : {}),
        ...(change ? { change } : {}),
      }),
    )
    const resynced = new Promise((resolve) => bobChat.once("resynced", resolve))
    const staleDoc = bobChat.doc
    bob.connect()

    await resynced
    expect(bobChat.doc).not.toBe(staleDoc)
    expect(bobChat.doc.clientID).not.toBe(staleDoc.clientID)
    expect(errors).toContainEqual({
      code: ErrorCode.FORBIDDEN,
      rule: Rule.adminOnly,
      change: { kind: "conversation.field", field: "title" },
    })
    expect(bobChat.info?.title).toBe("original")
    // Saved by the relay; Alice's device may already have marked it delivered.
    await eventually(() => expect(SAVED).toContain(bobChat.status(valid.id)))
    await eventually(() =>
      expect(chat.messages().map((m) => [m.id, m.body])).toEqual([[valid.id, "still valid"]]),
    )
    expect(chat.info?.title).toBe("original")

    // The replica stored on this device is the rebuilt one.
    await bob.destroy()
    const reloaded = await connectClient(relay, "bob", { storage: "indexeddb", connect: false })
    const again = await reloaded.conversation(chat.id).ready()
    expect(again.info?.title).toBe("original")
    expect(again.role).toBe("member")
    expect(again.messages().map((m) => [m.body, m.seq])).toEqual([["still valid", 1]])
  })
})
