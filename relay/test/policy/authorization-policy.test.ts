import {
  ErrorCode,
  MetaKey,
  markRead,
  ParleyError,
  parseDocumentName,
  Rule,
  sendMessage,
  typesOf,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { startEpoch } from "../../src/history/epoch.js"
import { AuthorizationPolicy } from "../../src/policy/authorization-policy.js"
import { type ClientBinding, MemoryClientBindingStore } from "../../src/policy/client-bindings.js"
import { alice, CONVERSATION, carol, replicaOf, scene, updateOf, user } from "./fixtures.js"

const name = parseDocumentName(CONVERSATION)

describe("the authorization policy of the update path", () => {
  it("binds the sender's client id durably, so that it stays theirs after a restart", async () => {
    const store = new MemoryClientBindingStore()
    const s = scene()
    const alices = replicaOf(s.relay)
    const update = updateOf(alices, (d) => sendMessage(d, alice, { body: "mine" }))
    const policy = new AuthorizationPolicy(store)
    const accepted = await policy.checkUpdate({
      name,
      doc: s.relay,
      update,
      principal: user(alice),
      clientIds: new Set([alices.clientID]),
    })
    expect(accepted).toEqual({ allowed: true })
    expect((await store.load(CONVERSATION)).get(alices.clientID)).toBe("user:alice")
    // The relay's own id: stored before the append (a refused update stores none).
    expect((await store.load(CONVERSATION)).has(s.relay.clientID)).toBe(false)
    await policy.beforeAppend({ name, doc: s.relay })
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

  it("holds an id bound by another relay sharing the store after both loaded the document: in updates and in awareness", async () => {
    // Two relays of a cluster, one store: each loaded the conversation (and its bindings) before
    // anyone bound the ids below, so neither one's memory knows what the other binds.
    const store = new MemoryClientBindingStore()
    const s = scene()
    const [first, second] = [new AuthorizationPolicy(store), new AuthorizationPolicy(store)]
    const onFirst = replicaOf(s.relay)
    const onSecond = replicaOf(s.relay)
    const ownersOnFirst = await first.clientIdOwners({ name, doc: onFirst })
    const ownersOnSecond = await second.clientIdOwners({ name, doc: onSecond })

    // Alice's device announces itself on the second relay; carol writes under its id through the first.
    const alices = replicaOf(s.relay)
    expect(await ownersOnSecond!.claim(alices.clientID, "user:alice")).toBe("user:alice")
    const forged = replicaOf(s.relay)
    forged.clientID = alices.clientID
    const decision = await first.checkUpdate({
      name,
      doc: onFirst,
      update: updateOf(forged, (d) => sendMessage(d, carol, { body: "under alice's id" })),
      principal: user(carol),
      clientIds: new Set([alices.clientID]),
    })
    expect(decision).toMatchObject({ allowed: false, rule: Rule.clientIdOwner })
    // The first relay now knows the owner, for awareness too; and carol's claim of it answers alice.
    expect(ownersOnFirst!.owner(alices.clientID)).toBe("user:alice")
    const bobs = replicaOf(s.relay).clientID
    expect(await ownersOnSecond!.claim(bobs, "user:bob")).toBe("user:bob")
    expect(ownersOnFirst!.owner(bobs)).toBeUndefined()
    expect(await ownersOnFirst!.claim(bobs, "user:carol")).toBe("user:bob")
    expect(ownersOnFirst!.owner(bobs)).toBe("user:bob")
    expect((await store.load(CONVERSATION)).get(bobs)).toBe("user:bob")
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

  it("serves a load while storage refuses writes: the relay's ids bound in memory, stored before the next update", async () => {
    // A disk that fills up: every write fails, as the storage guard reports it, until space is freed.
    class FullDisk extends MemoryClientBindingStore {
      full = true
      override async bind(name: string, entries: readonly ClientBinding[]): Promise<Map<number, string>> {
        if (this.full)
          throw new ParleyError(
            ErrorCode.STORAGE_UNAVAILABLE,
            "client-id bindings: bind failed: disk is full",
          )
        return super.bind(name, entries)
      }
    }
    const store = new FullDisk()
    const s = scene()
    const policy = new AuthorizationPolicy(store)

    // Loading the document (a reader connecting) does not fail; nobody can claim the relay's id.
    const owners = await policy.clientIdOwners({ name, doc: s.relay })
    expect(owners?.owner(s.relay.clientID)).toBe("relay")
    expect((await store.load(CONVERSATION)).has(s.relay.clientID)).toBe(false)

    // A write while the disk is full is refused retryably, as every write then is.
    const alices = replicaOf(s.relay)
    const update = updateOf(alices, (d) => sendMessage(d, alice, { body: "mine" }))
    const input = {
      name,
      doc: s.relay,
      update,
      principal: user(alice),
      clientIds: new Set([alices.clientID]),
    }
    await expect(policy.checkUpdate(input)).rejects.toMatchObject({ code: ErrorCode.STORAGE_UNAVAILABLE })

    // Space freed: the next update's check stores the sender's id, and its append the relay's, before
    // anything is stored under it.
    store.full = false
    expect(await policy.checkUpdate(input)).toEqual({ allowed: true })
    await policy.beforeAppend({ name, doc: s.relay })
    const stored = await store.load(CONVERSATION)
    expect(stored.get(s.relay.clientID)).toBe("relay")
    expect(stored.get(alices.clientID)).toBe("user:alice")
  })

  it("stores nothing for a load that writes nothing, and the relay's ids before the relay's own first append", async () => {
    const store = new MemoryClientBindingStore()
    const stored: ClientBinding[][] = []
    const bind = store.bind.bind(store)
    store.bind = async (key, entries) => {
      stored.push([...entries])
      return bind(key, entries)
    }
    const s = scene()
    const policy = new AuthorizationPolicy(store)

    // Loads that only read: each makes new relay ids, none is written (a row per load, for good, before).
    for (let load = 0; load < 3; load++) {
      const doc = replicaOf(s.relay)
      const owners = await policy.clientIdOwners({ name, doc })
      expect(owners?.owner(doc.clientID)).toBe("relay")
    }
    expect(stored).toEqual([])

    // A load the relay then writes in (a seal, a purge): its ids are stored before the append, once.
    const doc = replicaOf(s.relay)
    await policy.clientIdOwners({ name, doc })
    await policy.beforeAppend({ name, doc })
    expect(stored).toHaveLength(1)
    expect(stored[0]!.map(([id]) => id)).toContain(doc.clientID)
    expect((await store.load(CONVERSATION)).get(doc.clientID)).toBe("relay")
    expect(policy.beforeAppend({ name, doc })).toBeUndefined()
  })
})

describe("the id of a fresh epoch", () => {
  it("is the relay's from the document's load: nobody writes under it nor claims it in awareness", async () => {
    const store = new MemoryClientBindingStore()
    const s = scene()
    const epoch = startEpoch(s.relay)
    const epochId = typesOf(epoch).meta.get(MetaKey.epoch) as number
    // The relay loads the epoch it stored.
    const loaded = replicaOf(epoch)
    const policy = new AuthorizationPolicy(store)
    const owners = await policy.clientIdOwners({ name, doc: loaded })
    expect(owners!.owner(epochId)).toBe("relay")
    expect(await owners!.claim(epochId, "user:carol")).toBe("relay")
    const forged = replicaOf(loaded)
    forged.clientID = epochId
    const refused = await policy.checkUpdate({
      name,
      doc: loaded,
      update: updateOf(forged, (d) => markRead(d, carol, 1)),
      principal: user(carol),
      clientIds: new Set([epochId]),
    })
    expect(refused).toMatchObject({ allowed: false, rule: Rule.clientIdOwner })
  })

  it("is the relay's even where a user's binding of it was stored before the relay bound it at the load", async () => {
    const store = new MemoryClientBindingStore()
    const s = scene()
    const epoch = startEpoch(s.relay)
    const epochId = typesOf(epoch).meta.get(MetaKey.epoch) as number
    // A relay from before the fix let the first writer under the epoch's id have it.
    await store.bind(CONVERSATION, [[epochId, "user:carol"]])
    const loaded = replicaOf(epoch)
    const policy = new AuthorizationPolicy(store)
    const owners = await policy.clientIdOwners({ name, doc: loaded })
    expect(owners!.owner(epochId)).toBe("relay")
    expect(await owners!.claim(epochId, "user:carol")).toBe("relay")
    const forged = replicaOf(loaded)
    forged.clientID = epochId
    const refused = await new AuthorizationPolicy(store).checkUpdate({
      name,
      doc: replicaOf(epoch),
      update: updateOf(forged, (d) => markRead(d, carol, 1)),
      principal: user(carol),
      clientIds: new Set([epochId]),
    })
    expect(refused).toMatchObject({ allowed: false, rule: Rule.clientIdOwner })
  })
})
