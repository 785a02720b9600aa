// A browser app on the SDK, built by Vite: a typed use of the API, Yjs included (one copy).
import { type ChatMessage, createChatClient, ErrorCode, isRetryable, ParleyError } from "@parley/client"
import * as Y from "yjs"
import { mountChat } from "./chat.js"

const list = document.querySelector<HTMLUListElement>("#messages")!

function render(messages: readonly ChatMessage[]): void {
  list.replaceChildren(
    ...messages.map((message) => {
      const item = document.createElement("li")
      item.textContent = `${message.author}: ${message.body} (${message.status})`
      return item
    }),
  )
}

createChatClient({ url: "ws://127.0.0.1:1234", user: "web-user", token: "a JWT from your backend" })
  .then(async (client) => {
    const chat = await client.directConversation("bob")
    chat.watchMessages({ last: 50 }, render)
    chat.send("hello from the browser")
    const doc: Y.Doc = chat.doc
    console.log(doc instanceof Y.Doc)
    mountChat(client, chat.id, document.querySelector("#react")!)
  })
  .catch((error: unknown) => {
    if (error instanceof ParleyError && error.code === ErrorCode.UNAUTHORIZED) console.warn("sign in again")
    // The SDK's own export (an app that installed only @parley/client has no @parley/shared to import it from).
    else if (error instanceof ParleyError && isRetryable(error.code)) console.warn("try again later")
  })
