/**
 * The benchmark's hook module: a handler on every event, each doing the least a
 * real handler does (read its payload). Measures what running hooks costs the
 * relay (event derivation, the durable outbox, dispatch), not what a handler
 * does.
 */
import { defineHooks } from "@parley/relay/hooks"

// Reads the payload, as any handler does; throwing would make the relay retry.
const note = (payload: { event: { id: string } }) => {
  if (!payload.event.id) throw new Error("event without id")
}

export default defineHooks({
  onConversationCreated: note,
  onConversationUpdated: note,
  onConversationDeleted: note,
  onParticipantsAdded: note,
  onParticipantsRemoved: note,
  onParticipantRoleChanged: note,
  onMessageSent: note,
  onMessageEdited: note,
  onMessageDeleted: note,
  onReactionAdded: note,
  onReactionRemoved: note,
  onMessagesRead: note,
  onTypingStarted: note,
  onDocumentUpdated: note,
})
