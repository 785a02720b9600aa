import type { HookEvent } from "../hooks/events.js"

/** What a purge removes from stored hook events: a whole conversation, or some messages of it. */
export type RedactionScope =
  | { readonly kind: "conversation" }
  | { readonly kind: "messages"; readonly ids: ReadonlySet<string> }

/** Text that replaces purged content in stored hook events. */
export const REDACTED = ""

/**
 * The stored hook event `payload` (JSON) with the content `scope` purges
 * removed, or undefined when it holds none. A conversation's events keep their
 * header (id, type, time, actor) so that de-duplication and audits still work,
 * and lose the conversation's title and metadata and, for message events,
 * their subject; a
 * message's events lose its body (sent, edited).
 */
export function redactPayload(payload: string, scope: RedactionScope): string | undefined {
  let event: HookEvent
  try {
    event = JSON.parse(payload) as HookEvent
  } catch {
    return undefined
  }
  const redacted = redactEvent(event, scope)
  return redacted === event ? undefined : JSON.stringify(redacted)
}

function redactEvent(event: HookEvent, scope: RedactionScope): HookEvent {
  if (scope.kind === "conversation") {
    const conversation = event.conversation as unknown as Record<string, unknown>
    // What messages said goes; who was in the conversation, and who deleted it when, stays.
    const subject = event.event.type.startsWith("message.") ? { purged: true } : event.subject
    return {
      event: event.event,
      subject,
      conversation: { ...conversation, title: REDACTED, metadata: {} },
    } as unknown as HookEvent
  }
  const subject = event.subject as unknown as Record<string, unknown>
  const message = subject.message as Record<string, unknown> | undefined
  const hit = (id: unknown) => typeof id === "string" && scope.ids.has(id)
  if (!hit(message?.id) && !hit(subject.messageId)) return event
  const purged: Record<string, unknown> = { ...subject }
  // A message's body, attachments and metadata are what its author wrote.
  if (message) purged.message = { ...message, body: REDACTED, attachments: [], metadata: {} }
  if ("body" in subject) purged.body = REDACTED
  return { ...event, subject: purged } as unknown as HookEvent
  return event
}
