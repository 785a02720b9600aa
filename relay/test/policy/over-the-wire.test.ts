import {
  createConversation,
  ErrorCode,
  encodeStoredRecord,
  listMessages,
  type MessageId,
  MetaKey,
  newConversationId,
  Rule,
  reactionKey,
  sendMessage,
  storedRecordId,
  typesOf,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { docUntil, stockProvider, synced, TestClient } from "../helpers/clients.js"
import { startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { assertInvariants, updateOf } from "./fixtures.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

afterAll(() => stopRelayProcesses())

const bodies = (doc: Y.Doc) => listMessages(doc, { last: 500 }).map((m) => m.body)
/** A scratch copy of `doc` with its own client id: each attack starts from the synced state. */
const scratch = (doc: Y.Doc) => {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  return copy
}

describe("a malicious participant against a running relay", () => {
  it("gets each forbidden change refused with its rule; no other replica or storage sees it; honest work goes on", async () => {
    const relay = await startRelayProcess()
    const providers: WebsocketProvider[] = []
    const provider = async (user: string, name: string) => {
      const p = stockProvider(relay.url, name, await relay.token(user))
      providers.push(p)
      await synced(p)
      return p
    }
    const id = newConversationId()
    const a = await provider(alice, id)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob, mallory], title: "ops" })
    const hello = sendMessage(a.doc, alice, { body: "hello" }).id
    const b = await provider(bob, id)
    await docUntil(b.doc, () => bodies(b.doc).includes("hello"))
    const m = new TestClient(relay.url, id, await relay.token(mallory))
    await m.synced()
    await m.until(() => bodies(m.doc).includes("hello"))

    const attacks: [string, (d: Y.Doc) => void, string][] = [
      [
        "forged author",
        (d) =>
          typesOf(d).messages.push([
            encodeStoredRecord({
              id: "forged00001" as MessageId,
              author: alice,
              body: "I am alice",
              createdAt: 1,
            }),
          ]),
        Rule.authorIsSender,
      ],
      [
        "edit someone else's message",
        (d) => typesOf(d).edits.set(hello, { body: "rewritten", editedAt: 2 }),
        Rule.authorOnly,
      ],
      [
        "delete someone else's message through the delete set",
        (d) => {
          const i = typesOf(d)
            .messages.toArray()
            .findIndex((r) => storedRecordId(r) === hello)
          typesOf(d).messages.delete(i, 1)
        },
        Rule.authorOrAdmin,
      ],
      ["remove a participant as a member", (d) => typesOf(d).participants.delete(bob), Rule.adminOnly],
      [
        "promote oneself",
        (d) =>
          typesOf(d).participants.set(mallory, { ...typesOf(d).participants.get(mallory)!, role: "owner" }),
        Rule.adminOnly,
      ],
      ["move another user's marker", (d) => typesOf(d).read.set(bob, 1), Rule.selfOnly],
      ["write sequence numbers", (d) => typesOf(d).order.push([`99:${hello}`]), Rule.relayOnly],
      [
        "oversized record",
        (d) =>
          typesOf(d).messages.push([
            encodeStoredRecord({
              id: "oversized01" as MessageId,
              author: mallory,
              body: "x".repeat(20_000),
              createdAt: 1,
            }),
          ]),
        Rule.schema,
      ],
      ["new top-level type", (d) => d.getMap("backdoor").set("x", 1), Rule.schema],
      ["rename as a member", (d) => typesOf(d).meta.set(MetaKey.title, "pwned"), Rule.adminOnly],
      [
        "react as someone else",
        (d) => typesOf(d).reactions.set(reactionKey(hello, bob, "👎"), 1),
        Rule.selfOnly,
      ],
      [
        "reuse alice's client id",
        (d) => {
          d.clientID = a.doc.clientID
          sendMessage(d, mallory, { body: "under alice's id" })
        },
        Rule.clientIdOwner,
      ],
    ]
    for (const [what, attack, rule] of attacks) {
      const errors = m.errors.length
      m.sendUpdate(updateOf(scratch(m.doc), attack))
      // Honest activity at the same time.
      sendMessage(b.doc, bob, { body: `bob during: ${what}` })
      await m.until(() => m.errors.length > errors)
      expect(m.errors.at(-1), what).toMatchObject({ code: ErrorCode.FORBIDDEN, rule })
      await docUntil(a.doc, () => bodies(a.doc).includes(`bob during: ${what}`))
    }
    // Mallory's honest work is still accepted.
    sendMessage(m.doc, mallory, { body: "an honest message from mallory" })
    await docUntil(a.doc, () => bodies(a.doc).includes("an honest message from mallory"))

    // A stock provider carrying a forbidden change is closed, and nobody sees the change.
    const stock = await provider(mallory, id)
    typesOf(stock.doc).participants.delete(alice)
    await new Promise<void>((resolve) => stock.once("connection-close", () => resolve()))
    stock.destroy()

    // Other replicas and the stored state hold none of it, and satisfy every invariant.
    for (const doc of [a.doc, b.doc]) {
      expect(bodies(doc)).not.toContain("I am alice")
      expect(typesOf(doc).meta.get(MetaKey.title)).toBe("ops")
      expect(typesOf(doc).participants.get(mallory)?.role).toBe("member")
      expect(typesOf(doc).participants.has(alice)).toBe(true)
      assertInvariants(doc)
    }
    for (const p of providers) p.destroy()
    m.close()
    await relay.kill()
    const restarted = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    const reader = new TestClient(restarted.url, id, await restarted.token(bob))
    await reader.synced()
    await reader.until(() => bodies(reader.doc).includes("an honest message from mallory"))
    assertInvariants(reader.doc)
    expect(bodies(reader.doc)).toEqual(bodies(a.doc))
    expect(typesOf(reader.doc).edits.size).toBe(0)
    reader.close()
  }, 60_000)
})
