import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

/** A `ws` WebSocket class that records the URL of every socket made with it. */
function recordingWebSocket() {
  const urls: string[] = []
  class Recording extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols)
      urls.push(url)
    }
  }
  return { Recording, urls }
}

describe("the SDK's provider on sockets of their own (multiplex: false)", () => {
  it("opens one socket per document on the per-document URL, and two users chat over them", async () => {
    const amy = recordingWebSocket()
    const ben = recordingWebSocket()
    const a = await connectClient(relay, "own-amy", { multiplex: false, WebSocket: amy.Recording as never })
    const b = await connectClient(relay, "own-ben", { multiplex: false, WebSocket: ben.Recording as never })
    const chat = await a.createConversation({ participants: ["own-ben"], title: "own sockets" })
    const hello = chat.send("hello over a socket of its own")
    await eventually(() => expect(chat.status(hello.id)).toBe("sent"))
    const other = await b.conversation(chat.id).ready()
    await eventually(() => expect(other.messages().map((m) => m.body)).toEqual([hello.body]))
    other.send("and back")
    await eventually(() => expect(chat.messages().map((m) => m.body)).toEqual([hello.body, "and back"]))
    // One socket for the inbox and one for the conversation, each on its document's own URL.
    const paths = amy.urls.map((url) => new URL(url))
    expect([...new Set(paths.map((url) => decodeURIComponent(url.pathname)))].sort()).toEqual(
      [`/${chat.id}`, "/inbox~own-amy"].sort(),
    )
    expect(
      paths.every((url) => url.searchParams.get("parley") === "1" && url.searchParams.has("token")),
    ).toBe(true)
    expect(paths.some((url) => url.searchParams.has("mux"))).toBe(false)
  })

  it("sends what was written offline once back online, each message once", async () => {
    const a = await connectClient(relay, "own-cai", { multiplex: false })
    const b = await connectClient(relay, "own-dan", { multiplex: false })
    const chat = await a.createConversation({ participants: ["own-dan"] })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    a.disconnect()
    const sent = ["one", "two", "three"].map((body) => chat.send(body))
    expect(sent.map((m) => chat.status(m.id))).toEqual(["pending", "pending", "pending"])
    a.connect()
    // Written while the new socket opens: it travels with the handshake or right after it.
    const late = chat.send("four")
    await eventually(() =>
      expect([...sent, late].map((m) => chat.status(m.id))).toEqual(Array(4).fill("sent")),
    )
    const other = await b.conversation(chat.id).ready()
    await eventually(() =>
      expect(other.messages().map((m) => [m.body, m.seq])).toEqual([
        ["one", 1],
        ["two", 2],
        ["three", 3],
        ["four", 4],
      ]),
    )
  })
})
