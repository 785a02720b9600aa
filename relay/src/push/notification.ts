import type { ConversationId, MessageId, Priority, UserId } from "@parley/shared"
import type { HookEvent, HookMessage } from "../hooks/events.js"

/** How soon the push service should wake the device (RFC 8030 `Urgency`). */
export type PushUrgency = "very-low" | "low" | "normal" | "high"

/**
 * What a device receives for a message (the JSON payload, encrypted to the
 * subscription), and what a hook's `onPushNotification` may rewrite.
 */
export interface PushNotification {
  /** The conversation's title, or the sender's name in an untitled (direct) conversation. */
  readonly title: string
  /** The start of the message's body. */
  readonly body: string
  readonly sender: { readonly id: UserId; readonly name: string }
  readonly conversationId: ConversationId
  readonly messageId: MessageId
  /** The recipient's unread total over all their conversations (the app icon's badge). */
  readonly badge: number
  readonly priority: Priority
  /** `high` for `emergency` messages, `normal` otherwise. */
  readonly urgency: PushUrgency
}

/** Longest preview sent: a push payload has about 4 KB, shared with the encryption's overhead. */
export const PUSH_PREVIEW_CHARS = 200
const TITLE_CHARS = 100

/** Cuts `text` to `max` characters (whole code points), marking the cut with an ellipsis. */
function clip(text: string, max: number): string {
  const points = [...text]
  return points.length <= max ? text : `${points.slice(0, max - 1).join("")}…`
}

/**
 * The message of a `message.sent` event, unless there is nothing left to tell of
 * it: a purged conversation's event (subject `{ purged: true }`), a deleted
 * or purged message.
 */
export function liveMessageOf(event: HookEvent<"message.sent">): HookMessage | undefined {
  const message = event.subject.message as HookMessage | undefined
  return !message || message.deleted || message.purged ? undefined : message
}

/**
 * The notification of a `message.sent` event for one recipient with `badge`
 * unread messages; undefined for a message not worth a notification (deleted or purged, or a system message).
 * The sender's name is their display name in the conversation (their
 * profile entry, shared README "Profiles"), or their user id when they set
 * none; a hook may still rewrite it.
 */
export function notificationFor(
  event: HookEvent<"message.sent">,
  badge: number,
): PushNotification | undefined {
  const message = liveMessageOf(event)
  // System messages (joins, renames) are not worth waking a phone for.
  if (!message || message.type === "system") return undefined
  const sender = { id: message.author, name: message.authorName ?? message.author }
  return {
    title: clip(event.conversation.title || sender.name, TITLE_CHARS),
    body: clip(message.body, PUSH_PREVIEW_CHARS),
    sender,
    conversationId: event.event.conversationId,
    messageId: message.id,
    badge,
    priority: message.priority,
    urgency: message.priority === "emergency" ? "high" : "normal",
  }
}
