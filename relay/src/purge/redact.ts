import { uploadedAttachmentIds } from "@parley/shared"
import type { HookEvent } from "../hooks/events.js"

/**
 * What a purge removes from stored hook events: a whole conversation, some
 * messages of it, or what they say of one user beyond their messages (an
 * erasure: their display name and picture).
 */
export type RedactionScope =
  | {
      readonly kind: "conversation"
      /**
       * The document's last log position when the purge ran: what a holder of events applies the
       * purge to later is only an event of a change at or before it (see `RecentPurges`). A
       * reopened direct conversation's later messages are news of their own. Absent: every event.
       */
      readonly through?: number
    }
  | { readonly kind: "messages"; readonly ids: ReadonlySet<string> }
  | { readonly kind: "user"; readonly user: string }

/**
 * What a purge removed, as the relay tells the extensions that hold hook
 * events or content in memory (`RelayExtension.contentPurged`): the
 * document, its conversation and the scope.
 */
export interface PurgedContent {
  /** The document's name (a conversation's is its id). */
  readonly name: string
  readonly conversationId: string
  readonly scope: RedactionScope
}

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

/** `event` without the content `scope` purges; the same object when it holds none. */
export function redactEvent(event: HookEvent, scope: RedactionScope): HookEvent {
  if (scope.kind === "conversation") {
    const conversation = event.conversation as unknown as Record<string, unknown>
    // What messages said goes, and the names members chose; who was in the conversation, and who
    // deleted it when, stays.
    const type = event.event.type
    const subject =
      type.startsWith("message.") || type === "document.updated" ? { purged: true } : event.subject
    return {
      event: {
        ...event.event,
        actor: withoutProfile(event.event.actor as unknown as Record<string, unknown>),
      },
      subject,
      conversation: { ...conversation, title: REDACTED, metadata: {} },
    } as unknown as HookEvent
  }
  if (scope.kind === "user") return forgetUser(event, scope.user) as HookEvent
  const subject = redactMessages(event.subject, scope.ids)
  return subject === event.subject ? event : ({ ...event, subject } as unknown as HookEvent)
}

/**
 * How deep in an event's subject a message may sit: a subject names its
 * messages within a few levels (`subject.message`, `subject.messages[i]`).
 * What lies deeper is content a message's author wrote (its metadata), which
 * the walk does not enter: a purged message's metadata goes whole, and an
 * author's value nested thousands deep (stored before such values were
 * refused) overflowed the stack of every purge that read it.
 */
const MESSAGE_DEPTH = 8

/**
 * `value` with `rewrite` applied to each object in it, innermost first (it
 * gets the object as it was and as its rewritten children left it, and
 * returns the latter when it changes nothing): the same object when nothing
 * changed. A subject names its messages and users within a few levels
 * ({@link MESSAGE_DEPTH}); the walk enters no `metadata`.
 */
function rewriteObjects(
  value: unknown,
  rewrite: (record: Record<string, unknown>, current: Record<string, unknown>) => Record<string, unknown>,
  depth = 0,
): unknown {
  if (depth > MESSAGE_DEPTH) return value
  if (Array.isArray(value)) {
    const items = value.map((v) => rewriteObjects(v, rewrite, depth + 1))
    return items.some((v, i) => v !== value[i]) ? items : value
  }
  if (typeof value !== "object" || value === null) return value
  const record = value as Record<string, unknown>
  let out: Record<string, unknown> | undefined
  for (const [key, child] of Object.entries(record)) {
    if (key === "metadata") continue
    const next = rewriteObjects(child, rewrite, depth + 1)
    if (next === child) continue
    out ??= { ...record }
    out[key] = next
  }
  return rewrite(record, out ?? record)
}

/**
 * `value` with every message of `ids` in it (a message view or record, or a
 * change naming it by `messageId`) stripped of what its author wrote: body,
 * attachments, metadata, and marked `purged` (a receiver must not take the
 * empty body for what was sent). The same object when nothing matched.
 * Of its attachments only the ids of files uploaded to the relay stay (`{ id }`,
 * random ids the relay made, naming nothing of their content): the relay's own
 * attachments target links them to the message from its `message.sent` and
 * deletes them with its `message.deleted`, and one that reached the target only
 * after the purge (a backlog) left the files linked to nothing, kept a day by
 * the sweep of unlinked uploads while members could still fetch them.
 */
function redactMessages(value: unknown, ids: ReadonlySet<string>): unknown {
  return rewriteObjects(value, (record, current) => {
    const id = record.id ?? record.messageId
    if (typeof id !== "string" || !ids.has(id)) return current
    const out = current === record ? { ...record } : current
    if ("body" in record) {
      out.body = REDACTED
      out.purged = true
    }
    if ("attachments" in record)
      out.attachments = uploadedAttachmentIds(record.attachments as readonly unknown[]).map((id) => ({ id }))
    if ("metadata" in record) out.metadata = {}
    return out
  })
}

/** What a user chose to be shown as: their profile's fields as events carry them (actor, message, change). */
const PROFILE_KEYS = ["name", "picture", "authorName", "authorPicture"]

/** `record` without {@link PROFILE_KEYS}; the same object when it has none. */
function withoutProfile(record: Record<string, unknown>): Record<string, unknown> {
  if (!PROFILE_KEYS.some((key) => key in record)) return record
  const out = { ...record }
  for (const key of PROFILE_KEYS) delete out[key]
  return out
}

/**
 * `value` without what it says of `user` beyond their id: the display name
 * and picture of every object about them (an actor, a message they wrote, a
 * profile), and the profile a `profile.updated` change of theirs set. The
 * same object when nothing matched.
 */
function forgetUser(value: unknown, user: string): unknown {
  return rewriteObjects(value, (record, current) => {
    if (record.user !== user && record.author !== user) return current
    const stripped = withoutProfile(current)
    if (record.user === user && typeof record.profile === "object" && record.profile !== null)
      return { ...stripped, profile: { user, purged: true } }
    return stripped
  })
}

/** The keys under which a stored payload names a message (see `redactMessages`), as JSON writes them. */
const MESSAGE_KEYS = ['"id":"', '"messageId":"']

/**
 * Whether the stored payload `payload` (`JSON.stringify`'s output, as every
 * stored and redacted payload is) names one of the messages `ids` under a key
 * {@link redactPayload} goes by (`id`, `messageId`): a scan with no parsing,
 * so that a message deletion parses only the conversation's events that
 * concern it. False means redactPayload would change nothing for these
 * messages (JSON writes keys unescaped and with no space; a message id holds
 * no quote).
 */
export function namesAnyMessage(payload: string, ids: ReadonlySet<string>): boolean {
  for (const key of MESSAGE_KEYS) {
    for (let at = payload.indexOf(key); at >= 0; ) {
      const start = at + key.length
      const end = payload.indexOf('"', start)
      if (end < 0) break
      if (ids.has(payload.slice(start, end))) return true
      at = payload.indexOf(key, end + 1)
    }
  }
  return false
}
