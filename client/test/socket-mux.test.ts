import {
  DEFAULT_UPDATE_PART_LIMITS,
  encodeChannelClose,
  encodeChannelFrame,
  encodeKeepalive,
  encodeSyncStep1,
  MessageType,
  ParleyMessage,
  readMuxFrame,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { Awareness } from "y-protocols/awareness"
import * as Y from "yjs"
import { SyncSession } from "../src/provider/sync-session.js"
import { SocketMux } from "../src/socket-mux.js"

/** A hand-driven stand-in for the browser's WebSocket: records what is sent, opens and closes on demand. */
class FakeSocket {
  static made: FakeSocket[] = []
  binaryType = ""
  readyState = 0
  sent: Uint8Array[] = []
  onopen: ((event: unknown) => void) | null = null
  onmessage: ((event: { data: unknown }) => void) | null = null
  onclose: ((event: { code: number; reason: string }) => void) | null = null
  onerror: ((event: unknown) => void) | null = null
  constructor(readonly url: string) {
    FakeSocket.made.push(this)
  }
  send(data: Uint8Array) {
    this.sent.push(data)
  }
  close() {
    this.readyState = 3
  }
  open() {
    this.readyState = 1
    this.onopen?.({})
  }
  deliver(bytes: Uint8Array) {
    this.onmessage?.({ data: bytes.slice().buffer })
  }
  drop(code: number) {
    this.readyState = 3
    this.onclose?.({ code, reason: "" })
  }
}

type Channel = {
  readyState: number
  onopen: (() => void) | null
  onmessage: ((event: { data: ArrayBuffer }) => void) | null
  onclose: ((event: { code: number }) => void) | null
  send(data: Uint8Array): void
  close(): void
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0))

function setup() {
  FakeSocket.made = []
  const mux = new SocketMux("ws://relay/", FakeSocket as never)
  const channel = (name: string, token: string) => {
    const ch = mux.open(name, token) as unknown as Channel
    const events = { opened: 0, messages: [] as Uint8Array[], closes: [] as number[] }
    ch.onopen = () => events.opened++
    ch.onmessage = (event) => events.messages.push(new Uint8Array(event.data))
    ch.onclose = (event) => events.closes.push(event.code)
    return { ch, events }
  }
  return { mux, channel }
}

describe("SocketMux", () => {
  it("opens one socket for many channels, each with an open frame, the socket's token not repeated", async () => {
    const { mux, channel } = setup()
    const inbox = channel("inbox~amy", "t1")
    const chat = channel("g~one", "t2")
    expect(FakeSocket.made).toHaveLength(1)
    const socket = FakeSocket.made[0]!
    expect(socket.url).toBe("ws://relay/?mux=1&token=t1")
    socket.open()
    expect([inbox.events.opened, chat.events.opened]).toEqual([1, 1])
    expect(socket.sent.map((f) => readMuxFrame(f))).toEqual([
      { type: "open", channel: 0, name: "inbox~amy", token: "" },
      { type: "open", channel: 1, name: "g~one", token: "t2" },
    ])
    const step1 = encodeSyncStep1(Uint8Array.of(0))
    chat.ch.send(step1)
    expect(readMuxFrame(socket.sent.at(-1)!)).toEqual({ type: "channel", channel: 1, frame: step1 })
    // A channel opened later on the open socket opens with a frame, no new socket.
    const later = channel("g~two", "t1")
    await tick()
    expect(later.events.opened).toBe(1)
    expect(FakeSocket.made).toHaveLength(1)
    expect(mux.channelCount).toBe(3)
  })

  it("routes frames to their channel, the bare keepalive to every channel, and a channel close to that channel only", async () => {
    const { channel } = setup()
    const a = channel("inbox~amy", "t")
    const b = channel("g~one", "t")
    const socket = FakeSocket.made[0]!
    socket.open()
    const step1 = encodeSyncStep1(Uint8Array.of(0))
    socket.deliver(encodeChannelFrame(1, step1))
    expect(a.events.messages).toEqual([])
    expect(b.events.messages).toEqual([step1])
    socket.deliver(encodeKeepalive())
    expect(a.events.messages).toEqual([encodeKeepalive()])
    expect(b.events.messages).toHaveLength(2)
    socket.deliver(encodeChannelClose(1, 4403, "Forbidden"))
    await tick()
    expect(b.events.closes).toEqual([4403])
    expect(a.events.closes).toEqual([])
    // Late frames for the closed channel are dropped.
    socket.deliver(encodeChannelFrame(1, step1))
    expect(b.events.messages).toHaveLength(2)
  })

  it("closes every channel with the socket's code when it drops (1006 for a clean close under open channels), and closes the socket with the last channel", async () => {
    const { mux, channel } = setup()
    const a = channel("inbox~amy", "t")
    const b = channel("g~one", "t")
    FakeSocket.made[0]!.open()
    FakeSocket.made[0]!.drop(1000)
    await tick()
    expect([a.events.closes, b.events.closes]).toEqual([[1006], [1006]])
    expect(mux.connected).toBe(false)
    const c = channel("g~one", "t")
    expect(FakeSocket.made).toHaveLength(2)
    const socket = FakeSocket.made[1]!
    socket.open()
    c.ch.close()
    expect(readMuxFrame(socket.sent.at(-1)!)).toMatchObject({ type: "close", channel: 2, code: 1000 })
    await tick()
    expect(c.events.closes).toEqual([1000])
    expect(socket.readyState).toBe(3)
    expect(mux.connected).toBe(false)
  })

  it("holds a document's live updates until it answered the relay's sync step 1, so none arrives before the state it builds on", async () => {
    const { mux } = setup()
    const doc = new Y.Doc()
    const awareness = new Awareness(doc)
    awareness.setLocalState(null)
    const session = new SyncSession(
      mux.open("g~one", "t"),
      doc,
      awareness,
      () => DEFAULT_UPDATE_PART_LIMITS,
      {
        opened: () => {},
        relayState: () => {},
        synced: () => {},
        parley: () => {},
        diverged: () => {},
        closed: () => {},
      },
    )
    const socket = FakeSocket.made[0]!
    socket.open()
    doc.getMap("m").set("written", "while opening")
    const kinds = () =>
      socket.sent.slice(1).map((f) => [...(readMuxFrame(f) as { frame: Uint8Array }).frame.subarray(0, 2)])
    // Only the document's own step 1 went out; the live update waits.
    expect(kinds()).toEqual([[0, 0]])
    socket.deliver(encodeChannelFrame(0, encodeSyncStep1(Uint8Array.of(0))))
    // Its view (what the replica had: Parley subtype 10), its step 2, then the held update.
    expect(kinds()).toEqual([
      [0, 0],
      [MessageType.parley, ParleyMessage.view],
      [0, 1],
      [0, 2],
    ])
    // After the handshake, updates go at once (the first of a turn; the rest of the turn's at its end).
    await Promise.resolve()
    doc.getMap("m").set("later", true)
    expect(kinds()).toHaveLength(5)
    session.close()
    awareness.destroy()
    doc.destroy()
  })
})
