import {
  getConversation,
  markDelivered,
  markersOf,
  messageIndex,
  type ParleyError,
  roleOf,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"
import { LOCAL } from "./operations.js"

/**
 * Moves the user's delivered marker a little after messages from others
 * arrive, batching bursts into one write.
 */
export class DeliveredMarker {
  private timer: ReturnType<typeof setTimeout> | undefined
  private stopped = false

  constructor(
    private readonly delay: number,
    private readonly doc: () => Y.Doc,
    private readonly user: UserId,
    /** Whether the conversation is ready (else there is nothing to acknowledge yet). */
    private readonly ready: () => boolean,
    private readonly failed: (error: ParleyError) => void,
  ) {}

  /** Plans an advance, unless one is planned already. */
  schedule(): void {
    if (this.timer !== undefined || this.stopped) return
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.advance()
    }, this.delay)
  }

  /** Cancels for good (the handle closed). */
  stop(): void {
    this.stopped = true
    clearTimeout(this.timer)
  }

  private advance(): void {
    const doc = this.doc()
    if (this.stopped || !this.ready() || roleOf(doc, this.user) === undefined) return
    // A deleted conversation is closed to writes (rule `conversation-deleted`): nothing to acknowledge.
    if (getConversation(doc)?.deletedAt !== undefined) return
    const index = messageIndex(doc)
    const delivered = markersOf(doc, this.user).delivered
    const fromOthers = index
      .sequencedAfter(delivered)
      .some((id) => (index.records.get(id) ?? index.deleted.get(id))?.author !== this.user)
    if (!fromOthers) return
    try {
      markDelivered(doc, this.user, "latest", { origin: LOCAL })
    } catch (error) {
      this.failed(error as ParleyError)
    }
  }
}
