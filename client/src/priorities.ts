import {
  fleetingExpiry,
  fleetingMessages,
  fleetingSecondsOf,
  isExpired,
  type MessageId,
  type MessageView,
  pinnedMessages,
} from "@parley/shared"
import type * as Y from "yjs"

/** Longest delay `setTimeout` takes (a 32-bit number of ms); a later expiry is re-armed on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * What a conversation shows of its messages' priorities, kept out of
 * `Conversation` itself: which messages are pinned (and when that list
 * changes), and which fleeting ones have expired — hidden from then on, even
 * before the relay purges them, with one timer per conversation for the next
 * expiry.
 */
export class PriorityView {
  private lastPinned = ""
  private timer: ReturnType<typeof setTimeout> | undefined
  private timerAt = Number.POSITIVE_INFINITY

  constructor(
    private readonly clock: () => number,
    private readonly onPinned: () => void,
    private readonly onExpired: (ids: readonly MessageId[]) => void,
  ) {}

  /** Pinned messages of `doc`, oldest first. */
  pinned(doc: Y.Doc): MessageView[] {
    return pinnedMessages(doc)
  }

  /**
   * Call after each transaction of the conversation's document: tells
   * `onPinned` when the pinned list (ids, bodies, reactions) changed, and
   * arms the timer for the next fleeting expiry. Both walk only the
   * messages that have a priority, which are few.
   */
  changed(doc: Y.Doc): void {
    const key = JSON.stringify(pinnedMessages(doc))
    if (key !== this.lastPinned) {
      const first = this.lastPinned === ""
      this.lastPinned = key
      if (!first || key !== "[]") this.onPinned()
    }
    this.arm(doc)
  }

  /** `messages` without the fleeting ones whose time is up. */
  visible<T extends MessageView>(doc: Y.Doc, messages: readonly T[]): T[] {
    const now = this.clock()
    return messages.filter((m) => !isExpired(doc, m, now))
  }

  /** Stops the timer (the conversation closed). */
  close(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.timerAt = Number.POSITIVE_INFINITY
  }

  private arm(doc: Y.Doc): void {
    const now = this.clock()
    const seconds = fleetingSecondsOf(doc)
    let next = Number.POSITIVE_INFINITY
    for (const m of fleetingMessages(doc)) {
      const at = fleetingExpiry({ priority: "fleeting", createdAt: m.createdAt }, seconds)!
      if (at > now && at < next) next = at
    }
    if (next === this.timerAt) return
    this.close()
    if (next === Number.POSITIVE_INFINITY) return
    this.timerAt = next
    this.timer = setTimeout(
      () => {
        this.timer = undefined
        this.timerAt = Number.POSITIVE_INFINITY
        const at = this.clock()
        const expired = fleetingMessages(doc)
          .filter((m) => m.createdAt + seconds * 1000 <= at)
          .map((m) => m.id)
        if (expired.length > 0) this.onExpired(expired)
        this.arm(doc)
      },
      Math.min(next - now + 1, MAX_TIMER_MS),
    )
  }
}
