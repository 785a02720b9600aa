import {
  type ConversationId,
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  newConversationId,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import type { RunningRelay } from "../../src/relay.js"
import { PostgresStorage } from "../../src/storage/postgres.js"
import { docUntil, stockProvider, synced } from "../helpers/clients.js"
import { redisUnreachable, twoClusteredRelays } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"

const RELAY = { kind: "relay" } as const

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

/** The stored log of `name` (what a relay loading it afresh, or after a crash, starts from). */
let storedDoc: (name: string) => Promise<Y.Doc>

/** Two clustered relays in this process, and a way to read what their storage holds of a document. */
async function twoRelays(): Promise<[RunningRelay, RunningRelay]> {
  const { relays, schema } = await twoClusteredRelays("forwarded", cleanup)
  const pool = new pg.Pool({ connectionString: schema.url, max: 1 })
  cleanup.push(() => pool.end())
  storedDoc = async (name) => {
    const stored = await new PostgresStorage(pool).load(name)
    const doc = new Y.Doc()
    if (stored.snapshot) Y.applyUpdate(doc, stored.snapshot)
    for (const { update } of stored.updates) Y.applyUpdate(doc, update)
    return doc
  }
  return relays
}

function entry(id: ConversationId, user: UserId, title: string): InboxEntry {
  return {
    conversationId: id,
    kind: "group",
    title,
    participants: { count: 1, first: [user] },
    unread: 0,
    readUpTo: 0,
    lastActivityAt: Date.now(),
  }
}

const titleIn = (doc: Y.Doc, id: ConversationId) =>
  (doc.getMap<InboxEntry>(InboxTopLevel.entries).get(id) as InboxEntry | undefined)?.title

/**
 * `user`'s inbox, ordered by `owner` (its first change, a mute flag, is written there), with a
 * device of the user connected through each relay.
 */
async function inboxOnBoth(owner: RunningRelay, other: RunningRelay, user: UserId) {
  const name = inboxDocumentName(user)
  await owner.core.write(name, RELAY, (doc) => doc.getMap(InboxTopLevel.muted).set(newConversationId(), true))
  const devices: WebsocketProvider[] = []
  for (const relay of [owner, other]) {
    const device = stockProvider(relay.url, name, await relay.auth.mintDev(user, {}), new Y.Doc())
    cleanup.push(() => device.destroy())
    await synced(device)
    devices.push(device)
  }
  return { name, onOwner: devices[0]!, onOther: devices[1]! }
}

/** Resolves once `check` holds, or after `ms` (the caller's expectations then say what failed). */
const eventually = (doc: Y.Doc, check: () => boolean, ms = 3000) =>
  Promise.race([docUntil(doc, check), new Promise((resolve) => setTimeout(resolve, ms))])

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("a relay's write forwarded to the owner", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("a relay's write forwarded to the owner", () => {
    it("is stored after data this relay derived in memory under its own client id", async () => {
      const [owner, other] = await twoRelays()
      const user = "ursula" as UserId
      const { name, onOwner, onOther } = await inboxOnBoth(owner, other, user)
      const derived = newConversationId()
      const written = newConversationId()
      // LiveInbox's way: derived data on the relay that does not order the inbox, in memory only.
      expect(
        await other.core.derive(name, (doc) =>
          writeInboxEntry(doc, derived, entry(derived, user, "derived")),
        ),
      ).toBe(true)
      // inboxTarget's way: a durable write, ordered by the owner.
      await other.core.write(name, RELAY, (doc) =>
        writeInboxEntry(doc, written, entry(written, user, "written")),
      )
      await eventually(onOwner.doc, () => titleIn(onOwner.doc, written) !== undefined)
      await eventually(onOther.doc, () => titleIn(onOther.doc, written) !== undefined)
      expect(await owner.core.read(name, (doc) => titleIn(doc, written))).toBe("written")
      expect(await other.core.read(name, (doc) => titleIn(doc, written))).toBe("written")
      expect(titleIn(onOwner.doc, written)).toBe("written")
      expect(titleIn(onOther.doc, written)).toBe("written")
      // Stored: a relay loading the inbox afresh has it.
      const fresh = await storedDoc(name)
      expect(fresh.store.pendingStructs).toBeNull()
      expect(titleIn(fresh, written)).toBe("written")
      // A removal of an entry whose newest item is derived data this relay holds in memory only.
      await other.core.derive(name, (doc) =>
        writeInboxEntry(doc, derived, entry(derived, user, "derived again")),
      )
      await other.core.write(name, RELAY, (doc) => writeInboxEntry(doc, derived, undefined))
      await eventually(onOwner.doc, () => titleIn(onOwner.doc, derived) === undefined)
      await eventually(onOther.doc, () => titleIn(onOther.doc, derived) === undefined)
      expect(await owner.core.read(name, (doc) => doc.getMap(InboxTopLevel.entries).has(derived))).toBe(false)
      expect(await other.core.read(name, (doc) => doc.getMap(InboxTopLevel.entries).has(derived))).toBe(false)
      expect(titleIn(onOwner.doc, derived)).toBeUndefined()
      expect(titleIn(onOther.doc, derived)).toBeUndefined()
    }, 30_000)

    it("reaches the other relays when the owner writes after data it derived in memory", async () => {
      const [owner, other] = await twoRelays()
      const user = "wanda" as UserId
      const { name, onOwner, onOther } = await inboxOnBoth(owner, other, user)
      const derived = newConversationId()
      const written = newConversationId()
      expect(
        await owner.core.derive(name, (doc) =>
          writeInboxEntry(doc, derived, entry(derived, user, "derived")),
        ),
      ).toBe(true)
      await owner.core.write(name, RELAY, (doc) =>
        writeInboxEntry(doc, written, entry(written, user, "written")),
      )
      await eventually(onOther.doc, () => titleIn(onOther.doc, written) !== undefined)
      expect(titleIn(onOwner.doc, written)).toBe("written")
      expect(await other.core.read(name, (doc) => titleIn(doc, written))).toBe("written")
      expect(titleIn(onOther.doc, written)).toBe("written")
      // The stored log alone holds it (what the relays load after the owner crashed).
      const fresh = await storedDoc(name)
      expect(fresh.store.pendingStructs).toBeNull()
      expect(titleIn(fresh, written)).toBe("written")
    }, 30_000)

    it("never shares an item id with data this relay derives while the write is in flight", async () => {
      const [owner, other] = await twoRelays()
      const user = "victor" as UserId
      const { name, onOwner, onOther } = await inboxOnBoth(owner, other, user)
      const derived = newConversationId()
      const written = newConversationId()
      let deriving: Promise<boolean> | undefined
      await other.core.write(name, RELAY, (doc) => {
        writeInboxEntry(doc, written, entry(written, user, "written"))
        // A conversation this relay orders changes while the write is on its way to the owner.
        setImmediate(() => {
          deriving = other.core.derive(name, (inbox) =>
            writeInboxEntry(inbox, derived, entry(derived, user, "derived")),
          )
        })
      })
      expect(await deriving).toBe(true)
      await eventually(onOther.doc, () => titleIn(onOther.doc, written) !== undefined)
      await eventually(onOwner.doc, () => titleIn(onOwner.doc, written) !== undefined)
      // Every replica holds the write; the device on the writing relay also the derived entry.
      expect(await owner.core.read(name, (doc) => titleIn(doc, written))).toBe("written")
      expect(await other.core.read(name, (doc) => titleIn(doc, written))).toBe("written")
      expect(await other.core.read(name, (doc) => titleIn(doc, derived))).toBe("derived")
      expect(titleIn(onOwner.doc, written)).toBe("written")
      expect(titleIn(onOther.doc, written)).toBe("written")
      expect(titleIn(onOther.doc, derived)).toBe("derived")
    }, 30_000)

    it("is not lost when the write before it was stored by the owner but never read back here", async () => {
      const [owner, other] = await twoRelays()
      const user = "yusuf" as UserId
      const { name, onOwner } = await inboxOnBoth(owner, other, user)
      const first = newConversationId()
      const second = newConversationId()
      // This relay hears nothing back from the owner for a while (a lost publish, PostgreSQL slow to answer).
      const applyRemote = other.core.applyRemote.bind(other.core)
      other.core.applyRemote = async () => {}
      await expect(
        other.core.write(name, RELAY, (doc) => writeInboxEntry(doc, first, entry(first, user, "first"))),
      ).rejects.toMatchObject({ code: "UNAVAILABLE" })
      other.core.applyRemote = applyRemote
      // The owner stored it; the next write, made on this relay's replica that lacks it, is stored too.
      await other.core.write(name, RELAY, (doc) =>
        writeInboxEntry(doc, second, entry(second, user, "second")),
      )
      await eventually(onOwner.doc, () => titleIn(onOwner.doc, second) !== undefined)
      expect(await owner.core.read(name, (doc) => [titleIn(doc, first), titleIn(doc, second)])).toEqual([
        "first",
        "second",
      ])
      const fresh = await storedDoc(name)
      expect(fresh.store.pendingStructs).toBeNull()
      expect([titleIn(fresh, first), titleIn(fresh, second)]).toEqual(["first", "second"])
      expect(await other.core.read(name, (doc) => [titleIn(doc, first), titleIn(doc, second)])).toEqual([
        "first",
        "second",
      ])
    }, 30_000)
  })
}
