import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import {
  connectClient,
  destroyClients,
  eventually,
  everyMessage,
  type RelayProcess,
  sendEachRead,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  // Caps well below the defaults, and below the SDK's default parts (1,000 values, 700 structs).
  relay = await startRelay({ args: ["--dev", "--max-update-values", "300", "--max-update-structs", "250"] })
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

describe("update parts against a relay configured below the default caps", () => {
  it("narrows its parts after the relay refuses one as too large, and delivers everything once", async () => {
    const alice = await connectClient(relay, "alice")
    const chat = await alice.createConversation({ participants: ["bob"], title: "small caps" })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    alice.disconnect()
    const sent = sendEachRead(chat, 600)
    const refusals: string[] = []
    chat.on("error", ({ error }) => refusals.push(error.rule ?? error.code))
    alice.connect()
    await eventually(
      () => expect(chat.messages({ last: 600 }).every((m) => m.status === "sent")).toBe(true),
      60_000,
    )
    // Refused at first (parts of the default size), then sent in smaller ones.
    expect(refusals.length).toBeGreaterThan(0)
    expect(refusals.every((r) => r === "update-structs" || r === "update-values")).toBe(true)

    const seen = await everyMessage(relay, "bob", chat.id, sent.at(-1)!)
    expect(seen.map((m) => m.id)).toEqual(sent)
    expect(seen.map((m) => m.seq)).toEqual(sent.map((_, i) => i + 1))
  }, 120_000)
})
