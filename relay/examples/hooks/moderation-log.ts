/**
 * A moderation logger: writes a structured log line (pino, JSON) for messages
 * and edits that match a word list, for messages deleted by someone other than
 * their author, and for participants removed. Point your log pipeline at
 * `hook: "moderation-log.ts"`. Set MODERATION_WORDS to a comma-separated list.
 */
import { defineHooks } from "@parley/relay/hooks"

const words = (process.env.MODERATION_WORDS ?? "spam,scam")
  .split(",")
  .map((w) => w.trim().toLowerCase())
  .filter(Boolean)

const flagged = (text: string) => words.filter((w) => text.toLowerCase().includes(w))

export default defineHooks({
  onMessageSent({ event, subject }, { log }) {
    const matches = flagged(subject.message.body)
    if (matches.length > 0)
      log.warn({ actor: event.actor, messageId: subject.message.id, matches }, "moderation: flagged message")
  },
  onMessageEdited({ event, subject }, { log }) {
    const matches = flagged(subject.body)
    if (matches.length > 0)
      log.warn({ actor: event.actor, messageId: subject.messageId, matches }, "moderation: flagged edit")
  },
  onMessageDeleted({ subject }, { log }) {
    if (subject.deletedBy !== subject.author)
      log.info(
        { messageId: subject.messageId, author: subject.author, deletedBy: subject.deletedBy },
        "moderation: message removed by a moderator",
      )
  },
  onParticipantsRemoved({ event, subject }, { log }) {
    log.info({ actor: event.actor, users: subject.users }, "moderation: participants removed")
  },
})
