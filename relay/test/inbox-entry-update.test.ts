import {
  type ConversationHead,
  type ConversationId,
  encodeSyncUpdate,
  entryFromParts,
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  listInbox,
  type MemberReadState,
  parseDocumentName,
  type UserId,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { DocumentHost } from "../src/document-host.js"
import { deferEntryReplacement, EntryValues } from "../src/inbox/entry-update.js"

const head = (title: string, seq: number) => ({
  conversationId: "g~room" as ConversationId,
  kind: "group" as const,
  title,
  participants: { count: 1000, first: ["a", "b", "c"] as UserId[] },
  lastMessage: {
    id: `m${seq}`,
    author: "a" as UserId,
    text: `héllo ${"x".repeat(seq)} 🎉`,
    deleted: false,
    at: 1_764_000_000_000 + seq,
    seq,
  },
})

const entryOf = (
  key: ConversationId,
  shared: ReturnType<typeof head>,
  unread: number,
  readUpTo: number,
): InboxEntry => ({
  ...shared,
  conversationId: key,
  unread,
  readUpTo,
  lastActivityAt: shared.lastMessage.at + 0.5,
})

/** The bytes, whatever holds them (the relay frames into Node buffers). */
const bytes = (u: Uint8Array | undefined) => u && [...u]

describe("inbox entry updates deferred by the relay", () => {
  it("encode read counts and markers of every size as lib0 writes them", () => {
    const values = new EntryValues({ entry: { ...head("Everyone", 3), lastActivityAt: 1_764_000_000_004 } })
    // Each size of lib0's writeVarInt, either side of its bounds, then beyond what it writes as an integer.
    const counts = [
      0,
      1,
      63,
      64,
      8191,
      8192,
      2 ** 20 - 1,
      2 ** 20,
      2 ** 27 - 1,
      2 ** 27,
      2 ** 31 - 1,
      2 ** 31,
      2 ** 40,
    ]
    for (const unread of counts)
      for (const readUpTo of [0, 64, 2 ** 27]) {
        const state: MemberReadState = { unread, readUpTo, emergency: [] }
        const entry = entryFromParts(values.head, state)
        expect(bytes(values.encode(state))).toEqual(
          bytes(encoding.encode((e) => encoding.writeAny(e, entry as never))),
        )
      }
  })

  it("are the updates Yjs emits, and once applied leave the relay's copy equal to one written by transactions", () => {
    const user = "deferred-user" as UserId
    const name = inboxDocumentName(user)
    const host = new DocumentHost(name, parseDocumentName(name))
    const reference = new Y.Doc()
    reference.clientID = host.docAsIs.clientID
    const device = new Y.Doc()
    const id = "g~room" as ConversationId
    const other = "g~other" as ConversationId
    const yjsUpdate = (key: ConversationId, entry: InboxEntry | undefined) => {
      const emitted: Uint8Array[] = []
      const collect = (update: Uint8Array) => emitted.push(update)
      reference.on("update", collect)
      reference.transact(() => {
        const entries = reference.getMap(InboxTopLevel.entries)
        if (entry) entries.set(key, entry)
        else if (entries.has(key)) entries.delete(key)
      })
      reference.off("update", collect)
      return emitted.length === 0 ? undefined : Y.mergeUpdates(emitted)
    }
    let applied = 0
    for (let seq = 1; seq <= 700; seq++) {
      const shared = head(seq % 7 === 0 ? `renamed ${seq}` : "Everyone", seq % 40)
      // A change's head for `key`, deleted now and then; each member's part on top of it.
      const headOf = (key: ConversationId): ConversationHead => ({
        entry: {
          ...shared,
          conversationId: key,
          lastActivityAt: shared.lastMessage.at + 0.5,
          ...(seq % 11 === 0 ? { deleted: true } : {}),
        },
      })
      const state = (unread: number, readUpTo: number): MemberReadState => ({
        unread,
        readUpTo,
        emergency: seq % 6 === 0 ? [`m${seq}`, "m-older"] : [],
      })
      const steps: [ConversationId, ConversationHead | undefined, MemberReadState | undefined][] = [
        [id, headOf(id), state(seq, seq % 3)],
      ]
      if (seq % 5 === 0) steps.push([other, headOf(other), state(2 ** 33 + seq, 0)])
      if (seq === 12) steps.push([id, undefined, undefined]) // removed (through a transaction), then written again
      if (seq === 20) steps.push([other, undefined, undefined])
      if (seq === 17 || seq === 90) {
        // The device hands an entry back (another client writes the key): the relay's next write replaces it.
        device.getMap(InboxTopLevel.entries).set(id, entryOf(id, head("stale", 1), 99, 0))
        const back = Y.encodeStateAsUpdate(device, Y.encodeStateVector(reference))
        Y.applyUpdate(host.doc, back)
        Y.applyUpdate(reference, back)
      }
      for (const [key, conversation, member] of steps) {
        const entry = conversation && member && entryFromParts(conversation, member)
        const values = conversation && new EntryValues(conversation)
        // The member's value is the entry object's own encoding.
        if (entry)
          expect(bytes(values!.encode(member!))).toEqual(
            bytes(encoding.encode((e) => encoding.writeAny(e, entry as never))),
          )
        const ours = deferEntryReplacement(host, key, member && values?.member(member), "relay")
        const yjs = yjsUpdate(key, entry)
        expect(bytes(ours)).toEqual(bytes(yjs && encodeSyncUpdate(yjs)))
        if (yjs) Y.applyUpdate(device, yjs)
        expect(listInbox(device)).toEqual(listInbox(reference))
      }
      if (host.deferred === undefined) applied++
      // Read now and then for a while, then not at all: what waits then reaches the host's bound.
      if (seq % 9 === 0 && seq < 150) {
        // Reading the document applies what waits.
        expect(Y.encodeStateVector(host.doc)).toEqual(Y.encodeStateVector(reference))
        expect(host.deferred).toBeUndefined()
        expect(listInbox(host.doc)).toEqual(listInbox(reference))
      }
    }
    // The bound on what waits applied some on its own, between two reads.
    expect(applied).toBeGreaterThan(0)
    expect(Y.encodeStateAsUpdate(host.doc)).toEqual(Y.encodeStateAsUpdate(reference))
    const fresh = new Y.Doc()
    Y.applyUpdate(fresh, Y.encodeStateAsUpdate(host.doc))
    expect(listInbox(fresh)).toEqual(listInbox(reference))
    // Removing what is not there changes nothing and sends nothing.
    expect(deferEntryReplacement(host, "g~absent" as ConversationId, undefined, "relay")).toBeUndefined()
    host.destroy()
  })

  it("that no longer apply are dropped, told to the relay, and never fail whoever reads the document", () => {
    const name = inboxDocumentName("deferred-user" as UserId)
    const failures: unknown[] = []
    const host = new DocumentHost(name, parseDocumentName(name), (error) => failures.push(error))
    host.deferred = {
      bytes: 10,
      apply: () => {
        throw new Error("no longer fits")
      },
    }
    // The read sees the document as it is, the writes dropped, the failure reported once.
    expect(listInbox(host.doc)).toEqual([])
    expect(host.deferred).toBeUndefined()
    expect(failures).toEqual([new Error("no longer fits")])
    listInbox(host.doc)
    expect(failures).toHaveLength(1)
    host.destroy()
  })
})
