import {
  type MessageId,
  type MessageView,
  messageIndex,
  type ParleyError,
  parseMessageId,
  type UserId,
} from "@parley/shared"
import type * as Y from "yjs"
import type { MessageStatus, MessageStatuses } from "../message-status.js"
import type { ChatMessage, EmitConversationEvent } from "./types.js"

/**
 * The statuses of the user's own messages as the app sees them: decorates
 * message views, and emits a `status` event for each message whose status
 * moved (pending → sent → delivered → read, or failed). Read messages are
 * forgotten (nothing moves them any more). What a resync could not re-apply
 * is remembered as failed, with why.
 */
export class StatusTracker {
  /** The user's messages not read yet, with the status last reported. */
  private readonly tracked = new Map<MessageId, MessageStatus>()
  /** The user's messages that a resync could not re-apply (the relay refused them), with why. */
  readonly lost = new Map<MessageId, ParleyError>()
  /**
   * What the relay refused of those, as the user wrote it: no longer in the
   * replica (a resync rebuilt it without them), still shown as failed until
   * the app retries or discards them (`Conversation.retry` / `discard`).
   */
  readonly refused = new Map<MessageId, MessageView>()
  /**
   * The sequence numbers of followed messages, so that one sealed into history
   * (and no longer in the live document, nor loaded) still moves to "read".
   */
  private readonly numbers = new Map<MessageId, number>()
  /**
   * Followed messages sealed into history before their number reached this
   * replica (see `statusOf`): few, one per acknowledgement lost with its
   * connection as its message was sealed.
   */
  private readonly sealedAway = new Set<MessageId>()
  /**
   * Followed messages seen read (final) that this replica may no longer show:
   * a sealed one whose segment is not loaded has no view, and its number was
   * forgotten with it, so its status would read `undefined` (the read tick
   * gone until `loadOlder`: an outside probe). Ids only, one per message the
   * user saw read in this session.
   */
  private readonly seenRead = new Set<MessageId>()

  constructor(
    /** The current replica's statuses (a resync replaces them). */
    private readonly statuses: () => MessageStatuses,
    private readonly emit: EmitConversationEvent,
    /** A message's view wherever this replica holds it, sealed history included. */
    private readonly view: (id: MessageId) => MessageView | undefined,
    /** Where refused messages are kept on the device, so that a reload still lists them failed. */
    private readonly kept?: {
      keepRefused(view: MessageView, error: ParleyError): void
      dropRefused(id: MessageId): void
    },
  ) {}

  /** The status of one of the user's messages (undefined for others' messages). */
  status(id: MessageId | string): MessageStatus | undefined {
    const messageId = parseMessageId(id)
    return this.statusOf(messageId) ?? (this.lost.has(messageId) ? "failed" : undefined)
  }

  /** `view` with its status (and, when failed, why), when it is one of the user's. */
  decorate(view: MessageView): ChatMessage {
    const statuses = this.statuses()
    const status = statuses.status(view.id, () => view)
    if (status === undefined) return view
    const error = status === "failed" ? statuses.failure(view.id) : undefined
    return { ...view, status, ...(error ? { error } : {}) }
  }

  /** Why message `id` (the user's) failed, while it is failed. */
  failure(id: MessageId): ParleyError | undefined {
    return this.statuses().failure(id) ?? this.lost.get(id)
  }

  /** The user's messages only this device has (status `pending`), in the order they were followed. */
  pendingIds(): MessageId[] {
    return [...this.tracked.keys()].filter((id) => this.statusOf(id) === "pending")
  }

  /** Starts following message `id` (the user's) until it is read. */
  track(id: MessageId): void {
    const status = this.statusOf(id)
    if (status === undefined || status === "read") {
      this.forget(id)
      return
    }
    if (!this.tracked.has(id)) this.tracked.set(id, status)
  }

  private forget(id: MessageId): void {
    this.tracked.delete(id)
    this.numbers.delete(id)
  }

  /**
   * Follows every message of `user` in `doc` (after a load, or a resync's
   * rebuilt replica: `fresh`). Across a resync, messages followed before keep
   * the status last reported, and what moved is told: one the relay had
   * stored while its acknowledgement was lost (a relay killed in between) is
   * "sent" in the rebuilt replica, and its move from "pending" went untold
   * when following started afresh (an outside probe saw 3 of 3,660).
   */
  trackAll(doc: Y.Doc, user: UserId, fresh = false): void {
    for (const [id, record] of messageIndex(doc).records) if (record.author === user) this.track(id)
    if (fresh) this.refresh()
  }

  /** Keeps `view`, which the relay refused with `error`, as a failed message outside the replica. */
  keepRefused(view: MessageView, error: ParleyError): void {
    this.restoreRefused(view, error)
    this.kept?.keepRefused(view, error)
  }

  /** Lists `view` failed with `error` again, as kept on the device before a reload (see {@link keepRefused}). */
  restoreRefused(view: MessageView, error: ParleyError): void {
    this.lost.set(view.id, error)
    this.refused.set(view.id, view)
  }

  /** Forgets refused message `id` (retried or discarded): its status is undefined from now on. */
  dropRefused(id: MessageId): boolean {
    this.lost.delete(id)
    if (!this.refused.delete(id)) return false
    this.kept?.dropRefused(id)
    return true
  }

  /** The refused messages kept outside the replica, as failed messages, oldest first. */
  refusedMessages(): ChatMessage[] {
    return [...this.refused.values()]
      .sort((a, b) => a.createdAt - b.createdAt)
      .map((view) => {
        const error = this.lost.get(view.id)
        return { ...view, status: "failed" as const, ...(error ? { error } : {}) }
      })
  }

  /** Marks as failed, with `error`, what the relay has not saved (it never will); returns the messages it marked. */
  refuseUnsaved(error: ParleyError): MessageId[] {
    const refused = this.statuses().refuseUnsaved(error)
    for (const id of refused) this.track(id)
    return refused
  }

  /** Marks message `id`, which the replica holds unsaved, failed with `error` (its refusal, told before a reload). */
  refuseHeld(id: MessageId, error: ParleyError): void {
    this.statuses().refuse(id, error)
    this.track(id)
  }

  /** Acknowledges what the relay saved (a state vector). */
  acknowledge(stateVector: Map<number, number>): void {
    this.statuses().acknowledge(stateVector)
    this.refresh()
  }

  /** The status of `id`; a sealed message's from its view, so that it keeps moving (delivered → read) once sealed. */
  private statusOf(id: MessageId): MessageStatus | undefined {
    const statuses = this.statuses()
    const seq = statuses.ownSeq(id)
    if (seq !== undefined && this.tracked.has(id)) this.numbers.set(id, seq)
    const status = statuses.status(id, () => {
      const known = this.numbers.get(id)
      return this.view(id) ?? (known === undefined ? undefined : { author: statuses.user, seq: known })
    })
    // Followed while pending, sealed before its number reached this device (the relay stored it and
    // its acknowledgement was lost with the connection): no longer "unknown", and never reported moving
    // (an outside probe saw 709 messages stay so after a relay was killed). Remembered once read.
    if (status !== undefined || this.lost.has(id)) return status
    if (this.seenRead.has(id)) return "read"
    if (!this.tracked.has(id) && !this.sealedAway.has(id)) return undefined
    const sealed = statuses.sealedUnnumbered(id)
    if (sealed !== undefined) this.sealedAway.add(id)
    return sealed
  }

  /** Emits a status event for each followed message whose status moved; forgets read ones. */
  refresh(): void {
    const statuses = this.statuses()
    for (const [id, before] of this.tracked) {
      const status = this.statusOf(id)
      if (status === before) continue
      if (status === "read") this.seenRead.add(id)
      if (status === undefined || status === "read") this.forget(id)
      else this.tracked.set(id, status)
      if (status === undefined) continue
      const error = status === "failed" ? statuses.failure(id) : undefined
      this.emit("status", { messageId: id, status, ...(error ? { error } : {}) })
    }
  }
}
