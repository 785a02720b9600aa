/**
 * Push notifications in the spirit of Skygear's `after_message_sent`: one text
 * per recipient (never the author), with each recipient's unread count for the
 * app badge. Recipients who muted the conversation are skipped unless the
 * message is an emergency.
 *
 * Without PUSH_GATEWAY_URL the notifications are only logged; with it, each one
 * is POSTed there as JSON (your APNs / FCM sender). A failed POST throws, so the
 * relay retries the event; the event id is sent along for de-duplication.
 */
import { defineHooks } from "@parley/relay"

const gateway = process.env.PUSH_GATEWAY_URL

/** Users who muted the conversation: `metadata.muted` as a list of user ids (a convention of this example). */
function mutedUsers(metadata: Record<string, unknown>): Set<string> {
  const muted = metadata.muted
  return new Set(Array.isArray(muted) ? muted.filter((u): u is string => typeof u === "string") : [])
}

export default defineHooks({
  async onMessageSent({ event, subject, conversation }, { conversations, log, signal }) {
    const { message } = subject
    if (message.type === "system") return
    const state = await conversations.get(conversation.id, { last: 1 })
    if (!state) return
    const muted = mutedUsers(conversation.metadata)
    const title = conversation.title || message.author
    const preview = message.attachments.length > 0 && !message.body ? "sent an attachment" : message.body
    for (const { user } of conversation.participants) {
      if (user === message.author) continue
      if (muted.has(user) && message.priority !== "emergency") continue
      const notification = {
        id: `${event.id}:${user}`,
        to: user,
        title,
        body: `${message.author}: ${preview.slice(0, 140)}`,
        badge: state.unread[user] ?? 0,
        data: { conversationId: conversation.id, messageId: message.id, seq: message.seq },
      }
      if (!gateway) {
        log.info({ notification }, "push")
        continue
      }
      const response = await fetch(gateway, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(notification),
        signal,
      })
      if (!response.ok) throw new Error(`push gateway answered ${response.status}`)
    }
  },
})
