import { EventEmitter } from "node:events"
import { createConversation, newConversationId, type UserId } from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { WebSocket } from "ws"
import { UnfinishedMessages } from "../src/unfinished-messages.js"
import { TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"
import { until } from "./helpers/until.js"

const mallory = "mallory" as UserId
const bob = "bob" as UserId
const FRAME = 64 * 1024

describe("messages sent in fragments and never finished", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess({ args: ["--max-frame-bytes", String(FRAME)] })
  })
  afterAll(() => stopRelayProcesses())

  it("are bounded per user: past 8 frames' worth the socket holding the most is closed, and others are served", async () => {
    const id = newConversationId()
    const owner = new TestClient(relay.url, id, await relay.token(mallory))
    await owner.synced()
    createConversation(owner.doc, mallory, { kind: "group", id, participants: [bob] })
    await owner.allSaved()
    const sockets: TestClient[] = []
    try {
      for (let i = 0; i < 12; i++) {
        const socket = new TestClient(relay.url, id, await relay.token(mallory))
        await socket.synced()
        sockets.push(socket)
      }
      // Each socket starts a message just under the frame limit, in fragments, and never sends its last:
      // before, the relay held all of it (1 MiB a socket at the default limit, 256 sockets a user).
      for (const socket of sockets)
        for (let sent = 0; sent + 4096 < FRAME - 1; sent += 4096)
          socket.ws.send(Buffer.alloc(4096, 7), { binary: true, fin: false })
      await until(
        () => sockets.filter((s) => s.closeEvent !== undefined).length,
        (closed) => closed >= 4,
      )
      const closed = sockets.filter((s) => s.closeEvent !== undefined)
      for (const socket of closed)
        expect(socket.closeEvent).toMatchObject({ code: 4429, reason: "unfinished-messages" })
      // Another user is served meanwhile.
      const other = new TestClient(relay.url, id, await relay.token(bob))
      await other.synced()
      expect(other.closeEvent).toBeUndefined()
      other.close()
    } finally {
      for (const socket of sockets) socket.close()
      owner.close()
    }
  })
})

describe("the per-user count of unfinished messages", () => {
  /** A stand-in for a `ws` socket over its raw connection: what the count listens to. */
  function fakeSocket() {
    const raw = new EventEmitter()
    const ws = Object.assign(new EventEmitter(), { _socket: raw }) as unknown as WebSocket & EventEmitter
    return { ws, read: (bytes: number) => raw.emit("data", Buffer.alloc(bytes)) }
  }

  it("closes the user's socket holding the most, not the one whose bytes went past the bound", () => {
    const count = new UnfinishedMessages(500)
    const closed: string[] = []
    const big = fakeSocket()
    const small = fakeSocket()
    const other = fakeSocket()
    count.watch(big.ws, "mallory", () => closed.push("big"))
    count.watch(small.ws, "mallory", () => closed.push("small"))
    count.watch(other.ws, "bob", () => closed.push("other"))
    big.read(400)
    other.read(450)
    small.read(90)
    expect(closed).toEqual([])
    // The small socket's next bytes tip mallory over: the big one goes.
    small.read(60)
    expect(closed).toEqual(["big"])
    // A whole message sets a socket's count back.
    small.ws.emit("message")
    small.read(400)
    expect(closed).toEqual(["big"])
  })
})
