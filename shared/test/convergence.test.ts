import * as prng from "lib0/prng"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  addParticipants,
  allMarkers,
  applySeal,
  assignSequenceNumbers,
  type ChangeEvent,
  type ConversationId,
  changeRole,
  checkStoredRecord,
  createConversation,
  deleteMessage,
  editMessage,
  getConversation,
  lastSequence,
  listMessages,
  listParticipants,
  listSealedMessages,
  type MessageId,
  markDelivered,
  markRead,
  messageIndex,
  nextFromDocument,
  observeChanges,
  ParleyError,
  placeholdersToTombstones,
  planSeal,
  react,
  removeParticipants,
  renameConversation,
  sealedHistory,
  sealedSegments,
  sendMessage,
  TOP_LEVEL_ARRAYS,
  TOP_LEVEL_MAPS,
  typesOf,
  type UserId,
  unreact,
  unreadCount,
} from "../src/index.js"

/**
 * A seeded random network of replicas: each user's device does random
 * operations, sometimes offline for a burst; updates travel in random order,
 * are duplicated, delayed and dropped; one replica plays the relay and gives
 * sequence numbers. At the end everything is delivered (and dropped updates
 * repaired by a state-vector sync, as a reconnect does) and every replica must
 * be identical, valid, and agree on what happened. Replay a failing seed with
 * PARLEY_SEED=<seed>.
 */
const USERS = ["alice", "bob", "carol", "dave"] as UserId[]
const EMOJI = ["👍", "🎉", "❤️"]

interface Replica {
  readonly name: string
  readonly user: UserId | undefined
  readonly doc: Y.Doc
  offline: boolean
  readonly inbox: Uint8Array[]
  readonly sent: Set<MessageId>
  readonly deleted: Set<MessageId>
}

/**
 * Sealing as the relay does it (small segments, so that a run seals several, and folds their
 * summaries into a directory page each), or none.
 */
const SEALING = { segmentSize: 8, keepLive: 6, epochClientIds: 1000, keepSummaries: 1, foldSize: 1 }

function simulate(seed: number, steps = 300, seal = false) {
  const gen = prng.create(seed)
  const relay = makeReplica("relay", undefined)
  createConversation(relay.doc, USERS[0]!, {
    kind: "group",
    id: "g~sim" as ConversationId,
    participants: USERS.slice(1),
    title: "sim",
  })
  changeRole(relay.doc, USERS[0]!, USERS[1]!, "admin")
  const devices = USERS.map((user) => makeReplica(user, user))
  for (const d of devices) Y.applyUpdate(d.doc, Y.encodeStateAsUpdate(relay.doc), "network")
  const all = [relay, ...devices]
  const inFlight: { to: Replica; update: Uint8Array }[] = []
  for (const r of all) {
    r.doc.on("update", (update: Uint8Array, origin: unknown) => {
      if (origin === "network") return
      for (const other of all) if (other !== r) inFlight.push({ to: other, update })
    })
    observeChanges(r.doc, (events: ChangeEvent[]) => record(r, events))
  }

  for (let step = 0; step < steps; step++) {
    const device = prng.oneOf(gen, devices)
    if (prng.int32(gen, 0, 20) === 0) device.offline = !device.offline
    randomOperation(gen, device)
    // The network delivers a random part of what is in flight, out of order, with duplicates and drops.
    const deliveries = prng.int32(gen, 0, 4)
    for (let i = 0; i < deliveries && inFlight.length > 0; i++) {
      const [message] = inFlight.splice(prng.int32(gen, 0, inFlight.length - 1), 1)
      const { to, update } = message!
      const from = all.find((r) => r !== to && r.offline)
      if (to.offline || (from && prng.bool(gen))) {
        inFlight.push(message!) // held back while a side is offline
        continue
      }
      const roll = prng.int32(gen, 0, 9)
      if (roll === 0) continue // dropped
      Y.applyUpdate(to.doc, update, "network")
      if (roll === 1) inFlight.push(message!) // duplicated
    }
    if (prng.int32(gen, 0, 3) === 0) relaySequences(relay, all, seal)
  }
  // Everyone comes back online; what was dropped is repaired by state-vector sync (a reconnect).
  for (const r of all) r.offline = false
  for (const { to, update } of inFlight.splice(0)) Y.applyUpdate(to.doc, update, "network")
  for (const d of devices) exchange(relay, d)
  relaySequences(relay, all, seal)
  for (const d of devices) exchange(relay, d)
  for (const { to, update } of inFlight.splice(0)) Y.applyUpdate(to.doc, update, "network")
  return all
}

/**
 * What the relay does after changes: deletions of messages it sealed meanwhile
 * become tombstones, new messages get numbers, and (with `seal`) what is due
 * is sealed; every replica then holds the new segment, as a device that
 * fetched it would.
 */
/** Folds done in this run, and runs that folded (some must, for the test to cover folding). */
let folds = 0
let foldedRuns = 0

function relaySequences(relay: Replica, all: readonly Replica[], seal: boolean) {
  const history = sealedHistory(relay.doc)
  const index = messageIndex(relay.doc)
  const late = [...index.deleted.keys()].filter((id) => !index.seqOf.has(id) && history.entry(id))
  if (late.length > 0) placeholdersToTombstones(relay.doc, late, null)
  assignSequenceNumbers(relay.doc, nextFromDocument(relay.doc))
  if (!seal) return
  for (let plan = planSeal(relay.doc, "g~sim" as ConversationId, SEALING); plan; ) {
    applySeal(relay.doc, plan, null)
    for (const r of all) sealedHistory(r.doc).add(plan.segment)
    // And the directory page of a fold, as a device that pages back (or counts unread there) fetches it.
    if (plan.fold) for (const r of all) sealedHistory(r.doc).addPage(plan.fold.page, plan.fold.fold.hash)
    folds += plan.fold ? 1 : 0
    plan = planSeal(relay.doc, "g~sim" as ConversationId, SEALING)
  }
}

function makeReplica(name: string, user: UserId | undefined): Replica {
  return { name, user, doc: new Y.Doc(), offline: false, inbox: [], sent: new Set(), deleted: new Set() }
}

function record(r: Replica, events: ChangeEvent[]) {
  for (const e of events) {
    if (e.type === "message.sent") r.sent.add(e.message.id)
    if (e.type === "message.deleted") r.deleted.add(e.messageId)
  }
}

function exchange(a: Replica, b: Replica) {
  Y.applyUpdate(b.doc, Y.encodeStateAsUpdate(a.doc, Y.encodeStateVector(b.doc)), "network")
  Y.applyUpdate(a.doc, Y.encodeStateAsUpdate(b.doc, Y.encodeStateVector(a.doc)), "network")
}

function randomOperation(gen: prng.PRNG, device: Replica) {
  const { doc } = device
  const user = device.user!
  // Sealed messages are as much a target as live ones.
  const ids = [
    ...messageIndex(doc).records.keys(),
    ...sealedHistory(doc)
      .held()
      .flatMap((i) =>
        sealedHistory(doc)
          .segment(i)!
          .entries.map((e) => e.record.id),
      ),
  ]
  const someMessage = () => prng.oneOf(gen, ids)
  const op = prng.int32(gen, 0, 11)
  try {
    if (op <= 3 || ids.length === 0) sendMessage(doc, user, { body: prng.word(gen, 1, 30) })
    else if (op === 4) editMessage(doc, user, someMessage(), prng.word(gen, 1, 30))
    else if (op === 5) deleteMessage(doc, user, someMessage())
    else if (op === 6) react(doc, user, someMessage(), prng.oneOf(gen, EMOJI))
    else if (op === 7) unreact(doc, user, someMessage(), prng.oneOf(gen, EMOJI))
    else if (op === 8) markRead(doc, user, prng.bool(gen) ? "latest" : someMessage())
    else if (op === 9) markDelivered(doc, user)
    else if (op === 10) renameConversation(doc, user, prng.word(gen, 1, 20))
    else if (prng.bool(gen)) removeParticipants(doc, user, [prng.oneOf(gen, USERS)])
    else addParticipants(doc, user, [prng.oneOf(gen, USERS)])
  } catch (error) {
    // Refused or not found locally is part of the game (e.g. a member renaming); anything else is a bug.
    if (!(error instanceof ParleyError) || !["FORBIDDEN", "NOT_FOUND"].includes(error.code)) throw error
  }
}

/** Everything a reader can see, as plain data. */
function visibleState(doc: Y.Doc) {
  return {
    conversation: getConversation(doc),
    participants: listParticipants(doc),
    messages: everyMessage(doc),
    markers: allMarkers(doc),
    unread: USERS.map((u) => unreadCount(doc, u)),
  }
}

/** Sealed (held) then live messages, in canonical order. */
const everyMessage = (doc: Y.Doc) => [
  ...listSealedMessages(doc, Number.MAX_SAFE_INTEGER, 1_000_000),
  ...listMessages(doc, { last: 1_000_000 }),
]

function assertInvariants(doc: Y.Doc) {
  const t = typesOf(doc)
  for (const name of doc.share.keys())
    expect(TOP_LEVEL_MAPS.has(name) || TOP_LEVEL_ARRAYS.has(name)).toBe(true)
  for (const value of t.messages) expect(checkStoredRecord(value)).toBeUndefined()
  const messages = everyMessage(doc)
  expect(new Set(messages.map((m) => m.id)).size).toBe(messages.length)
  // A single relay numbers every message exactly once, 1..n without gaps.
  expect(messages.map((m) => m.seq)).toEqual(messages.map((_, i) => i + 1))
  const last = lastSequence(doc)
  for (const { read, delivered } of Object.values(allMarkers(doc))) {
    expect(read).toBeLessThanOrEqual(delivered)
    expect(delivered).toBeLessThanOrEqual(last)
  }
  for (const m of messages.filter((m) => m.deleted)) expect(m.body).toBe("")
}

describe("convergence under a random network", () => {
  const seeds = process.env.PARLEY_SEED
    ? [Number(process.env.PARLEY_SEED)]
    : Array.from({ length: 25 }, (_, i) => i + 1)
  it.each(
    seeds.flatMap((seed) => [
      [seed, false],
      [seed, true],
    ]),
  )("converges, keeps every invariant and agrees on events (seed %i, sealing %s)", (seed, seal) => {
    try {
      folds = 0
      const replicas = simulate(seed, 300, seal)
      if (folds > 0) foldedRuns++
      const [relay, ...devices] = replicas
      const expected = visibleState(relay!.doc)
      expect(expected.messages.length).toBeGreaterThan(10)
      for (const r of replicas) {
        expect(Y.encodeStateVector(r.doc)).toEqual(Y.encodeStateVector(relay!.doc))
        expect(visibleState(r.doc)).toEqual(expected)
        assertInvariants(r.doc)
        // Every replica was told about every message exactly as the final state shows it; with
        // sealing, a replica that lagged behind a sealing never saw those messages live, so it is told
        // of what stayed live and of nothing that does not exist.
        const told =
          seal && r !== relay
            ? new Set(listMessages(relay!.doc, { last: 1_000_000 }).map((m) => m.id))
            : undefined
        const shown = expected.messages.filter((m) => !told || told.has(m.id))
        const live = shown.filter((m) => !m.deleted).map((m) => m.id)
        const gone = shown.filter((m) => m.deleted).map((m) => m.id)
        const ids = new Set(expected.messages.map((m) => m.id))
        for (const id of [...r.sent, ...r.deleted]) expect(ids.has(id)).toBe(true)
        for (const id of gone) expect(r.deleted.has(id)).toBe(true)
        for (const id of live) expect(r.sent.has(id)).toBe(true)
        if (!seal) {
          expect([...r.deleted].sort()).toEqual([...gone].sort())
          expect(new Set([...r.sent, ...r.deleted])).toEqual(ids)
        } else {
          // Sealed or not, no message is both told deleted and shown live.
          for (const id of live) expect(r.deleted.has(id)).toBe(false)
        }
      }
      expect(devices.length).toBe(USERS.length)
      if (seal) expect(sealedSegments(relay!.doc).length).toBeGreaterThan(0)
    } catch (error) {
      console.error(`convergence failed for seed ${seed} (sealing ${seal}): replay with PARLEY_SEED=${seed}`)
      throw error
    }
  })

  it.skipIf(process.env.PARLEY_SEED)(
    "folded segment summaries into directory pages in some sealing runs",
    () => {
      expect(foldedRuns).toBeGreaterThan(0)
    },
  )
})
