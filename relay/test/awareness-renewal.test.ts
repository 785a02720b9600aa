import {
  encodeAwarenessEntries,
  MessageType,
  PRESENCE_STAMP,
  parseDocumentName,
  readAwarenessEntries,
  type UserId,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import { describe, expect, it } from "vitest"
import { AwarenessGate, DEFAULT_AWARENESS_LIMITS, JOIN_CLOCK_STEP } from "../src/awareness-gate.js"
import { Connection, type Session } from "../src/connection.js"
import { DocumentHost } from "../src/document-host.js"
import { ClientBindings } from "../src/policy/client-bindings.js"
import { stubOwner } from "./helpers/connection-owner.js"

const owner = stubOwner()

function connectionOf(host: DocumentHost, user: string, sent: Uint8Array[] = []): Connection<DocumentHost> {
  const session: Session = {
    principal: { kind: "user", user: user as UserId },
    wantsParley: true,
    send: (frame) => sent.push(frame),
    close: () => {},
  }
  return new Connection(host, session, "write", owner)
}

/** The awareness entries of the frames a connection was sent, as [client id, clock, state]. */
const entriesSent = (sent: readonly Uint8Array[]) =>
  sent.flatMap((frame) => {
    const decoder = decoding.createDecoder(frame)
    if (decoding.readVarUint(decoder) !== MessageType.awareness) return []
    return readAwarenessEntries(decoding.readVarUint8Array(decoder)).map(
      (e) => [e.clientId, e.clock, JSON.parse(new TextDecoder().decode(e.state))] as const,
    )
  })

const frame = (clientId: number, clock: number, state: unknown) =>
  encodeAwarenessEntries([{ clientId, clock, state: new TextEncoder().encode(JSON.stringify(state)) }])

/** A document's gate, with what its awareness announces recorded as the core's listener sees it. */
function setUp(
  limits = DEFAULT_AWARENESS_LIMITS,
  options: {
    /** Whose storage says an id is (another relay's user may have bound it first); default the claimant's. */
    readonly stored?: (clientId: number, key: string) => string
    readonly takeClientId?: (user: UserId) => boolean
  } = {},
) {
  const host = new DocumentHost("g~renewals", parseDocumentName("g~renewals"))
  const bindings = new ClientBindings([])
  const dropped: string[] = []
  const gate = new AwarenessGate({
    host,
    owners: {
      owner: (clientId) => bindings.get(clientId),
      claim: async (clientId, key) => {
        bindings.bind([[clientId, key]])
        // Storage answers later, as a database does.
        await new Promise((resolve) => setTimeout(resolve, 1))
        const stored = options.stored?.(clientId, key) ?? key
        bindings.record(new Map([[clientId, stored]]))
        return stored
      },
    },
    limits,
    dropped: (_connection, reason, count) => dropped.push(`${reason} ${count}`),
    claimFailed: () => {},
    ...(options.takeClientId ? { takeClientId: options.takeClientId } : {}),
  })
  const changes: number[][] = []
  const updates: number[][] = []
  host.awareness.on("change", ({ updated, added }: { updated: number[]; added: number[] }) =>
    changes.push([...added, ...updated]),
  )
  host.awareness.on(
    "update",
    (
      { added, updated, removed }: { added: number[]; updated: number[]; removed: number[] },
      origin: unknown,
    ) => {
      gate.changed(added, updated, removed, origin)
      updates.push([...added, ...updated])
    },
  )
  return { host, gate, changes, updates, dropped }
}

/** Lets the claims of new ids settle: an entry under a new id is applied once storage says it is the sender's. */
const claimsSettled = () => new Promise((resolve) => setTimeout(resolve, 10))

/** The clock an entry that appeared at `clock` is held at (and its client told to move past). */
const appeared = (clock: number) => clock + JOIN_CLOCK_STEP

describe("awareness renewals", () => {
  it("renews an unchanged state (its clock and time move, it is announced as a renewal) and applies a changed one", async () => {
    const { host, gate, changes, updates } = setUp()
    const alice = connectionOf(host, "alice")
    gate.receive(alice, frame(7, 1, { name: "Alice", typing: false }))
    expect(host.awareness.getStates().has(7)).toBe(false)
    await claimsSettled()
    const stamped = host.awareness.getStates().get(7)
    expect(stamped).toEqual({ name: "Alice", typing: false, [PRESENCE_STAMP]: "alice" })
    expect(changes).toEqual([[7]])
    const before = host.awareness.meta.get(7)!.lastUpdated
    await new Promise((r) => setTimeout(r, 5))
    gate.receive(alice, frame(7, appeared(1) + 1, { name: "Alice", typing: false }))
    expect(host.awareness.meta.get(7)!.clock).toBe(appeared(1) + 1)
    expect(host.awareness.meta.get(7)!.lastUpdated).toBeGreaterThan(before)
    // Announced, so that it is relayed, but as a renewal: nothing changed.
    expect(updates).toEqual([[7], [7]])
    expect(changes).toEqual([[7]])
    expect(host.awareness.getStates().get(7)).toEqual(stamped)
    // A changed state goes through the whole gate again.
    gate.receive(alice, frame(7, appeared(1) + 2, { name: "Alice", typing: true }))
    expect(host.awareness.getStates().get(7)).toEqual({
      name: "Alice",
      typing: true,
      [PRESENCE_STAMP]: "alice",
    })
    expect(changes).toEqual([[7], [7]])
    host.destroy()
  })

  it("does not renew from an old clock, nor another user's entry, nor a state the awareness refused", async () => {
    const { host, gate, changes } = setUp()
    const alice = connectionOf(host, "alice")
    const mallory = connectionOf(host, "mallory")
    gate.receive(alice, frame(7, 5, { name: "Alice" }))
    await claimsSettled()
    const held = appeared(5)
    // An older clock renews nothing.
    gate.receive(alice, frame(7, held - 1, { name: "Alice" }))
    expect(host.awareness.meta.get(7)!.clock).toBe(held)
    // The same bytes from another user are a foreign entry, dropped.
    gate.receive(mallory, frame(7, held + 1, { name: "Alice" }))
    expect(host.awareness.meta.get(7)!.clock).toBe(held)
    // A new state at the same clock is refused by the awareness; repeating it later is no renewal
    // of the refused state but an update that sets it.
    gate.receive(alice, frame(7, held, { name: "Alicia" }))
    expect(host.awareness.getStates().get(7)).toEqual({ name: "Alice", [PRESENCE_STAMP]: "alice" })
    gate.receive(alice, frame(7, held + 1, { name: "Alicia" }))
    expect(host.awareness.getStates().get(7)).toEqual({ name: "Alicia", [PRESENCE_STAMP]: "alice" })
    expect(changes).toEqual([[7], [7]])
    host.destroy()
  })

  it("drops echoes of what it holds before reading them: no drop counted, no budget spent, a removal at the same clock still checked", async () => {
    const { host, gate, changes, dropped } = setUp({
      ...DEFAULT_AWARENESS_LIMITS,
      awarenessFramesPerSecond: 0.001,
      awarenessBurst: 2,
    })
    const alice = connectionOf(host, "alice")
    const bob = connectionOf(host, "bob")
    gate.receive(alice, frame(7, 3, { name: "Alice" }))
    gate.receive(bob, frame(8, 1, { name: "Bob" }))
    await claimsSettled()
    // Bob echoes alice's entry as he got it, and his own: nothing is newer, nothing is counted.
    const echo = encodeAwarenessEntries([
      { clientId: 7, clock: appeared(3), state: new TextEncoder().encode(JSON.stringify({ name: "Alice" })) },
      { clientId: 8, clock: appeared(1), state: new TextEncoder().encode(JSON.stringify({ name: "Bob" })) },
    ])
    for (let i = 0; i < 5; i++) gate.receive(bob, echo)
    expect(dropped).toEqual([])
    // Bob's budget (a burst of 2, hardly refilled) was not spent by the echoes: his change applies at once.
    gate.receive(bob, frame(8, appeared(1) + 1, { name: "Robert" }))
    expect(host.awareness.getStates().get(8)).toMatchObject({ name: "Robert" })
    // A removal of alice's entry at its own clock would apply: it is read, and dropped as foreign.
    gate.receive(bob, frame(7, appeared(3), null))
    expect(dropped).toEqual(["foreign 1"])
    expect(host.awareness.getStates().has(7)).toBe(true)
    expect(changes).toEqual([[7], [8], [8]])
    host.destroy()
  })
})

// Peers hold an entry that left one clock above its last (the removal), and the client that left
// holds every other entry one above too (it removed them itself): y-protocols takes only higher clocks.
describe("entries that appear", () => {
  it("go out two clocks above the one they came with, their client told to move there first", async () => {
    const { host, gate } = setUp()
    const sent: Uint8Array[] = []
    const alice = connectionOf(host, "alice", sent)
    gate.receive(alice, frame(7, 3, { name: "Alice" }))
    await claimsSettled()
    expect(host.awareness.meta.get(7)!.clock).toBe(appeared(3))
    // A removal of her own entry at that clock: y-protocols keeps her state, moves her clock past it.
    expect(entriesSent(sent)).toEqual([[7, appeared(3), null]])
    // She announces again from there: a renewal.
    gate.receive(alice, frame(7, appeared(3) + 1, { name: "Alice" }))
    expect(host.awareness.meta.get(7)!.clock).toBe(appeared(3) + 1)
    expect(entriesSent(sent)).toHaveLength(1)
    host.destroy()
  })

  it("move the others' entries on too when the client comes back after leaving", async () => {
    const { host, gate, updates } = setUp()
    const toBob: Uint8Array[] = []
    const bob = connectionOf(host, "bob", toBob)
    const alice = connectionOf(host, "alice")
    gate.receive(bob, frame(8, 1, { name: "Bob" }))
    gate.receive(alice, frame(7, 1, { name: "Alice" }))
    await claimsSettled()
    const bobsClock = host.awareness.meta.get(8)!.clock
    expect(entriesSent(toBob)).toEqual([[8, bobsClock, null]])
    // A second client joining moves nobody else.
    const carol = connectionOf(host, "carol")
    gate.receive(carol, frame(9, 1, { name: "Carol" }))
    await claimsSettled()
    expect(host.awareness.meta.get(8)!.clock).toBe(bobsClock)
    // Alice leaves (the fan-out forgets her entry once its removal went out) and comes back.
    gate.detach(alice)
    gate.forget([7])
    const aliceAgain = connectionOf(host, "alice")
    gate.receive(aliceAgain, frame(7, appeared(1) + 1, { name: "Alice" }))
    expect(host.awareness.meta.get(7)!.clock).toBe(appeared(appeared(1) + 1))
    // Bob's entry went on, and he was told to follow; carol's too.
    expect(host.awareness.meta.get(8)!.clock).toBe(bobsClock + JOIN_CLOCK_STEP)
    expect(entriesSent(toBob)).toEqual([
      [8, bobsClock, null],
      [8, bobsClock + JOIN_CLOCK_STEP, null],
    ])
    expect(host.awareness.meta.get(9)!.clock).toBe(appeared(1) + JOIN_CLOCK_STEP)
    // Announced in one update (one frame to each connection), before her own entry.
    expect(updates.slice(-2)).toEqual([[8, 9], [7]])

    // Coming back again within the second: one more round, but only once that second is over, for
    // however many returns it saw; and that round moves every entry on, the returning one's too.
    const bobsMoved = host.awareness.meta.get(8)!.clock
    let current = aliceAgain
    for (let i = 0; i < 5; i++) {
      gate.detach(current)
      gate.forget([7])
      current = connectionOf(host, "alice")
      gate.receive(current, frame(7, 100 + 10 * i, { name: "Alice" }))
    }
    expect(host.awareness.meta.get(8)!.clock).toBe(bobsMoved)
    await new Promise((resolve) => setTimeout(resolve, 1_100))
    expect(host.awareness.meta.get(8)!.clock).toBe(bobsMoved + JOIN_CLOCK_STEP)
    expect(entriesSent(toBob)).toHaveLength(3)
    expect(host.awareness.meta.get(7)!.clock).toBe(appeared(140) + JOIN_CLOCK_STEP)
    host.destroy()
  })
})

describe("awareness claims", () => {
  it("applies an entry under a new id only once storage says the id is the sender's; another's is dropped unseen", async () => {
    // Storage (shared by a cluster's relays) says id 9 is bob's: he announced it on another relay.
    const { host, gate, changes, dropped } = setUp(DEFAULT_AWARENESS_LIMITS, {
      stored: (clientId, key) => (clientId === 9 ? "user:bob" : key),
    })
    const mallory = connectionOf(host, "mallory")
    gate.receive(mallory, frame(9, 5, { status: "set by mallory" }))
    gate.receive(mallory, frame(9, 6, { status: "set by mallory, again" }))
    gate.receive(mallory, frame(10, 1, { status: "mallory's own" }))
    await claimsSettled()
    expect(host.awareness.getStates().has(9)).toBe(false)
    expect(dropped).toEqual(["foreign 1"])
    // Her own new id applies, with the latest state she sent while it was claimed.
    expect(host.awareness.getStates().get(10)).toEqual({
      status: "mallory's own",
      [PRESENCE_STAMP]: "mallory",
    })
    expect(changes).toEqual([[10]])
    // Known now: later frames under bob's id are dropped at once.
    gate.receive(mallory, frame(9, 7, null))
    gate.receive(mallory, frame(9, 8, { status: "still mallory" }))
    expect(dropped).toEqual(["foreign 1", "foreign 1", "foreign 1"])
    host.destroy()
  })

  it("takes each claimed id from the user's allowance of new client ids in the document", async () => {
    let left = 2
    const { host, gate, dropped } = setUp(DEFAULT_AWARENESS_LIMITS, {
      takeClientId: () => left-- > 0,
    })
    const alice = connectionOf(host, "alice")
    for (const id of [1, 2, 3]) gate.receive(alice, frame(id, 1, { n: id }))
    await claimsSettled()
    expect([...host.awareness.getStates().keys()].filter((id) => id !== host.doc.clientID).sort()).toEqual([
      1, 2,
    ])
    expect(dropped).toEqual(["claims 1"])
    host.destroy()
  })
})
