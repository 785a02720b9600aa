import {
  createConversation,
  DEFAULT_UPDATE_PART_LIMITS,
  encodeSyncStep1,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import type { DocumentSocket } from "../src/provider/document-socket.js"
import { SyncSession } from "../src/provider/sync-session.js"

const alice = "alice" as UserId

describe("a document's sync session", () => {
  it("sends the updates written in one turn in two frames, the first at once (a bot's loop of a hundred messages sent a hundred)", async () => {
    const sent: Uint8Array[] = []
    const socket: DocumentSocket = {
      readyState: 1,
      onopen: null,
      onmessage: null,
      onclose: null,
      onerror: null,
      send: (frame: Uint8Array) => void sent.push(frame),
      close: () => {},
    }
    const doc = new Y.Doc()
    createConversation(doc, alice, { kind: "group", id: "g~loop" as never, participants: [] })
    const awareness = new Awareness(doc)
    const session = new SyncSession(socket, doc, awareness, () => DEFAULT_UPDATE_PART_LIMITS, {
      opened: () => {},
      relayState: () => {},
      synced: () => {},
      parley: () => {},
      diverged: () => {},
      closed: () => {},
    })
    socket.onopen?.({} as Event)
    // The relay's step 1, answered: live updates go out from here on.
    const step1 = encodeSyncStep1(Y.encodeStateVector(new Y.Doc()))
    socket.onmessage?.({
      data: step1.buffer.slice(step1.byteOffset, step1.byteOffset + step1.byteLength),
    } as never)
    const before = sent.length
    for (let i = 0; i < 100; i++) sendMessage(doc, alice, { body: `message ${i}` })
    await Promise.resolve()
    const frames = sent.slice(before)
    // The first at once, the other 99 together at the end of the turn.
    expect(frames).toHaveLength(2)
    expect(session.sentAll).toBe(true)
    session.close()
    awareness.destroy()
  })
})
