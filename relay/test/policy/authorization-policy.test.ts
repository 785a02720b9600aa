import { parseDocumentName, Rule, sendMessage } from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { AuthorizationPolicy } from "../../src/policy/authorization-policy.js"
import { MemoryClientBindingStore } from "../../src/policy/client-bindings.js"
import { alice, CONVERSATION, carol, replicaOf, scene, updateOf, user } from "./fixtures.js"

const name = parseDocumentName(CONVERSATION)

describe("the authorization policy of the update path", () => {
  it("binds the sender's client id durably, so that it stays theirs after a restart", async () => {
    const store = new MemoryClientBindingStore()
    const s = scene()
    const alices = replicaOf(s.relay)
    const update = updateOf(alices, (d) => sendMessage(d, alice, { body: "mine" }))
    const accepted = await new AuthorizationPolicy(store).checkUpdate({
      name,
      doc: s.relay,
      update,
      principal: user(alice),
      clientIds: new Set([alices.clientID]),
    })
    expect(accepted).toEqual({ allowed: true })
    expect((await store.load(CONVERSATION)).get(alices.clientID)).toBe("user:alice")
    expect((await store.load(CONVERSATION)).get(s.relay.clientID)).toBe("relay")
    Y.applyUpdate(s.relay, update)

    // The relay restarts: a new policy, the same store, the document loaded again.
    const reloaded = replicaOf(s.relay)
    const mallory = replicaOf(s.relay)
    mallory.clientID = alices.clientID
    const refused = await new AuthorizationPolicy(store).checkUpdate({
      name,
      doc: reloaded,
      update: updateOf(mallory, (d) => sendMessage(d, carol, { body: "as alice's replica" })),
      principal: user(carol),
      clientIds: new Set([alices.clientID]),
    })
    expect(refused).toMatchObject({ allowed: false, rule: Rule.clientIdOwner })
  })

  it("binds nothing for a refused update", async () => {
    const store = new MemoryClientBindingStore()
    const s = scene()
    const replica = replicaOf(s.relay)
    const update = updateOf(replica, (d) => d.getMap("evil").set("x", 1))
    const decision = await new AuthorizationPolicy(store).checkUpdate({
      name,
      doc: s.relay,
      update,
      principal: user(carol),
      clientIds: new Set([replica.clientID]),
    })
    expect(decision).toMatchObject({ allowed: false, rule: Rule.schema })
    expect((await store.load(CONVERSATION)).has(replica.clientID)).toBe(false)
  })
})
