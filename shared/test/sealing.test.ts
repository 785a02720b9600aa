import * as encoding from "lib0/encoding"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  applySeal,
  applySeals,
  assignSequenceNumbers,
  baselineSource,
  type ConversationId,
  checkEpochRecord,
  decodeEpochRecord,
  decodeSegment,
  deleteMessage,
  editMessage,
  encodeEpochBaseline,
  encodeEpochRecord,
  encodeSegment,
  encodeStoredRecord,
  endOfEpoch,
  epochBaseline,
  getMessage,
  isReactionRemoval,
  listMessages,
  listSealedMessages,
  type MessageId,
  markersOf,
  markRead,
  messageIndex,
  nextFromDocument,
  observeChanges,
  planSeal,
  planSeals,
  react,
  reactionKey,
  recordChars,
  refoldSegment,
  SEGMENT_FORMAT,
  type SealingOptions,
  sealDue,
  sealedHistory,
  sealedThrough,
  sendMessage,
  typesOf,
  unreact,
  unreadCount,
  writeSequenceNumbers,
} from "../src/index.js"
import { MessageIndex } from "../src/message-index.js"
import { alice, bob, carol, groupDoc, replicaOf } from "./helpers.js"

const SEALING = { segmentSize: 500, keepLive: 250, epochClientIds: 1000 }
/** {@link SEALING} with character bounds no conversation of these tests reaches. */
const SEALING_COUNT_ONLY = { ...SEALING, segmentChars: 1e12, keepLiveChars: 0 }

/** What the index answers, in a form two indexes can be compared by. */
function answers(doc: Y.Doc, index = messageIndex(doc)) {
  return {
    order: [...index.order()],
    seqs: index.order().map((id) => index.seqOf.get(id)),
    last: index.lastSequence(),
    unsequenced: index.unsequenced(),
    unread: [alice, bob, carol].map((user) => [index.unreadFor(user, 0), index.unreadFor(user, 300)]),
    live: [...index.records.keys()].sort(),
    deleted: [...index.deleted.keys()].sort(),
  }
}

describe("sealing a large run of messages", () => {
  it("counts a member's sealed unread messages again once a sealed one is deleted or the marker moves", () => {
    const doc = groupDoc()
    const users = [alice, bob, carol]
    for (let i = 0; i < 900; i++) sendMessage(doc, users[i % 3]!, { body: `m${i}` })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const sealedIds = listMessages(doc, { last: 900 }).map((m) => m.id)
    const plan = planSeal(doc, "g~test" as ConversationId, SEALING)
    applySeal(doc, plan!, null)
    expect(sealedThrough(doc)).toBeGreaterThan(0)
    // Alice and carol wrote 600 of the 900, all unread by bob; asked twice (the second from the cache).
    expect(unreadCount(doc, bob)).toBe(600)
    expect(unreadCount(doc, bob)).toBe(600)
    // A sealed message of alice's deleted: a tombstone, nothing else of what is counted from changes.
    const sealed = sealedIds.find(
      (id) => plan!.ids.has(id) && sealedHistory(doc).entry(id)?.record.author === alice,
    )!
    deleteMessage(doc, alice, sealed)
    expect(typesOf(doc).tombstones.has(sealed)).toBe(true)
    expect(unreadCount(doc, bob)).toBe(599)
    // Read up to 3: alice's first (the deleted one, no longer counted), bob's own, carol's.
    expect(sealedHistory(doc).entry(sealed)?.seq).toBe(1)
    markRead(doc, bob, 3)
    expect(unreadCount(doc, bob)).toBe(598)
  })

  it("leaves the live document's message index as a fresh index of it would be", () => {
    const doc = groupDoc()
    const users = [alice, bob, carol]
    // One sequence record of 1,200 messages (an offline device's backlog numbered at once), some deleted.
    for (let i = 0; i < 1_200; i++) sendMessage(doc, users[i % 3]!, { body: `m${i}` })
    const ids = listMessages(doc, { last: 1_200 }).map((m) => m.id)
    for (let i = 0; i < 1_200; i += 7) deleteMessage(doc, alice, ids[i]!)
    assignSequenceNumbers(doc, nextFromDocument(doc))
    for (let i = 0; i < 300; i++) sendMessage(doc, users[i % 3]!, { body: `later ${i}` })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const before = messageIndex(doc).unreadFor(bob, 0)
    const plan = planSeal(doc, "g~test" as ConversationId, SEALING)
    expect(plan?.ids.size).toBeGreaterThan(64)
    applySeal(doc, plan!, null)
    expect(typesOf(doc).order.length).toBeGreaterThan(0)
    // Kept current by the observers through the seal, and built from scratch: the same answers.
    expect(answers(doc)).toEqual(answers(doc, new MessageIndex(doc)))
    // The sealed messages leave the live index's counts.
    expect(messageIndex(doc).unreadFor(bob, 0)).toBeLessThan(before)
  })

  it("seals a record longer than a segment one segment at a time, every number kept", () => {
    const doc = groupDoc()
    const users = [alice, bob, carol]
    for (let i = 0; i < 100; i++) sendMessage(doc, users[i % 3]!, { body: `old ${i}` })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    // 2,000 messages numbered at once: one record, four segments long.
    for (let i = 0; i < 2_000; i++) sendMessage(doc, users[i % 3]!, { body: `backlog ${i}` })
    const ids = listMessages(doc, { last: 2_000 }).map((m) => m.id)
    for (let i = 0; i < 2_000; i += 11) deleteMessage(doc, alice, ids[i]!)
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const seqs = new Map(ids.map((id) => [id, messageIndex(doc).seqOf.get(id)]))
    const segments: { from: number; to: number; entries: number }[] = []
    for (let plan = planSeal(doc, "g~test" as ConversationId, SEALING); plan; ) {
      expect(plan.segment.entries.length).toBeLessThanOrEqual(SEALING.segmentSize)
      applySeal(doc, plan, null)
      segments.push({ from: plan.segment.from, to: plan.segment.to, entries: plan.segment.entries.length })
      // After every seal, kept current by the observers as a fresh index would be built.
      expect(answers(doc)).toEqual(answers(doc, new MessageIndex(doc)))
      plan = planSeal(doc, "g~test" as ConversationId, SEALING)
    }
    // Contiguous segments from 1, each as full as allowed, and what is left live is at most one segment more than kept.
    expect(segments.map((s) => s.entries)).toEqual([500, 500, 500])
    segments.forEach((s, i) => {
      expect(s.from).toBe(i === 0 ? 1 : segments[i - 1]!.to + 1)
    })
    const index = messageIndex(doc)
    const live = index.sequencedAfter(segments.at(-1)!.to).length
    for (const seq of [0, 1, segments[0]!.to, segments.at(-1)!.to, segments.at(-1)!.to + live, 1e9])
      expect(index.countSequencedAfter(seq)).toBe(index.sequencedAfter(seq).length)
    expect(live).toBeGreaterThanOrEqual(SEALING.keepLive)
    expect(live).toBeLessThan(SEALING.keepLive + SEALING.segmentSize)
    // The messages still live keep the numbers they were given.
    for (const id of index.sequencedAfter(segments.at(-1)!.to)) expect(index.seqOf.get(id)).toBe(seqs.get(id))
  })

  it("seals long messages by their characters: the live document stays small whatever each message holds", () => {
    const doc = groupDoc()
    const users = [alice, bob, carol]
    const sealing: SealingOptions = { ...SEALING, segmentChars: 100_000, keepLiveChars: 50_000 }
    const body = (i: number) => `${i} `.padEnd(16_000, "x")
    // 40 messages at the body's limit: 640,000 characters, far fewer than 250 + 500 messages.
    for (let i = 0; i < 40; i++) {
      sendMessage(doc, users[i % 3]!, { body: body(i), ...(i % 7 === 0 ? { metadata: { n: i } } : {}) })
      assignSequenceNumbers(doc, nextFromDocument(doc))
    }
    expect(sealDue(doc, SEALING_COUNT_ONLY)).toBe(false)
    expect(sealDue(doc, sealing)).toBe(true)
    const segments: number[] = []
    for (let plan = planSeal(doc, "g~test" as ConversationId, sealing); plan; ) {
      const chars = plan.segment.entries.reduce((n, e) => n + recordChars(e.record), 0)
      // Each segment ends at the first message that reaches its characters.
      expect(chars).toBeGreaterThanOrEqual(sealing.segmentChars!)
      expect(chars - recordChars(plan.segment.entries.at(-1)!.record)).toBeLessThan(sealing.segmentChars!)
      segments.push(plan.segment.entries.length)
      applySeal(doc, plan, null)
      expect(answers(doc)).toEqual(answers(doc, new MessageIndex(doc)))
      plan = planSeal(doc, "g~test" as ConversationId, sealing)
    }
    expect(sealDue(doc, sealing)).toBe(false)
    const live = listMessages(doc, { last: 100 })
    const liveChars = messageIndex(doc).sequencedChars()
    expect(liveChars).toBe(live.reduce((n, m) => n + recordChars(messageIndex(doc).records.get(m.id)!), 0))
    // Kept: at least keepLiveChars, less than keepLiveChars + segmentChars; the latest messages.
    expect(liveChars).toBeGreaterThanOrEqual(sealing.keepLiveChars!)
    expect(liveChars).toBeLessThan(sealing.keepLiveChars! + sealing.segmentChars!)
    expect(live.at(-1)!.body).toBe(body(39))
    expect(segments.reduce((a, b) => a + b, 0) + live.length).toBe(40)
    expect(Y.encodeStateAsUpdate(doc).length).toBeLessThan(300_000)
    // Planned together, the same segments as one after another.
    const again = groupDoc()
    for (let i = 0; i < 40; i++) {
      sendMessage(again, users[i % 3]!, { body: body(i), ...(i % 7 === 0 ? { metadata: { n: i } } : {}) })
      assignSequenceNumbers(again, nextFromDocument(again))
    }
    expect(
      planSeals(again, "g~test" as ConversationId, sealing, 10).map((p) => p.segment.entries.length),
    ).toEqual(segments)
  })

  it("seals several segments planned together in one transaction as one seal after another would", () => {
    /** A conversation with three backlogs numbered at once (longer than a segment), deletions and pins. */
    const build = () => {
      const doc = groupDoc()
      const users = [alice, bob, carol]
      for (const [n, label] of [
        [120, "old"],
        [1_700, "backlog"],
        [900, "later"],
        [400, "last"],
      ] as const) {
        for (let i = 0; i < n; i++)
          sendMessage(doc, users[i % 3]!, {
            body: `${label} ${i}`,
            ...(i % 97 === 5 ? { priority: "sticky" } : {}),
          })
        const ids = listMessages(doc, { last: n }).map((m) => m.id)
        for (let i = 3; i < n; i += 13) deleteMessage(doc, alice, ids[i]!)
        assignSequenceNumbers(doc, nextFromDocument(doc))
      }
      return doc
    }
    // Small folds, so that a fold falls inside the backlog.
    const sealing: SealingOptions = {
      ...SEALING,
      segmentSize: 300,
      keepLive: 100,
      keepSummaries: 2,
      foldSize: 3,
    }
    const id = "g~test" as ConversationId
    const one = build()
    const many = new Y.Doc()
    Y.applyUpdate(many, Y.encodeStateAsUpdate(one))
    messageIndex(one)
    messageIndex(many)
    const sequential: Uint8Array[] = []
    for (let plan = planSeal(one, id, sealing); plan; plan = planSeal(one, id, sealing)) {
      sequential.push(plan.bytes, ...(plan.fold ? [plan.fold.bytes] : []))
      applySeal(one, plan, null)
    }
    const batched: Uint8Array[] = []
    let batches = 0
    for (
      let plans = planSeals(many, id, sealing, 4);
      plans.length > 0;
      plans = planSeals(many, id, sealing, 4)
    ) {
      for (const plan of plans) batched.push(plan.bytes, ...(plan.fold ? [plan.fold.bytes] : []))
      // The first plans only, as after a failed segment write, then the rest: the same outcome.
      const cut = plans.length > 2 ? 1 : plans.length
      applySeals(many, plans.slice(0, cut), null)
      applySeals(many, planSeals(many, id, sealing, plans.length - cut), null)
      batches++
    }
    expect(sequential.length).toBeGreaterThan(8)
    expect(batches).toBeLessThan(sequential.length)
    // The same segments and directory pages, byte for byte, and the same live document.
    expect(batched).toEqual(sequential)
    const live = (doc: Y.Doc) => {
      const t = typesOf(doc)
      return {
        messages: t.messages.toJSON(),
        order: t.order.toJSON(),
        segments: t.segments.toJSON(),
        pins: t.pins.toJSON(),
      }
    }
    expect(live(many)).toEqual(live(one))
    expect(answers(many)).toEqual(answers(one))
    expect(answers(many)).toEqual(answers(many, new MessageIndex(many)))
  })

  it("marks read up to a sealed message it holds, and refuses one it does not hold instead of marking everything", () => {
    const doc = groupDoc()
    const users = [alice, bob, carol]
    for (let i = 0; i < 900; i++) sendMessage(doc, users[i % 3]!, { body: `m${i}` })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const ids = listMessages(doc, { last: 900 }).map((m) => m.id)
    const target = ids[100]!
    const seq = messageIndex(doc).seqOf.get(target)!
    // A replica that never loaded the segment: the live document only, as a device joining now gets it.
    const plan = planSeal(doc, "g~test" as ConversationId, SEALING)!
    expect(plan.ids.has(target)).toBe(true)
    applySeal(doc, plan, null)
    const fresh = new Y.Doc()
    Y.applyUpdate(fresh, Y.encodeStateAsUpdate(doc))
    expect(() => markRead(fresh, bob, target)).toThrow(/sealed message must be loaded/)
    expect(markersOf(fresh, bob).read).toBe(0)
    // The replica that holds the segment marks exactly up to the message's number.
    expect(markRead(doc, bob, target)).toBe(true)
    expect(markersOf(doc, bob).read).toBe(seq)
    expect(seq).toBeLessThan(messageIndex(doc).lastSequence())
  })
})

describe("overlays folded into sealed entries", () => {
  /** 800 messages, numbered; reactions and edits on the first 20; the first 750 sealed ... */
  function sealedWithOverlays() {
    const doc = groupDoc()
    const users = [alice, bob, carol]
    const ids: MessageId[] = []
    for (let i = 0; i < 800; i++) ids.push(sendMessage(doc, users[i % 3]!, { body: `m${i}` }).id)
    for (let i = 0; i < 20; i++) {
      react(doc, bob, ids[i]!, "👍")
      if (i % 2 === 0) react(doc, carol, ids[i]!, "🎉")
      if (i % 3 === 0) editMessage(doc, users[i % 3]!, ids[i]!, `m${i}, edited`)
    }
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const plan = planSeal(doc, "g~test" as ConversationId, SEALING)!
    return { doc, ids, plan }
  }

  it("moves a sealed message's reactions and edit into its entry, out of the live document, and shows them as before", () => {
    const { doc, ids, plan } = sealedWithOverlays()
    const before = ids.slice(0, 20).map((id) => getMessage(doc, id))
    const events: string[] = []
    observeChanges(doc, (list) => events.push(...list.map((e) => e.type)))
    applySeal(doc, plan, null)
    // The live document keeps no overlay of the sealed messages; the segment, read back, holds them.
    expect(typesOf(doc).reactions.size).toBe(0)
    expect(typesOf(doc).edits.size).toBe(0)
    const decoded = decodeSegment(plan.bytes)
    expect(decoded.entries[0]!.overlays).toEqual({
      reactions: [
        ["🎉", carol],
        ["👍", bob],
      ],
      edit: { body: "m0, edited", editedAt: expect.any(Number) },
    })
    expect(decoded.entries[1]!.overlays).toEqual({ reactions: [["👍", bob]] })
    expect(decoded.entries[25]!.overlays).toBeUndefined()
    // Readers see exactly what they saw, and the seal said nothing was removed.
    expect(ids.slice(0, 20).map((id) => getMessage(doc, id))).toEqual(before)
    expect(events).not.toContain("reaction.removed")
    // (Entries without overlays are encoded byte for byte as lib0 writes the record: see "segment encoding".)
  })

  it("removes a folded reaction with a removal under its key, adds it back, and later edits win over the folded one", () => {
    const { doc, ids, plan } = sealedWithOverlays()
    applySeal(doc, plan, null)
    const replica = replicaOf(doc)
    sealedHistory(replica).add(decodeSegment(plan.bytes))
    const events: string[] = []
    observeChanges(replica, (list) => events.push(...list.map((e) => `${e.type}`)))
    unreact(replica, bob, ids[0]!, "👍")
    expect(isReactionRemoval(typesOf(replica).reactions.get(reactionKey(ids[0]!, bob, "👍")))).toBe(true)
    expect(getMessage(replica, ids[0]!)?.reactions).toEqual({ "🎉": [carol] })
    // Removing it again writes nothing; adding it back replaces the removal.
    unreact(replica, bob, ids[0]!, "👍")
    react(replica, bob, ids[0]!, "👍")
    expect(getMessage(replica, ids[0]!)?.reactions).toEqual({ "🎉": [carol], "👍": [bob] })
    // Adding a reaction that is folded already writes nothing.
    react(replica, carol, ids[0]!, "🎉")
    expect(events).toEqual(["reaction.removed", "reaction.added"])
    // A new reaction on a sealed message is an overlay as before; a later edit wins over the folded one.
    react(replica, alice, ids[1]!, "👀")
    expect(getMessage(replica, ids[1]!)?.reactions).toEqual({ "👀": [alice], "👍": [bob] })
    editMessage(replica, alice, ids[0]!, "m0, edited again")
    expect(getMessage(replica, ids[0]!)?.body).toBe("m0, edited again")
    // Deleting the message takes its removals with its reactions.
    deleteMessage(replica, alice, ids[0]!)
    expect([...typesOf(replica).reactions.keys()].some((k) => k.startsWith(ids[0]!))).toBe(false)
  })

  it("re-seals what was written after the seal into the entries, and never names a deleted message's content again", () => {
    const { doc, ids, plan } = sealedWithOverlays()
    applySeal(doc, plan, null)
    const segment = decodeSegment(plan.bytes)
    sealedHistory(doc).add(segment)
    // After the seal: carol reacts to an old message, alice edits one, bob's first is deleted.
    react(doc, carol, ids[30]!, "👀")
    editMessage(doc, alice, ids[30]!, "m30, edited late")
    deleteMessage(doc, bob, ids[1]!)
    const before = [30, 0].map((i) => getMessage(doc, ids[i]!))
    const refolded = refoldSegment(doc, segment, plan.summary)!
    expect(refolded.keys).toEqual([reactionKey(ids[30]!, carol, "👀")])
    expect(refolded.edits).toEqual([ids[30]])
    const entry = (i: number) => refolded.segment.entries.find((e) => e.record.id === ids[i])!
    expect(entry(30).overlays).toEqual({
      reactions: [["👀", carol]],
      edit: { body: "m30, edited late", editedAt: expect.any(Number) },
    })
    // The deleted one is its placeholder, without its content or overlays (it had bob's 👍 folded).
    expect(entry(1)).toEqual({
      seq: entry(1).seq,
      record: expect.objectContaining({ id: ids[1], deletedBy: bob }),
    })
    expect(
      decodeSegment(refolded.bytes).entries.find((e) => e.record.id === ids[1])?.record,
    ).not.toHaveProperty("body")
    // Named, and the live overlays dropped, readers see what they saw.
    typesOf(doc).reactions.delete(refolded.keys[0]!)
    typesOf(doc).edits.delete(ids[30]!)
    sealedHistory(doc).replace(refolded.segment)
    expect([30, 0].map((i) => getMessage(doc, ids[i]!))).toEqual(before)
  })
})

describe("segment encoding", () => {
  it("writes every record as lib0's writeAny does, long and short strings alike, and reads back what it wrote", () => {
    const long = (n: number, unit: string) => unit.repeat(Math.ceil(n / unit.length)).slice(0, n)
    const bodies = [
      "",
      "hi",
      long(63, "a"),
      long(64, "b"),
      long(9_999, "c"),
      long(10_001, "d"),
      long(30_000, "é"),
      `${long(200, "x")}\u{1F600}${long(100, "漢")}`,
      // A lone surrogate: both encoders write U+FFFD.
      `${long(80, "y")}\uD800${long(10, "z")}`,
    ]
    const entries = bodies.map((body, i) => ({
      seq: 10 + i,
      record: {
        id: `m-${String(i).padStart(6, "0")}` as MessageId,
        author: alice,
        body,
        createdAt: 1_700_000_000_000 + i,
        ...(i % 2 === 0
          ? {
              metadata: { note: long(100, "n"), nested: [1, 2.5, true, null, { deep: long(70, "q") }] },
              attachments: [{ kind: "link" as const, url: `https://example.com/${long(90, "p")}` }],
            }
          : {}),
      },
    }))
    const segment = {
      conversation: "g~enc" as ConversationId,
      index: 3,
      from: 10,
      to: 10 + bodies.length - 1,
      entries,
    }
    // The format as lib0 writes it, entry by entry.
    const reference = encoding.createEncoder()
    encoding.writeVarUint(reference, SEGMENT_FORMAT)
    encoding.writeVarString(reference, segment.conversation)
    for (const n of [segment.index, segment.from, segment.to, entries.length])
      encoding.writeVarUint(reference, n)
    let previous = segment.from
    for (const entry of entries) {
      encoding.writeVarUint(reference, entry.seq - previous)
      previous = entry.seq
      encoding.writeAny(reference, encodeStoredRecord(entry.record) as unknown as encoding.AnyEncodable)
    }
    const bytes = encodeSegment(segment)
    expect(Buffer.from(bytes).equals(Buffer.from(encoding.toUint8Array(reference)))).toBe(true)
    const decoded = decodeSegment(bytes)
    expect(decoded.entries.map((e) => e.record.id)).toEqual(entries.map((e) => e.record.id))
    expect(decoded.entries.map((e) => (e.record as { body: string }).body)).toEqual(
      bodies.map((b) => b.replace("\uD800", "\uFFFD")),
    )
  })
})

describe("one message per id across live and sealed history", () => {
  const id = "g~test" as ConversationId
  const x = "dup-id-000000001" as MessageId
  const alices = { id: x, author: alice, body: "alice's", createdAt: 1 }
  const carols = { id: x, author: carol, body: "carol's, under alice's id", createdAt: 2 }

  it("shows the sealed, older message, not a live one written under its id (before the relay refused that)", () => {
    const doc = groupDoc()
    sendMessage(doc, carol, { id: x, body: carols.body })
    writeSequenceNumbers(doc, 41, [x])
    // Without the segment the replica cannot tell: the live one is the message.
    expect(getMessage(doc, x)).toMatchObject({ author: carol })
    sealedHistory(doc).add({
      conversation: id,
      index: 0,
      from: 1,
      to: 1,
      entries: [{ seq: 1, record: alices }],
    })
    expect(getMessage(doc, x)).toMatchObject({ author: alice, body: "alice's", seq: 1 })
    expect(listMessages(doc, { last: 10 })).toEqual([])
    expect(listSealedMessages(doc, 100, 100).map((m) => m.author)).toEqual([alice])
    // A placeholder of the other one (carol deleting hers) does not delete alice's.
    deleteMessage(doc, carol, x)
    expect(getMessage(doc, x)).toMatchObject({ author: alice, body: "alice's" })
  })

  it("lists an id sealed twice once, as its first message, also after that segment is dropped and held again", () => {
    const doc = groupDoc()
    const history = sealedHistory(doc)
    const first = { conversation: id, index: 0, from: 1, to: 1, entries: [{ seq: 1, record: alices }] }
    const later = { conversation: id, index: 4, from: 41, to: 41, entries: [{ seq: 41, record: carols }] }
    history.add(later)
    history.add(first)
    expect(getMessage(doc, x)).toMatchObject({ author: alice, seq: 1 })
    expect(listSealedMessages(doc, 100, 100).map((m) => [m.author, m.seq])).toEqual([[alice, 1]])
    history.remove(0)
    expect(getMessage(doc, x)).toMatchObject({ author: carol, seq: 41 })
    history.add(first)
    expect(listSealedMessages(doc, 100, 100).map((m) => [m.author, m.seq])).toEqual([[alice, 1]])
  })
})

describe("epoch baseline", () => {
  const id = "g~test" as ConversationId
  it("reads the state-vector form the relay writes and the JSON form earlier epochs wrote, the first at about half the size", () => {
    // A baseline of 2,000 device sessions, as a long-lived conversation collects: random 32-bit client ids.
    const baseline = new Map<number, number>()
    for (let i = 0; i < 2000; i++) baseline.set((i * 2_654_435_761) % 4_294_967_291, 1 + ((i * 37) % 5000))
    const sized = (value: unknown) => {
      const doc = new Y.Doc()
      doc.getMap("meta").set("epochFrom", value)
      return { doc, bytes: Y.encodeStateAsUpdate(doc).length }
    }
    const compact = sized(encodeEpochBaseline(baseline))
    const json = sized(Object.fromEntries([...baseline].map(([client, clock]) => [String(client), clock])))
    expect(epochBaseline(compact.doc)).toEqual(baseline)
    expect(epochBaseline(json.doc)).toEqual(baseline)
    expect(compact.bytes).toBeLessThan(json.bytes * 0.6)
    // Bytes no relay wrote: no baseline rather than a wrong one.
    expect(epochBaseline(sized(new Uint8Array([5, 1])).doc)).toEqual(new Map())
  })

  /** A live document of epoch `epoch` (0: the first), counting `records` epoch records, with `from` as its baseline. */
  const epochDoc = (epoch: number, records: number, from?: Map<number, number>) => {
    const doc = new Y.Doc()
    const meta = doc.getMap("meta")
    if (epoch !== 0) meta.set("epoch", epoch)
    if (records > 0) meta.set("epochs", records)
    if (from) meta.set("epochFrom", encodeEpochBaseline(from))
    return doc
  }

  it("encodes an epoch record and reads it back; bytes that are not one are a typed error", () => {
    const record = {
      conversation: id,
      number: 3,
      epoch: 4_000_000_000,
      baseline: new Map([
        [7, 12],
        [9, 1],
      ]),
    }
    expect(decodeEpochRecord(encodeEpochRecord(record))).toEqual(record)
    expect(() => decodeEpochRecord(new Uint8Array([2, 0]))).toThrow(/not an epoch record/)
    expect(() => decodeEpochRecord(encodeEpochRecord(record).slice(0, 5))).toThrow(/not an epoch record/)
  })

  it("ends an epoch with a record of its own clients; the first record also keeps the cumulative baseline of relays before records", () => {
    const legacy = epochDoc(
      55,
      0,
      new Map([
        [1, 10],
        [2, 20],
      ]),
    )
    const first = endOfEpoch(legacy, id, new Map([[3, 30]]))
    expect(first).toEqual({
      conversation: id,
      number: 0,
      epoch: 55,
      baseline: new Map([
        [1, 10],
        [2, 20],
        [3, 30],
      ]),
    })
    const later = endOfEpoch(epochDoc(66, 4, new Map([[3, 30]])), id, new Map([[5, 50]]))
    expect(later).toEqual({ conversation: id, number: 4, epoch: 66, baseline: new Map([[5, 50]]) })
  })

  it("finds a replica's baseline in the live document for the epoch just before, in a record for any earlier one", () => {
    const fresh = epochDoc(90, 5, new Map([[8, 80]]))
    expect(baselineSource(epochDoc(80, 4), fresh)).toEqual({ baseline: new Map([[8, 80]]) })
    expect(baselineSource(epochDoc(70, 3), fresh)).toEqual({ record: 3 })
    expect(baselineSource(epochDoc(0, 0), fresh)).toEqual({ record: 0 })
    expect(baselineSource(epochDoc(90, 5), fresh)).toEqual({ baseline: new Map([[8, 80]]) })
    // A live document of a relay before records (no count): its baseline is every earlier epoch's.
    expect(baselineSource(epochDoc(0, 0), epochDoc(90, 0, new Map([[8, 80]])))).toEqual({
      baseline: new Map([[8, 80]]),
    })
    const record = { conversation: id, number: 3, epoch: 70, baseline: new Map([[7, 70]]) }
    expect(checkEpochRecord(record, epochDoc(70, 3), id, 3)).toEqual(new Map([[7, 70]]))
    expect(() => checkEpochRecord(record, epochDoc(71, 3), id, 3)).toThrow(/is not the record/)
    expect(() => checkEpochRecord(record, epochDoc(70, 3), id, 2)).toThrow(/is not the record/)
    expect(() => checkEpochRecord(record, epochDoc(70, 3), "g~other" as ConversationId, 3)).toThrow(
      /is not the record/,
    )
    // Record 0 also holds the epochs of relays before records: a replica of any of them (no count) takes it.
    const first = {
      conversation: id,
      number: 0,
      epoch: 55,
      baseline: new Map([
        [1, 10],
        [3, 30],
      ]),
    }
    expect(checkEpochRecord(first, epochDoc(44, 0), id, 0)).toEqual(
      new Map([
        [1, 10],
        [3, 30],
      ]),
    )
    expect(checkEpochRecord(first, epochDoc(0, 0), id, 0)).toEqual(
      new Map([
        [1, 10],
        [3, 30],
      ]),
    )
  })
})
