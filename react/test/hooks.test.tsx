// @vitest-environment happy-dom
import { type ChatClient, type ChatMessage, type Conversation, createChatClient } from "@parley/client"
import { assignSequenceNumbers, nextFromDocument, sendMessage, type UserId } from "@parley/shared"
import { act, cleanup, render, screen } from "@testing-library/react"
import { memo } from "react"
import { afterEach, describe, expect, it } from "vitest"
import WebSocket from "ws"
import {
  ParleyProvider,
  useConnectionStatus,
  useConversation,
  useInbox,
  useMessageStatus,
  useMessages,
  usePinned,
} from "../src/index.js"

const clients: ChatClient[] = []
afterEach(async () => {
  cleanup()
  await Promise.all(clients.splice(0).map((c) => c.destroy()))
})

/** A client with no relay: everything it writes stays pending on this device. */
async function offlineClient(user: string): Promise<ChatClient> {
  const client = await createChatClient({
    url: "ws://127.0.0.1:9",
    token: () => {
      throw new Error("offline: no token")
    },
    user,
    storage: "memory",
    connect: false,
    WebSocket: WebSocket as never,
  })
  clients.push(client)
  return client
}

describe("@parley/react hooks", () => {
  it("re-renders only the row of the message that changed, not its siblings nor unrelated components", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"], title: "plans" })
    const sent = ["one", "two", "three"].map((body) => chat.send(body))
    const renders = new Map<string, number>()
    const count = (name: string) => renders.set(name, (renders.get(name) ?? 0) + 1)

    const Row = memo(function Row({ message }: { message: ChatMessage }) {
      count(message.id)
      const reactions = Object.keys(message.reactions).join("")
      return (
        <li>
          {message.body}
          {reactions}
        </li>
      )
    })
    function Messages({ conversation }: { conversation: Conversation }) {
      count("list")
      const { messages } = useMessages(conversation)
      return (
        <ul>
          {messages.map((m) => (
            <Row key={m.id} message={m} />
          ))}
        </ul>
      )
    }
    function Status() {
      count("status")
      return <p>{useConnectionStatus()}</p>
    }
    function Title({ id }: { id: string }) {
      count("title")
      return <h1>{useConversation(id).info?.title}</h1>
    }

    render(
      <ParleyProvider client={client}>
        <Status />
        <Title id={chat.id} />
        <Messages conversation={chat} />
      </ParleyProvider>,
    )
    expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual(["one", "two", "three"])
    expect(screen.getByRole("heading").textContent).toBe("plans")
    renders.clear()

    act(() => chat.react(sent[1]!.id, "👍"))

    expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual(["one", "two👍", "three"])
    expect(Object.fromEntries(renders)).toEqual({ list: 1, [sent[1]!.id]: 1 })
  })

  it("shows a conversation id that is not one as unavailable with INVALID_ARGUMENT instead of throwing", async () => {
    const client = await offlineClient("alice")
    function Chat({ id }: { id: string }) {
      const { state, conversation } = useConversation(id)
      const reason = state.state === "unavailable" ? state.reason : ""
      return (
        <p data-testid="chat">
          {state.state} {reason} {conversation ? "open" : "none"}
        </p>
      )
    }
    const { rerender } = render(
      <ParleyProvider client={client}>
        <Chat id="c_…" />
      </ParleyProvider>,
    )
    expect(screen.getByTestId("chat").textContent).toBe("unavailable INVALID_ARGUMENT none")
    const chat = await client.createConversation({ id: "g~team", participants: ["bob"] })
    rerender(
      <ParleyProvider client={client}>
        <Chat id={chat.id} />
      </ParleyProvider>,
    )
    expect(screen.getByTestId("chat").textContent).toBe("ready  open")
  })

  it("shows a new message and an edit, keeping every other row as it was", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"] })
    chat.send("first")
    const seen: (readonly ChatMessage[])[] = []
    function Messages() {
      const { messages } = useMessages(chat)
      seen.push(messages)
      return <p>{messages.map((m) => m.body).join(",")}</p>
    }
    render(
      <ParleyProvider client={client}>
        <Messages />
      </ParleyProvider>,
    )
    let second: ChatMessage | undefined
    act(() => {
      second = chat.send("second")
    })
    expect(screen.getByText("first,second")).toBeTruthy()
    const before = seen.at(-1)!
    act(() => chat.edit(second!.id, "second, edited"))
    expect(screen.getByText("first,second, edited")).toBeTruthy()
    const after = seen.at(-1)!
    expect(after[0]).toBe(before[0])
    expect(after[1]).not.toBe(before[1])
  })

  it("pages older messages in with loadOlder and says when there are none left", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"] })
    for (let i = 1; i <= 5; i++) chat.send(`m${i}`)
    let loadOlder: () => Promise<void> = async () => {}
    function Messages() {
      const window = useMessages(chat, 2)
      loadOlder = window.loadOlder
      return (
        <p>
          {window.messages.map((m) => m.body).join(",")}
          {window.hasOlder ? " (more)" : ""}
        </p>
      )
    }
    render(
      <ParleyProvider client={client}>
        <Messages />
      </ParleyProvider>,
    )
    expect(screen.getByText("m4,m5 (more)")).toBeTruthy()
    await act(() => loadOlder())
    expect(screen.getByText("m2,m3,m4,m5 (more)")).toBeTruthy()
    await act(() => loadOlder())
    expect(screen.getByText("m1,m2,m3,m4,m5")).toBeTruthy()
  })

  it("shows the inbox with unread totals, a message's status, and throws outside a provider", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"], title: "plans" })
    const message = chat.send("hello")
    function Badge() {
      const inbox = useInbox()
      return (
        <p>
          {inbox.items.length} conversations, {inbox.totalUnread} unread
        </p>
      )
    }
    function Tick() {
      return <span>status: {useMessageStatus(chat, message.id)}</span>
    }
    render(
      <ParleyProvider client={client}>
        <Badge />
        <Tick />
      </ParleyProvider>,
    )
    expect(screen.getByText("status: pending")).toBeTruthy()
    expect(screen.getByText(/conversations, 0 unread/)).toBeTruthy()
    expect(() => render(<Badge />)).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }))
  })

  it("shows pinned messages until unpinned, and an emergency from someone else until it is read", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"], title: "ops" })
    const pin = chat.send("Runbook: wiki/ops", { priority: "sticky" })
    function Pins({ conversation }: { conversation: Conversation }) {
      const pinned = usePinned(conversation)
      const { unreadEmergency } = useConversation(conversation.id)
      return (
        <div>
          <p data-testid="pins">{pinned.map((m) => m.body).join("|") || "none"}</p>
          <p data-testid="sos">{unreadEmergency.length}</p>
        </div>
      )
    }
    render(
      <ParleyProvider client={client}>
        <Pins conversation={chat} />
      </ParleyProvider>,
    )
    expect(screen.getByTestId("pins").textContent).toBe("Runbook: wiki/ops")
    expect(screen.getByTestId("sos").textContent).toBe("0")

    // Bob's emergency, as it arrives from the relay (numbered), flags the conversation until read.
    await act(async () => {
      sendMessage(chat.doc, "bob" as UserId, { body: "Database down", priority: "emergency" })
      assignSequenceNumbers(chat.doc, nextFromDocument(chat.doc))
    })
    expect(screen.getByTestId("sos").textContent).toBe("1")
    await act(async () => {
      chat.markRead()
      chat.unpin(pin.id)
    })
    expect(screen.getByTestId("pins").textContent).toBe("none")
    expect(screen.getByTestId("sos").textContent).toBe("0")
  })
})
