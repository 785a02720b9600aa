import {
  type ConversationId,
  type InboxEntry,
  inboxDocumentName,
  inboxEntryFor,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import type { RunningCore } from "../extension.js"
import { type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import type { HookEvent, HookEventType } from "../hooks/events.js"

/** Event types that change what an inbox entry shows (reactions and delivery markers do not). */
const INBOX_EVENTS: ReadonlySet<HookEventType> = new Set<HookEventType>([
  "conversation.created",
  "conversation.updated",
  "conversation.deleted",
  "participants.added",
  "participants.removed",
  "message.sent",
  "message.edited",
  "message.deleted",
  "messages.read",
])

/** The users whose inbox entry an event may change. */
function affectedUsers(event: HookEvent): UserId[] {
  // A read marker only moves its owner's unread count.
  if (event.event.type === "messages.read") return [(event as HookEvent<"messages.read">).subject.user]
  const users = new Set(event.conversation.participants.map((p) => p.user))
  // Removed users lose their entry.
  if (event.event.type === "participants.removed") {
    for (const user of (event as HookEvent<"participants.removed">).subject.users) users.add(user)
  }
  return [...users]
}

/**
 * Keeps every participant's inbox current. It is a delivery target of the hook
 * pipeline, so it runs after the change is saved, off the update path, in order
 * per conversation, at least once across restarts. Each delivery recomputes the
 * affected entries from the conversation as it is now (shared `inboxEntryFor`),
 * so a repeated or late delivery writes the same thing and rebuilding an inbox
 * from the conversations gives what incremental maintenance gives.
 *
 * Because an entry is computed from the current state, an event whose users'
 * entries were all recomputed after the event was derived is already reflected
 * and is skipped: a burst (an offline device's backlog, an import of thousands
 * of messages) costs one recomputation per user, not one per message.
 */
export function inboxTarget(relay: RunningCore): DeliveryTarget {
  /** When each (conversation, user) entry was last recomputed: `${conversation}\u0000${user}` → ms. */
  const computedAt = new Map<string, number>()
  const key = (conversation: string, user: string) => `${conversation}\u0000${user}`
  return {
    name: "inbox",
    accepts: (type) => INBOX_EVENTS.has(type),
    async deliver(event) {
      const conversation = event.event.conversationId
      // Strictly later: a recomputation in the same millisecond may have read the state before this change.
      const users = affectedUsers(event).filter(
        (user) => (computedAt.get(key(conversation, user)) ?? -1) <= event.event.time,
      )
      if (users.length === 0) return
      const started = Date.now()
      const entries = await relay.read(conversation, (doc) =>
        users.map((user) => [user, inboxEntryFor(doc, user)] as const),
      )
      await writeEntries(relay, conversation, entries)
      // Only an optimisation: forgetting it costs a recomputation, never a wrong entry.
      if (computedAt.size > 100_000) computedAt.clear()
      for (const user of users) computedAt.set(key(conversation, user), started)
    },
    retryDelay: exponentialBackoff({ baseMs: 500, maxMs: 30_000, attempts: 20 }),
  }
}

/**
 * Writes entries into their users' inboxes, concurrently so that the storage
 * commits them as one group. Unchanged entries write nothing (shared
 * `writeInboxEntry`); returns how many changed.
 */
export async function writeEntries(
  host: RunningCore,
  conversation: ConversationId,
  entries: readonly (readonly [UserId, InboxEntry | undefined])[],
): Promise<number> {
  let changed = 0
  await Promise.all(
    entries.map(([user, entry]) =>
      host.write(inboxDocumentName(user), { kind: "relay" }, (inbox) => {
        if (writeInboxEntry(inbox, conversation, entry)) changed++
      }),
    ),
  )
  return changed
}
