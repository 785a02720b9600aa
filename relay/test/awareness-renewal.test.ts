import { encodeAwarenessEntries, PRESENCE_STAMP, parseDocumentName, type UserId } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { AwarenessGate, DEFAULT_AWARENESS_LIMITS } from "../src/awareness-gate.js"
import { Connection, type ConnectionOwner, type Session } from "../src/connection.js"
import { DocumentHost } from "../src/document-host.js"
import { ClientBindings } from "../src/policy/client-bindings.js"

const owner: ConnectionOwner<DocumentHost> = {
  maxPendingBytes: 1024,
  submit: async () => undefined,
  detach: () => {},
  awareness: () => {},
  refused: () => {},
  history: () => {},
  directory: () => {},
  epochRecord: () => {},
  answerDelay: () => 0,
  answered: () => {},
}

function connectionOf(host: DocumentHost, user: string): Connection<DocumentHost> {
  const session: Session = {
    principal: { kind: "user", user: user as UserId },
    wantsParley: true,
    send: () => {},
    close: () => {},
  }
  return new Connection(host, session, "write", owner)
}

const frame = (clientId: number, clock: number, state: unknown) =>
  encodeAwarenessEntries([{ clientId, clock, state: new TextEncoder().encode(JSON.stringify(state)) }])

/** A document's gate, with what its awareness announces recorded as the core's listener sees it. */
function setUp(limits = DEFAULT_AWARENESS_LIMITS) {
  const host = new DocumentHost("g~renewals", parseDocumentName("g~renewals"))
  const bindings = new ClientBindings([])
  const dropped: string[] = []
  const gate = new AwarenessGate({
    host,
    owners: {
      owner: (clientId) => bindings.get(clientId),
      claim: async (clientId, key) => bindings.bind([[clientId, key]]),
    },
    limits,
    dropped: (_connection, reason, count) => dropped.push(`${reason} ${count}`),
    claimFailed: () => {},
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

describe("awareness renewals", () => {
  it("renews an unchanged state (its clock and time move, it is announced as a renewal) and applies a changed one", async () => {
    const { host, gate, changes, updates } = setUp()
    const alice = connectionOf(host, "alice")
    gate.receive(alice, frame(7, 1, { name: "Alice", typing: false }))
    const stamped = host.awareness.getStates().get(7)
    expect(stamped).toEqual({ name: "Alice", typing: false, [PRESENCE_STAMP]: "alice" })
    expect(changes).toEqual([[7]])
    const before = host.awareness.meta.get(7)!.lastUpdated
    await new Promise((r) => setTimeout(r, 5))
    gate.receive(alice, frame(7, 2, { name: "Alice", typing: false }))
    expect(host.awareness.meta.get(7)!.clock).toBe(2)
    expect(host.awareness.meta.get(7)!.lastUpdated).toBeGreaterThan(before)
    // Announced, so that it is relayed, but as a renewal: nothing changed.
    expect(updates).toEqual([[7], [7]])
    expect(changes).toEqual([[7]])
    expect(host.awareness.getStates().get(7)).toEqual(stamped)
    // A changed state goes through the whole gate again.
    gate.receive(alice, frame(7, 3, { name: "Alice", typing: true }))
    expect(host.awareness.getStates().get(7)).toEqual({
      name: "Alice",
      typing: true,
      [PRESENCE_STAMP]: "alice",
    })
    expect(changes).toEqual([[7], [7]])
    host.destroy()
  })

  it("does not renew from an old clock, nor another user's entry, nor a state the awareness refused", () => {
    const { host, gate, changes } = setUp()
    const alice = connectionOf(host, "alice")
    const mallory = connectionOf(host, "mallory")
    gate.receive(alice, frame(7, 5, { name: "Alice" }))
    // An older clock renews nothing.
    gate.receive(alice, frame(7, 4, { name: "Alice" }))
    expect(host.awareness.meta.get(7)!.clock).toBe(5)
    // The same bytes from another user are a foreign entry, dropped.
    gate.receive(mallory, frame(7, 6, { name: "Alice" }))
    expect(host.awareness.meta.get(7)!.clock).toBe(5)
    // A new state at the same clock is refused by the awareness; repeating it later is no renewal
    // of the refused state but an update that sets it.
    gate.receive(alice, frame(7, 5, { name: "Alicia" }))
    expect(host.awareness.getStates().get(7)).toEqual({ name: "Alice", [PRESENCE_STAMP]: "alice" })
    gate.receive(alice, frame(7, 6, { name: "Alicia" }))
    expect(host.awareness.getStates().get(7)).toEqual({ name: "Alicia", [PRESENCE_STAMP]: "alice" })
    expect(changes).toEqual([[7], [7]])
    host.destroy()
  })

  it("drops echoes of what it holds before reading them: no drop counted, no budget spent, a removal at the same clock still checked", () => {
    const { host, gate, changes, dropped } = setUp({
      ...DEFAULT_AWARENESS_LIMITS,
      awarenessFramesPerSecond: 0.001,
      awarenessBurst: 2,
    })
    const alice = connectionOf(host, "alice")
    const bob = connectionOf(host, "bob")
    gate.receive(alice, frame(7, 3, { name: "Alice" }))
    gate.receive(bob, frame(8, 1, { name: "Bob" }))
    // Bob echoes alice's entry as he got it, and his own: nothing is newer, nothing is counted.
    const echo = encodeAwarenessEntries([
      { clientId: 7, clock: 3, state: new TextEncoder().encode(JSON.stringify({ name: "Alice" })) },
      { clientId: 8, clock: 1, state: new TextEncoder().encode(JSON.stringify({ name: "Bob" })) },
    ])
    for (let i = 0; i < 5; i++) gate.receive(bob, echo)
    expect(dropped).toEqual([])
    // Bob's budget (a burst of 2, hardly refilled) was not spent by the echoes: his change applies at once.
    gate.receive(bob, frame(8, 2, { name: "Robert" }))
    expect(host.awareness.getStates().get(8)).toMatchObject({ name: "Robert" })
    // A removal of alice's entry at its own clock would apply: it is read, and dropped as foreign.
    gate.receive(bob, frame(7, 3, null))
    expect(dropped).toEqual(["foreign 1"])
    expect(host.awareness.getStates().has(7)).toBe(true)
    expect(changes).toEqual([[7], [8], [8]])
    host.destroy()
  })
})
