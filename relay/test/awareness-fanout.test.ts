import { readFrame } from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest"
import * as awarenessProtocol from "y-protocols/awareness"
import * as Y from "yjs"
import { AwarenessFanout, LARGE_ROOM_CONNECTIONS, RENEWAL_FORWARD_MS } from "../src/awareness-fanout.js"
import type { DocumentHost } from "../src/document-host.js"

/** A document's awareness and `members` connections that record the client ids of each frame they get. */
function room(members: number) {
  const awareness = new awarenessProtocol.Awareness(new Y.Doc())
  awareness.setLocalState(null)
  const frames: number[][] = []
  const connection = (record: boolean) => ({
    send(frame: Uint8Array) {
      if (!record) return
      const read = readFrame(frame)
      if (read.type !== "awareness") throw new Error("not an awareness frame")
      const remote = new awarenessProtocol.Awareness(new Y.Doc())
      remote.setLocalState(null)
      const ids: number[] = []
      remote.on("update", ({ added, updated, removed }: Record<string, number[]>) =>
        ids.push(...added!, ...updated!, ...removed!),
      )
      // Removals of unknown ids apply nothing: seed them so that they show.
      for (const id of [1, 2, 3]) remote.meta.set(id, { clock: 0, lastUpdated: 0 })
      for (const id of [1, 2, 3]) remote.states.set(id, {})
      awarenessProtocol.applyAwarenessUpdate(remote, read.update, "relay")
      frames.push([...ids].sort())
      remote.destroy()
    },
  })
  const connections = new Set([
    connection(true),
    ...Array.from({ length: members - 1 }, () => connection(false)),
  ])
  const host = { connections, awareness, destroyed: false } as unknown as DocumentHost
  const removedSent: number[][] = []
  const fanout = new AwarenessFanout(host, (removed) => removedSent.push([...removed]))
  /** Sets `id`'s state (a change) at `clock`. */
  const set = (id: number, clock: number, state: unknown) => {
    awareness.states.set(id, state as Record<string, unknown>)
    awareness.meta.set(id, { clock, lastUpdated: Date.now() })
  }
  return { awareness, fanout, frames, removedSent, set }
}

describe("a small room's presence fan-out", () => {
  beforeEach(() => {
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it("sends a change at once, and renewals together, within RENEWAL_FORWARD_MS", () => {
    const { fanout, frames, set } = room(10)
    set(1, 1, { name: "a" })
    fanout.updated([1], [], [])
    expect(frames).toEqual([[1]])
    // Two renewals a second apart: nothing yet, then one frame with both.
    set(1, 2, { name: "a" })
    fanout.updated([], [1], [])
    vi.advanceTimersByTime(1000)
    set(2, 5, { name: "b" })
    fanout.updated([], [2], [])
    vi.advanceTimersByTime(RENEWAL_FORWARD_MS - 1001)
    expect(frames).toEqual([[1]])
    vi.advanceTimersByTime(1)
    expect(frames).toEqual([[1], [1, 2]])
    // Nothing more is owed.
    vi.advanceTimersByTime(RENEWAL_FORWARD_MS * 2)
    expect(frames).toEqual([[1], [1, 2]])
  })

  it("sends the renewals waiting with the next change, and none of an entry removed meanwhile", () => {
    const { awareness, fanout, frames, removedSent, set } = room(10)
    set(1, 2, { name: "a" })
    set(2, 2, { name: "b" })
    fanout.updated([], [1, 2], [])
    // 2 leaves: its removal goes at once, with 1's renewal; nothing is left to send later.
    awareness.states.delete(2)
    awareness.meta.set(2, { clock: 3, lastUpdated: Date.now() })
    fanout.updated([2], [], [2])
    expect(frames).toEqual([[1, 2]])
    expect(removedSent).toEqual([[2]])
    vi.advanceTimersByTime(RENEWAL_FORWARD_MS)
    expect(frames).toEqual([[1, 2]])
    // A renewal, then its entry removed before it went: only the removal goes.
    set(3, 2, { name: "c" })
    fanout.updated([], [3], [])
    awareness.states.delete(3)
    fanout.updated([3], [], [3])
    vi.advanceTimersByTime(RENEWAL_FORWARD_MS)
    expect(frames).toEqual([[1, 2], [3]])
  })

  it("stops its timers when the document goes away", () => {
    const { fanout, frames, set } = room(10)
    set(1, 2, { name: "a" })
    fanout.updated([], [1], [])
    fanout.destroy()
    vi.advanceTimersByTime(RENEWAL_FORWARD_MS)
    expect(frames).toEqual([])
  })

  it("forwards no renewal in a large room", () => {
    const { fanout, frames, set } = room(LARGE_ROOM_CONNECTIONS + 1)
    set(1, 2, { name: "a" })
    fanout.updated([], [1], [])
    vi.advanceTimersByTime(RENEWAL_FORWARD_MS * 2)
    expect(frames).toEqual([])
  })
})

describe("renewals forwarded late", () => {
  beforeEach(() => {
    vi.useFakeTimers()
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  it("reach stock y-protocols peers well within the 30 s after which they drop an entry not renewed", () => {
    // y-protocols reads the time from a Date.now taken before the fake clock, so its own 3-second
    // checks are played here, on the fake clock: the client renews at the first check 15 s after its
    // last renewal; the peer drops an entry at the first check 30 s after it last heard of it.
    const relay = new awarenessProtocol.Awareness(new Y.Doc())
    relay.setLocalState(null)
    const peer = new awarenessProtocol.Awareness(new Y.Doc())
    peer.setLocalState(null)
    const client = new awarenessProtocol.Awareness(new Y.Doc())
    let peerHeard = Date.now()
    const toPeer = {
      send(frame: Uint8Array) {
        const read = readFrame(frame)
        if (read.type !== "awareness") return
        const before = peer.meta.get(client.clientID)?.clock ?? -1
        awarenessProtocol.applyAwarenessUpdate(peer, read.update, "relay")
        if ((peer.meta.get(client.clientID)?.clock ?? -1) > before) peerHeard = Date.now()
      },
    }
    const host = {
      connections: new Set([toPeer]),
      awareness: relay,
      destroyed: false,
    } as unknown as DocumentHost
    const fanout = new AwarenessFanout(host, () => {})
    // Wired as the core wires it: what changed goes at once, renewals through the fan-out's wait.
    const changedNow = new Set<number>()
    relay.on("change", ({ updated }: { updated: number[] }) => {
      for (const id of updated) changedNow.add(id)
    })
    relay.on("update", ({ added, updated, removed }: Record<string, number[]>) => {
      const changed = [...added!, ...updated!.filter((id) => changedNow.has(id))]
      fanout.updated(
        [...changed, ...removed!],
        updated!.filter((id) => !changedNow.has(id)),
        removed!,
      )
      changedNow.clear()
    })
    client.on("update", ({ added, updated, removed }: Record<string, number[]>) => {
      const update = awarenessProtocol.encodeAwarenessUpdate(client, [...added!, ...updated!, ...removed!])
      awarenessProtocol.applyAwarenessUpdate(relay, update, "client")
    })
    client.setLocalState({ name: "alice" })
    let renewedAt = Date.now()
    let renewals = 0
    let longestSilence = 0
    for (let second = 1; second <= 300; second++) {
      vi.advanceTimersByTime(1000)
      const now = Date.now()
      // The client's checks and the peer's, at phases of their own.
      if (second % 3 === 1 && now - renewedAt >= 15_000) {
        client.setLocalState(client.getLocalState())
        renewedAt = now
        renewals++
      }
      if (second % 3 === 2) {
        longestSilence = Math.max(longestSilence, now - peerHeard)
        expect(now - peerHeard).toBeLessThan(30_000)
      }
    }
    expect(renewals).toBeGreaterThanOrEqual(15)
    expect(peer.getStates().get(client.clientID)).toEqual({ name: "alice" })
    // A renewal 15–18 s after the one before, forwarded up to RENEWAL_FORWARD_MS late.
    expect(longestSilence).toBeLessThanOrEqual(18_000 + RENEWAL_FORWARD_MS)
    // Gone from the client: the removal reaches the peer at once.
    client.setLocalState(null)
    expect(peer.getStates().has(client.clientID)).toBe(false)
    for (const a of [relay, peer, client]) a.destroy()
    fanout.destroy()
  })
})
