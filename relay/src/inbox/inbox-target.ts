import {
  type ConversationId,
  type InboxEntry,
  inboxDocumentName,
  replaceInboxEntry,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import type { RunningCore } from "../extension.js"
import { type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import type { HookEvent, HookEventType } from "../hooks/events.js"
import { writeDerivedEntries } from "./derived-entries.js"

/**
 * Event types that change who has an entry. Everything else an entry shows is
 * derived (see `LiveInbox`), so only membership is written for every user it
 * concerns, durably: the keys of a user's inbox are the conversations an
 * offline user's inbox is derived from when they connect.
 */
const INBOX_EVENTS: ReadonlySet<HookEventType> = new Set<HookEventType>([
  "conversation.created",
  "participants.added",
  "participants.removed",
])

/** The users who gained or lost an entry with the event. */
function affectedUsers(event: HookEvent): UserId[] {
  switch (event.event.type) {
    case "conversation.created":
      return (event as HookEvent<"conversation.created">).subject.participants.map((p) => p.user)
    case "participants.added":
      return (event as HookEvent<"participants.added">).subject.participants.map((p) => p.user)
    case "participants.removed":
      return [...(event as HookEvent<"participants.removed">).subject.users]
    default:
      return []
  }
}

/** Inboxes written at once for one membership event (together in one storage commit). */
const INBOX_WRITE_CHUNK = 32

/**
 * Records membership in users' inboxes: the entry of a user added to (or
 * removed from) a conversation is written (or removed) durably. It is a
 * delivery target of the hook pipeline, so it runs after the change is saved,
 * off the update path, in order per conversation, at least once across
 * restarts. Each delivery recomputes the entries from the conversation as it
 * is now (shared `inboxEntryFor`), so a repeated or late delivery writes the
 * same thing. Messages, reads, renames and deletions are not written here:
 * `LiveInbox` derives them for connected users, and for the others when they
 * connect, so a message costs no durable write per member.
 *
 * An event whose users' entries were all recomputed after the event was
 * derived is already reflected and is skipped.
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
      // Written even when memory already shows it (LiveInbox may have derived it first): stored either way.
      // Each only if the user's membership is still what the read saw (else derived again). In chunks, one
      // after the other: a group created with 499 members wrote 499 inboxes at once, about half a second
      // of the relay's main thread in one stretch, and every other conversation's messages waited.
      for (let from = 0; from < users.length; from += INBOX_WRITE_CHUNK)
        await writeDerivedEntries(
          relay,
          conversation,
          users.slice(from, from + INBOX_WRITE_CHUNK),
          (inbox, _user, entry) => {
            if (entry) {
              replaceInboxEntry(inbox, conversation, entry)
              return true
            }
            return writeInboxEntry(inbox, conversation, undefined)
          },
          { concurrent: true },
        )
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
  options: { readonly force?: boolean } = {},
): Promise<number> {
  let changed = 0
  await Promise.all(
    entries.map(([user, entry]) =>
      host.write(inboxDocumentName(user), { kind: "relay" }, (inbox) => {
        if (options.force && entry) {
          replaceInboxEntry(inbox, conversation, entry)
          changed++
        } else if (writeInboxEntry(inbox, conversation, entry)) changed++
      }),
    ),
  )
  return changed
}
