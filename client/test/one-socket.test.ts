import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  // Room for one user's 200 conversations (the defaults hold a user to 128 open documents).
  relay = await startRelay({
    args: ["--dev", "--max-documents-per-user", "400", "--user-conversations-per-minute", "0"],
  })
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

/** `ws`, recording the URL of every real socket opened. */
function countingWebSocket() {
  const opened: string[] = []
  class Counting extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols)
      opened.push(String(url))
    }
  }
  return { opened, WebSocket: Counting }
}

describe("one socket per client", () => {
  it("carries the inbox and 200 open conversations on one socket, both for their creator and a member", async () => {
    const alicesSockets = countingWebSocket()
    const alice = await connectClient(relay, "mux-alice", { WebSocket: alicesSockets.WebSocket as never })
    const chats = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        alice.createConversation({ participants: ["mux-bob"], title: `chat ${i}` }),
      ),
    )
    await eventually(() => {
      expect(chats.filter((chat) => chat.connection.status === "online")).toHaveLength(200)
    }, 60_000)
    chats[199]!.send("the last one")
    await eventually(() => expect(alice.inbox.items.length).toBe(200), 30_000)
    expect(alicesSockets.opened).toHaveLength(1)

    const bobsSockets = countingWebSocket()
    const bob = await connectClient(relay, "mux-bob", { WebSocket: bobsSockets.WebSocket as never })
    // Bob opens them once the relay has stored them all: his inbox lists them (alice's lists hers at once).
    await eventually(() => expect(bob.inbox.items.length).toBe(200), 30_000)
    const seen = await Promise.all(chats.map((chat) => bob.conversation(chat.id).ready()))
    expect(seen.map((chat) => chat.info?.title)).toEqual(chats.map((_, i) => `chat ${i}`))
    await eventually(() =>
      expect(seen[199]!.messages({ last: 1 }).map((m) => m.body)).toEqual(["the last one"]),
    )
    expect(bobsSockets.opened).toHaveLength(1)
  }, 120_000)

  it("closes its socket when the client goes offline and opens one again when it comes back", async () => {
    const sockets = countingWebSocket()
    const alice = await connectClient(relay, "mux-carol", { WebSocket: sockets.WebSocket as never })
    const chat = await alice.createConversation({ participants: ["mux-dave"], title: "on and off" })
    await eventually(() => expect(alice.status).toBe("online"))
    alice.disconnect()
    expect(alice.status).toBe("offline")
    chat.send("written offline")
    alice.connect()
    await eventually(() => expect(alice.status).toBe("online"))
    const dave = await connectClient(relay, "mux-dave")
    const seen = await dave.conversation(chat.id).ready()
    await eventually(() => expect(seen.messages({ last: 1 }).map((m) => m.body)).toEqual(["written offline"]))
    expect(sockets.opened).toHaveLength(2)
  }, 60_000)
})
