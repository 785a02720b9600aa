import "fake-indexeddb/auto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type RunningRelay, startRelay } from "@parley/relay"
import { ErrorCode, type MessageId, Rule, sendMessage, typesOf, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { connectClient, destroyClients, eventually, type RelayProcess } from "./support.js"

const running: RunningRelay[] = []
afterEach(async () => {
  await destroyClients()
  for (const relay of running.splice(0)) await relay.close()
})

/** An in-process relay over `dataDir`, sealing segments of 10 and keeping 5 live. */
async function relayOn(dataDir: string): Promise<{ relay: RelayProcess; core: RunningRelay["core"] }> {
  const started = await startRelay({
    port: 0,
    warmUp: false,
    dev: true,
    storage: "sqlite",
    dataDir,
    log: "warn",
    history: { segmentSize: 10, keepLive: 5 },
  })
  running.push(started)
  const relay = {
    port: started.port,
    url: started.url,
    httpUrl: started.httpUrl,
    dataDir,
    stop: () => started.close(),
  }
  return { relay, core: started.core }
}

/** A group of alice, bob and mallory where alice wrote `count` messages `m0`..., each saved before the next. */
async function longConversation(
  relay: RelayProcess,
  count: number,
): Promise<{ id: string; first: MessageId }> {
  const alice = await connectClient(relay, "alice")
  const chat = await alice.createConversation({ participants: ["bob", "mallory"], title: "long" })
  const ids: MessageId[] = []
  for (let i = 0; i < count; i++) {
    const sent = chat.send(`m${i}`)
    ids.push(sent.id)
    await eventually(() => expect(chat.message(sent.id)?.seq).toBe(i + 1))
  }
  await eventually(() => expect(typesOf(chat.doc).segments.length).toBeGreaterThan(0))
  await alice.destroy()
  return { id: chat.id, first: ids[0]! }
}

describe("one message per id", () => {
  it("lets an honest writer send on in a conversation with sealed history; a sealed id is refused to a device that does not hold it", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "parley-sealed-ids-"))
    let { relay } = await relayOn(dataDir)
    const { id, first } = await longConversation(relay, 30)
    // Restarted: the relay reads the sealed ids' filters from storage at the first new message.
    await running.pop()!.close()
    ;({ relay } = await relayOn(dataDir))
    const mallory = await connectClient(relay, "mallory")
    const chat = await mallory.conversation(id).ready()
    const mine = chat.send("mallory's own")
    await eventually(() => expect(chat.message(mine.id)?.seq).toBe(31))
    // Her replica holds no segment: it cannot tell the id is taken, the relay can.
    const errors: { code: string; rule?: string }[] = []
    chat.on("error", ({ error }) =>
      errors.push({ code: error.code, ...(error.rule ? { rule: error.rule } : {}) }),
    )
    sendMessage(chat.doc, "mallory" as UserId, { id: first, body: "under alice's id" })
    await eventually(() =>
      expect(errors).toContainEqual({ code: ErrorCode.FORBIDDEN, rule: Rule.messageIdTaken }),
    )
    // Her own message, failed with why (the SDK's resync could not re-apply it).
    await eventually(() =>
      expect(chat.message(first)).toMatchObject({
        author: "mallory",
        status: "failed",
        error: { code: ErrorCode.FORBIDDEN, rule: Rule.messageIdTaken },
      }),
    )
    expect((await chat.loadOlder(100)).filter((m) => m.id === first).map((m) => [m.author, m.body])).toEqual([
      ["alice", "m0"],
    ])
  })

  it("shows the sealed message, not one written under its id before the relay refused that", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "parley-sealed-ids-"))
    let { relay, core } = await relayOn(dataDir)
    const { id, first } = await longConversation(relay, 30)
    // Restarted, the relay holds no segment; a trusted server-side write names no id it settles
    // first, so it writes what a client could before: a second message under alice's sealed id.
    await running.pop()!.close()
    ;({ relay, core } = await relayOn(dataDir))
    await core.write(id, { kind: "user", user: "mallory" as UserId }, (doc) =>
      sendMessage(doc, "mallory" as UserId, { id: first, body: "mallory's, under alice's id" }),
    )

    const bob = await connectClient(relay, "bob")
    const chat = await bob.conversation(id).ready()
    await eventually(() => expect(chat.messages({ last: 50 }).some((m) => m.author === "mallory")).toBe(true))
    // Without the segment this replica cannot tell; once it holds it, the sealed, older message is the one.
    await chat.loadOlder(100)
    const all = [...chat.olderMessages(), ...chat.messages({ last: 50 })]
    expect(all.filter((m) => m.id === first).map((m) => [m.author, m.body, m.seq])).toEqual([
      ["alice", "m0", 1],
    ])
    expect(chat.message(first)).toMatchObject({ author: "alice", body: "m0", seq: 1 })
    expect(all).toHaveLength(30)
  })
})
