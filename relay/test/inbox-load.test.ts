import {
  type ConversationId,
  createConversation,
  getInboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  sendMessage,
  setMuted,
  type UserId,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { MemoryBackend } from "../src/backend/memory.js"
import { MAX_UNLISTED_MUTES } from "../src/inbox/check-inbox-update.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { TestClient } from "./helpers/clients.js"
import { signToken } from "./helpers/relay-process.js"

// What one cheap frame to a user's own inbox can make the relay load (issue #13, "how much work can one
// frame buy"): deriving an entry loads its conversation from storage.

const SECRET = "inbox-load-test-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId
const IDLE_MS = 1000

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

async function relayWith(): Promise<RunningRelay> {
  const relay = await startRelay({
    backend: new MemoryBackend(),
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    limits: { idleUnloadMs: IDLE_MS },
  })
  relays.push(relay)
  return relay
}

async function inboxOf(relay: RunningRelay, user: UserId): Promise<TestClient> {
  const c = new TestClient(relay.url, inboxDocumentName(user), await signToken(SECRET, user))
  clients.push(c)
  await c.synced()
  return c
}

/** A group `owner` creates with `members`, written server-side as the HTTP API would. */
async function group(
  relay: RunningRelay,
  id: string,
  owner: UserId,
  members: UserId[],
): Promise<ConversationId> {
  await relay.core.write(id, { kind: "user", user: owner }, (doc) => {
    createConversation(doc, owner, {
      kind: "group",
      id: id as ConversationId,
      participants: members,
      title: id,
    })
  })
  return id as ConversationId
}

/** Waits until only `names` are loaded (the others unloaded after their idle delay). */
async function untilOnlyLoaded(relay: RunningRelay, names: readonly string[]): Promise<void> {
  while (relay.core.loadedDocuments > names.length || names.some((n) => !relay.core.isLoaded(n)))
    await new Promise((r) => setTimeout(r, 20))
}

describe("inbox writes and connects buy bounded work", () => {
  it("removes an entry a user writes under a conversation the relay never put in their inbox, loading nothing", async () => {
    const relay = await relayWith()
    const secret = await group(relay, "g~secret", bob, [])
    const m = await inboxOf(relay, mallory)
    await untilOnlyLoaded(relay, [inboxDocumentName(mallory)])

    // Before session 21: stored, then derived again, which loaded the conversation with no access check
    // and nothing counted against mallory (up to 2,000 keys an update, any conversation of the relay).
    // Sessions 21-24 refused it, which also locked out an honest device holding a key the relay lost.
    const entries = m.doc.getMap(InboxTopLevel.entries)
    entries.set(secret, { title: "mine now" } as never)
    await m.until(() => !entries.has(secret) || m.errors.length > 0 || m.closeEvent !== undefined)
    expect(m.errors).toEqual([])
    expect(entries.has(secret)).toBe(false)
    // Written again under the key it now holds removed: removed again, still loading nothing.
    entries.set(secret, { title: "again" } as never)
    await m.until(() => !entries.has(secret) || m.errors.length > 0)
    expect(entries.has(secret)).toBe(false)
    expect(m.errors).toEqual([])
    expect(relay.core.isLoaded(secret)).toBe(false)
    // Stored removed: a fresh device is handed nothing under it, and its full refresh loads nothing.
    m.close()
    await m.closed
    await untilOnlyLoaded(relay, [])
    const fresh = await inboxOf(relay, mallory)
    expect(fresh.doc.getMap(InboxTopLevel.entries).has(secret)).toBe(false)
    expect(relay.core.isLoaded(secret)).toBe(false)
  })

  it("loads nothing for writes to a forged key sent back to back, nor for deleting one, before the relay removed it", async () => {
    const relay = await relayWith()
    const secrets = await Promise.all(
      Array.from({ length: 20 }, (_, i) => group(relay, `g~victim${i}`, bob, [alice])),
    )
    const m = await inboxOf(relay, mallory)
    await untilOnlyLoaded(relay, [inboxDocumentName(mallory)])
    const entries = m.doc.getMap(InboxTopLevel.entries)
    // Two updates at once: the second is checked while the first one's entries are shown, not yet removed.
    for (let round = 0; round < 2; round++)
      m.doc.transact(() => {
        for (const id of secrets) entries.set(id, { title: `mine ${round}` } as never)
      })
    // And a third that deletes them (a removal touches keys with an entry).
    m.doc.transact(() => {
      for (const id of secrets) entries.delete(id)
    })
    await m.allSaved()
    await new Promise((r) => setTimeout(r, 200))
    expect(m.errors).toEqual([])
    for (const id of secrets) expect(relay.core.isLoaded(id)).toBe(false)
    // A second device connecting now (a full refresh) loads none of them either.
    const other = await inboxOf(relay, mallory)
    await new Promise((r) => setTimeout(r, 200))
    for (const id of secrets) {
      expect(relay.core.isLoaded(id)).toBe(false)
      expect(other.doc.getMap(InboxTopLevel.entries).has(id)).toBe(false)
    }
  })

  it("takes back an entry whose key the relay lost without refusing the device, and shows it again once the membership is written", async () => {
    // A device synced an entry from a relay whose storage never kept it (a crash before the inbox
    // target stored the key, a restored backup): the relay it reconnects to has no key there.
    const before = await relayWith()
    await group(before, "g~lost", alice, [bob])
    const device = await inboxOf(before, bob)
    await device.until(() => getInboxEntry(device.doc, "g~lost" as ConversationId)?.title === "g~lost")
    const held = new Y.Doc()
    Y.applyUpdate(held, Y.encodeStateAsUpdate(device.doc))

    const relay = await relayWith()
    const back = new TestClient(relay.url, inboxDocumentName(bob), await signToken(SECRET, bob), {
      doc: held,
    })
    clients.push(back)
    await back.synced()
    // Refused before: every later sync sent it again, so this inbox could never take a write (a mute) again.
    await back.until(() => !held.getMap(InboxTopLevel.entries).has("g~lost") || back.errors.length > 0)
    expect(back.errors).toEqual([])
    expect(relay.core.isLoaded("g~lost")).toBe(false)
    setMuted(held, "g~other" as ConversationId, true)
    await back.allSaved()
    expect(back.errors).toEqual([])

    // The relay writes the membership again (here: the conversation is made anew; after a crash, the
    // recovered change's delivery): the device shows the relay's entry, not the copy it handed back.
    await group(relay, "g~lost", alice, [bob])
    await relay.core.write("g~lost", { kind: "user", user: alice }, (doc) => {
      sendMessage(doc, alice, { body: "back" })
    })
    await back.until(() => getInboxEntry(held, "g~lost" as ConversationId)?.lastMessage?.text === "back")
    expect(getInboxEntry(held, "g~lost" as ConversationId)).toMatchObject({ title: "g~lost", unread: 1 })
  })

  it("derives again only the entries a user's write touched, and on a reconnect only what changed meanwhile", async () => {
    const relay = await relayWith()
    // Alice is in five groups; `last` is the last her inbox lists, so a pass over her whole inbox
    // derives it after loading the four others.
    const others = []
    for (let i = 0; i < 4; i++) others.push(await group(relay, `g~other${i}`, bob, [alice]))
    const last = await group(relay, "g~last", bob, [alice])
    const inbox = inboxDocumentName(alice)
    const a = await inboxOf(relay, alice)
    // Connecting derives her whole inbox (once).
    await a.until(() => getInboxEntry(a.doc, last)?.title === "g~last")
    for (const id of others) expect(getInboxEntry(a.doc, id)?.title).toBe(id)
    await untilOnlyLoaded(relay, [inbox])

    // A mute changes no entry; then a forged entry of `last` is derived again, and nothing else is loaded.
    setMuted(a.doc, others[0]!, true)
    await a.allSaved()
    const entries = a.doc.getMap(InboxTopLevel.entries)
    entries.set(last, { ...getInboxEntry(a.doc, last)!, title: "forged", unread: 99 } as never)
    await a.until(() => getInboxEntry(a.doc, last)?.title === "g~last")
    expect(a.errors).toEqual([])
    for (const id of others) expect(relay.core.isLoaded(id)).toBe(false)
    await untilOnlyLoaded(relay, [inbox])

    // She goes away, bob writes in `last`, she comes back at once: her entry is current, and only that
    // conversation was derived (before: her whole inbox again, on every connect).
    a.close()
    await a.closed
    await relay.core.write(last, { kind: "user", user: bob }, (doc) => {
      sendMessage(doc, bob, { body: "while you were away" })
    })
    await untilOnlyLoaded(relay, [])
    const again = await inboxOf(relay, alice)
    await again.until(() => getInboxEntry(again.doc, last)?.lastMessage?.text === "while you were away")
    expect(getInboxEntry(again.doc, last)?.unread).toBe(1)
    expect(getInboxEntry(again.doc, others[0]!)?.muted).toBe(true)
    for (const id of others) expect(relay.core.isLoaded(id)).toBe(false)
  }, 30_000)

  it("holds mute flags for conversations the inbox does not list to a few, and any number for those it lists", async () => {
    const relay = await relayWith()
    const listed = await group(relay, "g~listed", bob, [mallory])
    const m = await inboxOf(relay, mallory)
    await m.until(() => getInboxEntry(m.doc, listed) !== undefined)
    // A conversation created on this device a moment ago may be muted before the relay lists it.
    m.doc.transact(() => {
      for (let i = 0; i < MAX_UNLISTED_MUTES; i++) setMuted(m.doc, `g~madeup${i}` as ConversationId, true)
    })
    await m.allSaved()
    expect(m.errors).toEqual([])
    // Before: any number (an outside probe stored 199,200, and each load of the inbox took 2.2 s and 230 MB).
    setMuted(m.doc, "g~onetoomany" as ConversationId, true)
    await m.until(() => m.errors.length > 0)
    expect(m.errors[0]).toMatchObject({ code: "FORBIDDEN" })
    expect(m.errors[0]!.message).toMatch(/at most 64 conversations the inbox does not list may be muted/)
    const fresh = await inboxOf(relay, mallory)
    await fresh.until(() => getInboxEntry(fresh.doc, listed) !== undefined)
    setMuted(fresh.doc, listed, true)
    await fresh.allSaved()
    expect(fresh.errors).toEqual([])
    expect(getInboxEntry(fresh.doc, listed)?.muted).toBe(true)
    // An entry of her own under a made-up id, written just before its mute, does not list it (a second
    // probe stored 60,000 flags so: each mute followed an entry the relay was about to remove).
    const forged = "g~forgedlisting" as ConversationId
    fresh.doc
      .getMap(InboxTopLevel.entries)
      .set(forged, { ...getInboxEntry(fresh.doc, listed)!, conversationId: forged } as never)
    setMuted(fresh.doc, forged, true)
    await fresh.until(() => fresh.errors.length > 0)
    expect(fresh.errors[0]!.message).toMatch(/at most 64 conversations the inbox does not list may be muted/)
  }, 30_000)

  it("refuses an entry or mute flag item holding more than one value (half deleted, the other half stayed as the relay's)", async () => {
    const relay = await relayWith()
    const m = await inboxOf(relay, mallory)
    /** One item under `root`/`key` holding `values`, written by a client of its own; `deleteFirst` deletes its first value. */
    const itemOf = (root: string, key: string, values: unknown[], deleteFirst: boolean) => {
      const e = encoding.createEncoder()
      const client = 7_000_000 + Math.floor(Math.random() * 1e6)
      encoding.writeVarUint(e, 1)
      encoding.writeVarUint(e, 1)
      encoding.writeVarUint(e, client)
      encoding.writeVarUint(e, 0)
      encoding.writeUint8(e, 8 | 0x20) // ContentAny under a key, no origins
      encoding.writeVarUint(e, 1) // the parent is a root, by name
      encoding.writeVarString(e, root)
      encoding.writeVarString(e, key)
      encoding.writeVarUint(e, values.length)
      for (const v of values) encoding.writeAny(e, v as never)
      encoding.writeVarUint(e, deleteFirst ? 1 : 0)
      if (deleteFirst) for (const n of [client, 1, 0, 1]) encoding.writeVarUint(e, n)
      return encoding.toUint8Array(e)
    }
    // Before: the entry stayed for good, counted as listed, and mutes under such keys passed the limit.
    m.sendUpdate(itemOf(InboxTopLevel.entries, "g~forged2", [{ x: 1 }, { title: "forged" }], true))
    // Before: any JSON stored in a muted flag, whose last value alone was checked.
    m.sendUpdate(itemOf(InboxTopLevel.muted, "g~forged3", [{ payload: "x".repeat(1000) }, true], false))
    await m.until(() => m.errors.length >= 2)
    expect(m.errors.map((e) => e.message)).toEqual([
      expect.stringMatching(/holds one value/),
      expect.stringMatching(/holds one value/),
    ])
    const fresh = await inboxOf(relay, mallory)
    expect(fresh.doc.getMap(InboxTopLevel.entries).has("g~forged2")).toBe(false)
    expect(fresh.doc.getMap(InboxTopLevel.muted).size).toBe(0)
  })

  it("refuses an inbox entry holding a value JSON cannot say (a bigint kept the relay from rewriting it)", async () => {
    const relay = await relayWith()
    const id = await group(relay, "g~bigint", alice, [mallory])
    const m = await inboxOf(relay, mallory)
    await m.until(() => m.doc.getMap(InboxTopLevel.entries).has(id))
    const e = encoding.createEncoder()
    const client = 9_000_000 + Math.floor(Math.random() * 1e6)
    const current = m.doc.getMap(InboxTopLevel.entries) as unknown as { _map: Map<string, Y.Item> }
    const origin = current._map.get(id)!
    encoding.writeVarUint(e, 1)
    encoding.writeVarUint(e, 1)
    encoding.writeVarUint(e, client)
    encoding.writeVarUint(e, 0)
    encoding.writeUint8(e, 8 | 0x80) // ContentAny with an origin: written after the relay's entry
    encoding.writeVarUint(e, origin.id.client)
    encoding.writeVarUint(e, origin.id.clock + origin.length - 1)
    encoding.writeVarUint(e, 1)
    encoding.writeAny(e, { ...(origin.content.getContent()[0] as object), title: "FORGED", n: 10n } as never)
    encoding.writeVarUint(e, 0)
    m.sendUpdate(encoding.toUint8Array(e))
    await m.until(() => m.errors.length >= 1)
    expect(m.errors[0]!.message).toMatch(/plain JSON/)
    const fresh = await inboxOf(relay, mallory)
    expect(getInboxEntry(fresh.doc, id)?.title).toBe("g~bigint")
  })

  it("derives an entry a user rewrites once per window, and none a user removes, so a loop of such writes buys no loads", async () => {
    const relay = await relayWith()
    const ids: ConversationId[] = []
    for (let i = 0; i < 3; i++) ids.push(await group(relay, `g~loop${i}`, bob, [alice]))
    const inbox = inboxDocumentName(alice)
    const a = await inboxOf(relay, alice)
    await a.until(() => ids.every((id) => getInboxEntry(a.doc, id)?.title === id))
    await untilOnlyLoaded(relay, [inbox])
    const entries = a.doc.getMap(InboxTopLevel.entries)
    const structs = () => [...a.doc.store.clients.values()].reduce((n, list) => n + list.length, 0)

    // Removing every entry, again and again (an outside probe: 0.6 of a core and +50 MB a minute for a
    // user in 600 conversations, each removal derived, loaded and written back): nothing is loaded or
    // written back; the removals stay, the user's own doing.
    const before = structs()
    for (let round = 0; round < 5; round++) {
      a.doc.transact(() => {
        for (const id of ids) entries.delete(id)
      })
      await a.allSaved()
    }
    await new Promise((r) => setTimeout(r, 300))
    expect(a.errors).toEqual([])
    for (const id of ids) {
      expect(relay.core.isLoaded(id)).toBe(false)
      expect(getInboxEntry(a.doc, id)).toBeUndefined()
    }
    expect(structs()).toBe(before)
    // The relay's next write of an entry (its conversation changes) puts it back.
    await relay.core.write(ids[0]!, { kind: "user", user: bob }, (doc) => {
      sendMessage(doc, bob, { body: "back" })
    })
    await a.until(() => getInboxEntry(a.doc, ids[0]!)?.lastMessage?.text === "back")
    await untilOnlyLoaded(relay, [inbox])

    // A forged entry is derived again once in the window; forged again within it, it waits for the window.
    entries.set(ids[0]!, { ...getInboxEntry(a.doc, ids[0]!)!, title: "forged" } as never)
    await a.until(() => getInboxEntry(a.doc, ids[0]!)?.title === ids[0])
    await untilOnlyLoaded(relay, [inbox])
    entries.set(ids[0]!, { ...getInboxEntry(a.doc, ids[0]!)!, title: "forged again" } as never)
    await a.allSaved()
    await new Promise((r) => setTimeout(r, 500))
    expect(getInboxEntry(a.doc, ids[0]!)?.title).toBe("forged again")
    expect(relay.core.isLoaded(ids[0]!)).toBe(false)
    expect(a.errors).toEqual([])
  }, 30_000)
})
