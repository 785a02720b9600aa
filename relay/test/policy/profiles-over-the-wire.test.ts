import {
  createConversation,
  ErrorCode,
  newConversationId,
  profileOf,
  profileRecord,
  Rule,
  setProfile,
  typesOf,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { docUntil, stockProvider, synced, TestClient } from "../helpers/clients.js"
import { startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { updateOf } from "./fixtures.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

afterAll(() => stopRelayProcesses())

const scratch = (doc: Y.Doc) => {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  return copy
}

describe("profiles against a running relay", () => {
  it("accepts each participant's own entry and refuses a forged or malformed one with its rule", async () => {
    const relay = await startRelayProcess()
    const id = newConversationId()
    const a = stockProvider(relay.url, id, await relay.token(alice))
    await synced(a)
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob, mallory], title: "ops" })
    setProfile(a.doc, alice, profileRecord({ name: "Alice", picture: "https://example.com/a.png" }))
    const b = stockProvider(relay.url, id, await relay.token(bob))
    await synced(b)
    await docUntil(b.doc, () => profileOf(b.doc, alice).name === "Alice")

    const m = new TestClient(relay.url, id, await relay.token(mallory))
    await m.synced()
    await m.until(() => profileOf(m.doc, alice).name === "Alice")
    const attacks: [string, (d: Y.Doc) => void, string][] = [
      [
        "set another user's entry",
        (d) =>
          typesOf(d).profiles.set(alice, {
            name: "Alice (real)",
            picture: "",
            updatedAt: Date.now(),
            edited: true,
          }),
        Rule.ownProfile,
      ],
      ["remove another user's entry", (d) => typesOf(d).profiles.delete(alice), Rule.ownProfile],
      [
        "a name over 64 characters",
        (d) => typesOf(d).profiles.set(mallory, { name: "m".repeat(65), picture: "", updatedAt: 1 }),
        Rule.schema,
      ],
      [
        "a script URL as picture",
        (d) => typesOf(d).profiles.set(mallory, { name: "M", picture: "javascript:alert(1)", updatedAt: 1 }),
        Rule.schema,
      ],
      [
        "an entry for a non-user key",
        (d) => typesOf(d).profiles.set("", { name: "M", picture: "", updatedAt: 1 }),
        Rule.schema,
      ],
    ]
    for (const [what, attack, rule] of attacks) {
      const errors = m.errors.length
      m.sendUpdate(updateOf(scratch(m.doc), attack))
      await m.until(() => m.errors.length > errors)
      expect(m.errors.at(-1), what).toMatchObject({ code: ErrorCode.FORBIDDEN, rule })
    }
    // Her own entry is fine, and everyone sees it.
    setProfile(m.doc, mallory, profileRecord({ name: "Mallory" }))
    await docUntil(a.doc, () => profileOf(a.doc, mallory).name === "Mallory")
    expect(profileOf(a.doc, alice)).toMatchObject({ name: "Alice", picture: "https://example.com/a.png" })
    await docUntil(b.doc, () => profileOf(b.doc, mallory).name === "Mallory")
    // Nothing forged reached anyone.
    expect(profileOf(b.doc, alice)).toMatchObject({ name: "Alice", picture: "https://example.com/a.png" })
    expect([...typesOf(b.doc).profiles.keys()].sort()).toEqual([alice, mallory])

    a.destroy()
    b.destroy()
    m.close()
    await relay.kill()
  }, 60_000)
})
