/**
 * Push notifications in the spirit of Skygear's `after_message_sent`: one text
 * per recipient (never the author), with each recipient's unread count for the
 * app badge (over all their conversations). Recipients who muted the
 * conversation in their inbox (`client.inbox.mute(id)`) are skipped unless the
 * message is an emergency.
 *
 * Without PUSH_GATEWAY_URL the notifications are only logged; with it, each one
 * is POSTed there as JSON (your APNs / FCM sender). A failed POST throws, so the
 * relay retries the event; the event id is sent along for de-duplication.
 */
import { defineHooks } from "@parley/relay/hooks"

const gateway = process.env.PUSH_GATEWAY_URL

export default defineHooks({
  async onMessageSent({ event, subject, conversation }, { conversations, inboxes, log, signal }) {
    const { message } = subject
    if (message.type === "system") return
    const state = await conversations.get(conversation.id, { last: 1 })
    if (!state) return
    const title = conversation.title || message.author
    const preview = message.attachments.length > 0 && !message.body ? "sent an attachment" : message.body
    for (const { user } of conversation.participants) {
      if (user === message.author) continue
      const inbox = await inboxes.summary(user)
      if (inbox.muted.includes(conversation.id) && message.priority !== "emergency") continue
      // The inbox may not count this message yet (it is kept by the same pipeline):
      // take this conversation's count fresh, the others' from the inbox.
      const badge = inbox.totalUnread - (inbox.unread[conversation.id] ?? 0) + (state.unread[user] ?? 0)
      const notification = {
        id: `${event.id}:${user}`,
        to: user,
        title,
        body: `${message.author}: ${preview.slice(0, 140)}`,
        badge,
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
