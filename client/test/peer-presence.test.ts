import { DEFAULT_UPDATE_PART_LIMITS, encodeAwareness } from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import { Awareness, encodeAwarenessUpdate, outdatedTimeout } from "y-protocols/awareness"
import * as Y from "yjs"
import type { DocumentSocket } from "../src/provider/document-socket.js"
import { SyncSession } from "../src/provider/sync-session.js"

afterEach(() => {
  vi.useRealTimers()
})

/** A socket the test drives: it opens, delivers frames and closes when told. */
function fakeSocket() {
  const socket: DocumentSocket & { deliver(frame: Uint8Array): void } = {
    readyState: 1,
    onopen: null,
    onmessage: null,
    onclose: null,
    onerror: null,
    send: () => {},
    close: () => {},
    deliver(frame) {
      const data = frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.byteLength)
      socket.onmessage?.({ data } as MessageEvent)
    },
  }
  return socket
}

describe("the others' presence entries", () => {
  it("are kept fresh while the socket is open, however long a peer does not renew (a large room's relay passes no renewals on), and leave with the socket", () => {
    const doc = new Y.Doc()
    // y-protocols' own 3-second check reads lib0's clock, which fake timers do not move: it runs on real
    // timers (and does not fire during the test); the session's runs on fake ones.
    const awareness = new Awareness(doc)
    vi.useFakeTimers()
    const socket = fakeSocket()
    const handlers = {
      opened: () => {},
      relayState: () => {},
      synced: () => {},
      parley: () => {},
      diverged: () => {},
      closed: () => {},
    }
    const session = new SyncSession(socket, doc, awareness, () => DEFAULT_UPDATE_PART_LIMITS, handlers)
    socket.onopen?.({})
    // A peer's state, as the relay forwards it once (its renewals are not forwarded in a large room).
    const peer = new Awareness(new Y.Doc())
    peer.setLocalState({ user: "bob", active: 1 })
    socket.deliver(encodeAwareness(encodeAwarenessUpdate(peer, [peer.clientID])))
    peer.destroy()
    expect(awareness.getStates().has(peer.clientID)).toBe(true)
    // Long since renewed, by y-protocols' measure, which would drop it at its next check...
    const outdated = (id: number) => outdatedTimeout <= Date.now() - awareness.meta.get(id)!.lastUpdated
    awareness.meta.get(peer.clientID)!.lastUpdated = Date.now() - 2 * outdatedTimeout
    expect(outdated(peer.clientID)).toBe(true)
    // ...but the relay still holds the peer's connection: the session keeps the entry (the relay's
    // keepalive keeps the socket heard from).
    vi.advanceTimersByTime(3_000)
    socket.deliver(new Uint8Array([3]))
    expect(outdated(peer.clientID)).toBe(false)
    // The socket closes: whoever was seen over it is no longer known to be there.
    socket.onclose?.({ code: 1006 } as CloseEvent)
    expect(awareness.getStates().has(peer.clientID)).toBe(false)
    session.close()
    awareness.destroy()
  })
})
