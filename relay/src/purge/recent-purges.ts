import { eventLogPosition, type HookEvent } from "../hooks/events.js"
import { type RedactionScope, redactEvent } from "./redact.js"

/** How long a purge is remembered: longer than any storage call or hook attempt may take. */
export const RECENT_PURGE_MS = 10 * 60_000
/**
 * Most message ids (and keys: a conversation's purge counts one) remembered
 * together; beyond, the keys purged longest ago are forgotten.
 */
export const MAX_RECENT_PURGED_IDS = 100_000

interface Recent {
  /**
   * The whole conversation was purged, of the changes up to this log position (`Infinity`: of
   * every change); -1: not purged whole.
   */
  through: number
  readonly ids: Set<string>
  /** Users erased: what events say of them beyond their messages (names, pictures) went. */
  readonly users: Set<string>
  at: number
}

/**
 * The purges of the last minutes, by key (a document, or a conversation id):
 * what a holder of events in memory applies to an event it read or was handed
 * before a purge and takes in after it (a page of the outbox read while the
 * purge ran, an attempt's retry coming back). Purges only ever remove content
 * that is deleted for good, so applying one to a later event changes nothing
 * that a user could still see.
 */
export class RecentPurges {
  private readonly byKey = new Map<string, Recent>()
  private ids = 0

  constructor(
    private readonly keepMs = RECENT_PURGE_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Keys purged in the last minutes (0: nothing to look up). */
  get size(): number {
    return this.byKey.size
  }

  /** Remembers that `scope`'s content of `key` was purged. */
  note(key: string, scope: RedactionScope): void {
    const now = this.now()
    let recent = this.byKey.get(key)
    // Re-inserted, so that the map stays in the order of the last purge (oldest first).
    if (recent) this.byKey.delete(key)
    else recent = { through: -1, ids: new Set(), users: new Set(), at: now }
    recent.at = now
    this.byKey.set(key, recent)
    if (scope.kind === "user") {
      if (!recent.users.has(scope.user)) this.ids++
      recent.users.add(scope.user)
    } else if (scope.kind === "conversation") {
      // Every message purged before is of a change up to this position, which the whole purge covers.
      recent.through = Math.max(recent.through, scope.through ?? Number.POSITIVE_INFINITY)
      this.ids -= recent.ids.size
      recent.ids.clear()
    } else {
      // Also after a whole purge: a reopened direct conversation's later messages are deleted on their own.
      for (const id of scope.ids) {
        if (recent.ids.has(id)) continue
        recent.ids.add(id)
        this.ids++
      }
    }
    this.forget(now)
  }

  /**
   * `event` of `key` without what a purge of the last minutes removed; the same object when none
   * concerns it. A whole conversation's purge concerns the events of changes up to its position (an
   * event without one, of nothing stored, counts as before it): a direct conversation reopened once
   * the purge was done holds only what was written since.
   */
  redact(key: string, event: HookEvent): HookEvent {
    const recent = this.current(key)
    if (!recent) return event
    const header = event.event
    let out =
      recent.through >= 0 && before(recent, eventLogPosition(header.conversationId, header.id))
        ? redactEvent(event, { kind: "conversation" })
        : recent.ids.size > 0
          ? redactEvent(event, { kind: "messages", ids: recent.ids })
          : event
    for (const user of recent.users) out = redactEvent(out, { kind: "user", user })
    return out
  }

  /**
   * Whether message `id` of `key` (or all of `key`) was purged in the last minutes; for a whole
   * purge, only when `position` (of the change that sent it, if known) is at or before the purge's.
   */
  covers(key: string, id: string, position?: number): boolean {
    const recent = this.current(key)
    return recent !== undefined && ((recent.through >= 0 && before(recent, position)) || recent.ids.has(id))
  }

  private current(key: string): Recent | undefined {
    if (this.byKey.size === 0) return undefined
    const recent = this.byKey.get(key)
    if (!recent || this.now() - recent.at <= this.keepMs) return recent
    this.forget(this.now())
    return undefined
  }

  /** Drops what is older than the memory, and the oldest beyond the cap on ids and keys. */
  private forget(now: number): void {
    for (const [key, recent] of this.byKey) {
      if (now - recent.at <= this.keepMs && this.ids + this.byKey.size <= MAX_RECENT_PURGED_IDS) return
      this.byKey.delete(key)
      this.ids -= recent.ids.size + recent.users.size
    }
  }
}

/** Whether a change at `position` (undefined: not known) came before `recent`'s whole purge. */
function before(recent: Recent, position: number | undefined): boolean {
  return position === undefined || position <= recent.through
}
