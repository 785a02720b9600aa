// A hook module as an app's backend would write it, in TypeScript, in a project that has
// @parley/relay installed: answers "ping" with "pong" as the user "greeter".
import { defineHooks, type MessageId, type UserId } from "@parley/relay/hooks"

const GREETER = "greeter" as UserId

export default defineHooks({
  async onMessageSent(event, { conversations, isOwnWrite }) {
    const { message } = event.subject
    if (isOwnWrite(event) || message.author === GREETER || message.body !== "ping") return
    await conversations.send(event.conversation.id, GREETER, {
      id: `pong_${message.id}`.slice(0, 64) as MessageId,
      body: "pong",
      replyTo: message.id,
    })
  },
})
