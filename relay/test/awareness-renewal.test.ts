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
function setUp() {
  const host = new DocumentHost("g~renewals", parseDocumentName("g~renewals"))
  const bindings = new ClientBindings([])
  const gate = new AwarenessGate({
    host,
    owners: {
      owner: (clientId) => bindings.get(clientId),
      claim: async (clientId, key) => bindings.bind([[clientId, key]]),
    },
    limits: DEFAULT_AWARENESS_LIMITS,
    dropped: () => {},
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
  return { host, gate, changes, updates }
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
})
