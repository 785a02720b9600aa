import type { ConversationId, UserId } from "@parley/shared"
import type { HookEvent, HookEventType } from "../hooks/events.js"

// What `GET /v1/events` needs of the durable event log (the hooks' `EventLogReader`, built on a
// branch of its own): structurally the same, so that the log can be handed over as it is.

/** One recorded event; `id` increases with every event recorded, across restarts. */
export interface ApiEventEntry {
  readonly id: string
  readonly event: HookEvent
}

/** A read of the log: entries strictly after `after`, oldest first, matching every filter given. */
export interface ApiEventQuery {
  readonly after?: string
  readonly conversation?: ConversationId
  /** Only events of conversations `user` took part in when the event happened. */
  readonly user?: UserId
  readonly types?: readonly HookEventType[]
  readonly limit: number
}

/** The durable, ordered log of hook events the stream reads. */
export interface ApiEventSource {
  /** Rejects with EVENTS_EXPIRED when `after` was pruned, INVALID_ARGUMENT when it is no id of this log. */
  read(query: ApiEventQuery): Promise<ApiEventEntry[]>
  /** The newest id recorded ("0" when none): a stream "from now" starts after it. */
  latest(): Promise<string>
  /** Hears of entries this process records from now on; returns the unsubscribe function. */
  subscribe(listener: (entries: readonly ApiEventEntry[]) => void): () => void
}
