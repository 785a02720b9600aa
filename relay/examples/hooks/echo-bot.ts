/**
 * An auto-responder: answers any message containing "/echo" with the rest of
 * the text, as the user `echo-bot`. Add `echo-bot` to a conversation to enable
 * it there. The bot's own messages fire events too; `isOwnWrite` keeps it from
 * answering itself, and a reply id derived from the original message id makes
 * a redelivered event (at-least-once) send the reply only once.
 */
import { defineHooks, type MessageId, type UserId } from "@parley/relay/hooks"

const BOT = "echo-bot" as UserId

export default defineHooks({
  async onMessageSent(event, { conversations, isOwnWrite, log }) {
    const { message } = event.subject
    if (isOwnWrite(event) || message.author === BOT) return
    const at = message.body.indexOf("/echo")
    if (at < 0) return
    if (!event.conversation.participants.some((p) => p.user === BOT)) {
      log.debug("echo-bot is not a participant here")
      return
    }
    const text = message.body.slice(at + "/echo".length).trim() || "(nothing to echo)"
    await conversations.send(event.conversation.id, BOT, {
      id: `echo_${message.id}`.slice(0, 64) as MessageId,
      body: text,
      replyTo: message.id,
    })
  },
})
