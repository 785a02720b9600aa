// The same chat through the React bindings: a typed use of the provider and hooks.
import type { ChatClient, ChatMessage } from "@parley/client"
import { ParleyProvider, useConnectionStatus, useConversation, useInbox, useMessages } from "@parley/react"
import { memo } from "react"
import { createRoot } from "react-dom/client"

const Row = memo(function Row({ message }: { message: ChatMessage }) {
  return (
    <li>
      {message.author}: {message.body} ({message.status})
    </li>
  )
})

function Chat({ id }: { id: string }) {
  const status = useConnectionStatus()
  const { totalUnread } = useInbox()
  const { conversation, info } = useConversation(id)
  const { messages, hasOlder, loadOlder } = useMessages(conversation, 20)
  return (
    <section>
      <h1>
        {info?.title} ({status}, {totalUnread} unread)
      </h1>
      {hasOlder && (
        <button type="button" onClick={() => void loadOlder()}>
          Older
        </button>
      )}
      <ul>
        {messages.map((message) => (
          <Row key={message.id} message={message} />
        ))}
      </ul>
      <button type="button" onClick={() => conversation?.send("hello from React")}>
        Say hello
      </button>
    </section>
  )
}

export function mountChat(client: ChatClient, id: string, element: Element): void {
  createRoot(element).render(
    <ParleyProvider client={client}>
      <Chat id={id} />
    </ParleyProvider>,
  )
}
