import { mkdtempSync, rmSync } from "node:fs"
import { Socket } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  encodeChannelFrame,
  encodeChannelOpen,
  encodeSyncStep1,
  inboxDocumentName,
  listInbox,
  listMessages,
  MessageType,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  readFrame,
  readMuxFrame,
  sendMessage,
  TOKEN_PARAM,
  type UserId,
} from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import * as Y from "yjs"
import { type RunningRelay, startRelay } from "../src/index.js"
import { TestClient } from "./helpers/clients.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const id = "g~onewrite" as ConversationId

let relay: RunningRelay
let dataDir: string
beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "parley-mux-one-write-"))
  relay = await startRelay({ port: 0, warmUp: false, dataDir, log: "silent", dev: true })
  await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
    createConversation(doc, alice, { kind: "group", id, participants: [bob], title: "Two" }),
  )
})
afterAll(async () => {
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
})

/** Bob's multiplexed socket: channel 0 his inbox, channel 1 the conversation; each channel's replica. */
class BobsSocket {
  readonly ws: WebSocket
  readonly docs = [new Y.Doc(), new Y.Doc()] as const
  private readonly waiters = new Set<() => void>()

  constructor(token: string) {
    const params = new URLSearchParams({ [MUX_PARAM]: MUX_PROTOCOL_VERSION, [TOKEN_PARAM]: token })
    this.ws = new WebSocket(`${relay.url}/?${params}`)
    this.ws.on("message", (data: Buffer) => {
      const bytes = new Uint8Array(data)
      if (bytes[0] === MessageType.awareness) return
      const mux = readMuxFrame(bytes)
      if (mux.type !== "channel") return
      const frame = readFrame(mux.frame)
      if (frame.type === "sync" && frame.message.type !== "syncStep1")
        Y.applyUpdate(this.docs[mux.channel as 0 | 1], frame.message.update)
      for (const waiter of [...this.waiters]) waiter()
    })
  }

  async open(): Promise<void> {
    await new Promise((resolve) => this.ws.once("open", resolve))
    const empty = encodeSyncStep1(Y.encodeStateVector(new Y.Doc()))
    this.ws.send(encodeChannelOpen(0, inboxDocumentName(bob), ""))
    this.ws.send(encodeChannelFrame(0, empty))
    this.ws.send(encodeChannelOpen(1, id, ""))
    this.ws.send(encodeChannelFrame(1, empty))
  }

  until(check: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      const test = () => {
        if (!check()) return
        this.waiters.delete(test)
        resolve()
      }
      this.waiters.add(test)
      test()
    })
  }

  /** Both channels show `body`: the conversation has the message, the inbox its preview. */
  shows(body: string): boolean {
    return (
      listMessages(this.docs[1], { last: 5 }).some((m) => m.body === body) &&
      listInbox(this.docs[0]).some((entry) => entry.conversationId === id && entry.lastMessage?.text === body)
    )
  }
}

/**
 * Counts the relay's writes to the socket whose far end is `port` (the
 * client's own port) while `run` goes on: each `_write` or `_writev` of that
 * net.Socket is one write to the kernel.
 */
async function writesTo(port: number, run: () => Promise<void>): Promise<number> {
  const proto = Socket.prototype as unknown as Record<"_write" | "_writev", (...args: unknown[]) => unknown>
  const write = proto._write
  const writev = proto._writev
  let count = 0
  proto._write = function (this: Socket, ...args: unknown[]) {
    if (this.remotePort === port) count++
    return write.apply(this, args)
  }
  proto._writev = function (this: Socket, ...args: unknown[]) {
    if (this.remotePort === port) count++
    return writev.apply(this, args)
  }
  try {
    await run()
  } finally {
    proto._write = write
    proto._writev = writev
  }
  return count
}

describe("a member with the conversation and the inbox on one multiplexed socket", () => {
  it("is sent a message's update and its inbox entry in one write", async () => {
    const socket = new BobsSocket(await relay.auth.mintDev(bob, {}))
    await socket.open()
    await socket.until(() => listInbox(socket.docs[0]).some((entry) => entry.conversationId === id))
    await relay.hooks?.idle()
    const port = (socket.ws as unknown as { _socket: Socket })._socket.localPort!

    // A server-side write (hooks, the HTTP API, bots).
    const fromServer = await writesTo(port, async () => {
      await relay.core.write(id, { kind: "user", user: alice }, (doc) =>
        sendMessage(doc, alice, { body: "from the server" }),
      )
      await socket.until(() => socket.shows("from the server"))
    })
    expect(fromServer).toBe(1)

    // A client's update (a device's message), through the batched path.
    const writer = new TestClient(relay.url, id, await relay.auth.mintDev(alice, {}))
    await writer.opened
    await writer.synced()
    const fromClient = await writesTo(port, async () => {
      sendMessage(writer.doc, alice, { body: "from a device" })
      await socket.until(() => socket.shows("from a device"))
    })
    expect(fromClient).toBe(1)
    writer.close()
    socket.ws.close()
  })
})
