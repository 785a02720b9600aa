// @vitest-environment happy-dom
import { type ChatClient, type ChatMessage, createChatClient } from "@parley/client"
import { act, cleanup, render, screen } from "@testing-library/react"
import { afterEach, describe, expect, it } from "vitest"
import WebSocket from "ws"
import { ParleyProvider, useAttachmentUrl, useMessages } from "../src/index.js"

const clients: ChatClient[] = []
afterEach(async () => {
  cleanup()
  await Promise.all(clients.splice(0).map((c) => c.destroy()))
})

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

function Row({ message }: { message: ChatMessage }) {
  const upload = message.upload
  return (
    <li data-status={message.status}>
      {message.body}
      {upload && ` [${upload.phase} ${upload.loaded}/${upload.total}]`}
      {upload?.files.map((file) => (
        <img key={file.name} alt={file.name} src={file.url} />
      ))}
    </li>
  )
}

describe("@parley/react attachments", () => {
  it("lists a message waiting for its files with their previews, and drops it when discarded", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob"] })
    chat.send("hello")
    function Messages() {
      const { messages } = useMessages(chat)
      return (
        <ul>
          {messages.map((m) => (
            <Row key={m.id} message={m} />
          ))}
        </ul>
      )
    }
    render(
      <ParleyProvider client={client}>
        <Messages />
      </ParleyProvider>,
    )
    let sent: ChatMessage | undefined
    act(() => {
      sent = chat.send({
        body: "a photo",
        files: [new File([new Uint8Array(10)], "cat.png", { type: "image/png" })],
      })
    })
    expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual([
      "hello",
      "a photo [queued 0/10]",
    ])
    expect(screen.getByRole("img", { name: "cat.png" }).getAttribute("src")).toMatch(/^blob:/)
    act(() => chat.discard(sent!.id))
    expect(screen.getAllByRole("listitem").map((li) => li.textContent)).toEqual(["hello"])
  })

  it("gives an attachment hosted elsewhere its own URL at once, and none for an object reference", async () => {
    const client = await offlineClient("alice")
    function Link() {
      const external = useAttachmentUrl({ url: "https://cdn.example/a.png", name: "a.png" })
      const object = useAttachmentUrl({ kind: "object", objectType: "order", objectId: "42" })
      return (
        <p>
          {external.url} | {object.url ?? object.error?.code}
        </p>
      )
    }
    render(
      <ParleyProvider client={client}>
        <Link />
      </ParleyProvider>,
    )
    await screen.findByText("https://cdn.example/a.png | INVALID_ARGUMENT")
  })
})
