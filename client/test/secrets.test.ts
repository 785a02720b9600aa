import { ErrorCode, MessageType, parseConversationId, TOKEN_PARAM } from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterAll, afterEach, beforeAll, expect, it, vi } from "vitest"
import WebSocket, { WebSocketServer } from "ws"
import * as authProtocol from "y-protocols/auth"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { createChatClient } from "../src/index.js"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  type RelayProcess,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(() => relay.stop())
afterEach(async () => {
  vi.restoreAllMocks()
  await destroyClients()
})

/** Everything written to the console from now on, one string per call. */
function captureConsole(): string[] {
  const logged: string[] = []
  for (const level of ["log", "info", "warn", "error", "debug"] as const)
    vi.spyOn(console, level).mockImplementation((...args: unknown[]) => {
      logged.push(args.map(String).join(" "))
    })
  return logged
}

/** How many of `tokens` appear in `logged`: counted, not compared, so that a failure does not print one. */
const leaked = (logged: readonly string[], tokens: readonly string[]) =>
  tokens.filter((token) => logged.some((line) => line.includes(token))).length

it("logs no token when the relay turns a removed participant away, in the SDK or a stock client", async () => {
  const tokens: string[] = []
  const token = async () => {
    const minted = await devToken(relay, "secret-bob")
    tokens.push(minted)
    return minted
  }
  const alice = await connectClient(relay, "secret-alice")
  const chat = await alice.createConversation({ participants: ["secret-bob"], title: "soon without bob" })
  const bob = await connectClient(relay, "secret-bob", { token })
  // Opened once the relay has the conversation (it is in Bob's inbox then), not before.
  await eventually(() => expect(bob.inbox.items.map((item) => item.conversationId)).toContain(chat.id))
  const bobChat = await bob.conversation(chat.id).ready()
  const doc = new Y.Doc()
  const stock = new WebsocketProvider(relay.url, chat.id, doc, {
    WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
    params: { [TOKEN_PARAM]: await token() },
    disableBc: true,
  })
  try {
    await eventually(() => expect(stock.synced).toBe(true))
    const logged = captureConsole()
    const closed = new Promise<number>((resolve) => stock.once("closed", ({ code }) => resolve(code)))
    chat.removeParticipants(["secret-bob"])
    await eventually(() =>
      expect(bobChat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN }),
    )
    expect(await closed).toBe(4403)
    expect(leaked(logged, tokens)).toBe(0)
  } finally {
    stock.destroy()
    doc.destroy()
  }
})

it("logs no token when a server answers with a y-protocols permission-denied message", async () => {
  // What older relays (and other y-websocket servers) send before closing.
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" })
  await new Promise((resolve) => server.once("listening", resolve))
  server.on("connection", (socket) => {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.auth)
    authProtocol.writePermissionDenied(encoder, "go away")
    socket.send(encoding.toUint8Array(encoder))
    setTimeout(() => socket.close(4403, "Forbidden"), 50)
  })
  const secret = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtY2Fyb2wifQ.not-a-real-signature"
  const logged = captureConsole()
  try {
    const client = await createChatClient({
      url: `ws://127.0.0.1:${(server.address() as { port: number }).port}`,
      user: "secret-carol",
      token: secret,
      storage: "memory",
      WebSocket,
    })
    try {
      const chat = client.conversation(parseConversationId("g~permission-denied"))
      await expect(chat.ready()).rejects.toMatchObject({ code: ErrorCode.FORBIDDEN })
      expect(leaked(logged, [secret])).toBe(0)
    } finally {
      await client.destroy()
    }
  } finally {
    await new Promise((resolve) => server.close(resolve))
  }
})
