import {
  decodeStoredRecord,
  type MessageId,
  type MessageIndex,
  type MessageView,
  messageIndex,
  type ParleyError,
  sealedThrough,
  storedRecordId,
  TopLevel,
  typesOf,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"

/**
 * Where a message the user sent stands: `pending` (only on this device),
 * `sent` (the relay saved it), `delivered` (another participant's device has
 * it), `read` (another participant read it), or `failed` (the relay refused it).
 */
export type MessageStatus = "pending" | "sent" | "delivered" | "read" | "failed"

/**
 * Derives the status of the user's own messages from the document (sequence
 * numbers, other users' markers) and from what the relay acknowledged (its
 * "saved" state vector) or refused. Statuses are derived, never stored: a
 * reload recomputes them from the replica.
 */
export class MessageStatuses {
  private readonly saved = new Map<number, number>()
  private readonly failures = new Map<MessageId, ParleyError>()
  private readonly index: MessageIndex
  private readonly items = new Map<MessageId, { client: number; clock: number }>()
  private walkedAt = -1

  constructor(
    private readonly doc: Y.Doc,
    /** The user whose messages these are. */
    readonly user: UserId,
  ) {
    this.index = messageIndex(doc)
  }

  /** Takes in a "saved" acknowledgement: the relay's durable state vector. */
  acknowledge(stateVector: ReadonlyMap<number, number>): void {
    for (const [client, clock] of stateVector) {
      if (clock > (this.saved.get(client) ?? 0)) this.saved.set(client, clock)
    }
  }

  /** How far the relay acknowledged having client `client`'s changes (its clock; 0 when never). */
  savedThrough(client: number): number {
    return this.saved.get(client) ?? 0
  }

  /** Marks the user's messages that the relay has not saved as refused with `error`. */
  refuseUnsaved(error: ParleyError): MessageId[] {
    const refused: MessageId[] = []
    for (const id of this.index.unsequenced()) {
      if (this.authorOf(id) === this.user && !this.isSaved(id) && !this.failures.has(id)) {
        this.failures.set(id, error)
        refused.push(id)
      }
    }
    return refused
  }

  /** Marks message `id` (the user's, unsaved) as refused with `error`, as a refusal told before a reload did. */
  refuse(id: MessageId, error: ParleyError): void {
    if (!this.failures.has(id)) this.failures.set(id, error)
  }

  /** Why the relay refused message `id`, if it did and has not saved it since. */
  failure(id: MessageId): ParleyError | undefined {
    return this.status(id) === "failed" ? this.failures.get(id) : undefined
  }

  /**
   * The status of message `id`, or undefined when it is not the user's own.
   * A message the live document no longer holds (sealed into history) is
   * judged by its view, which `sealed` gives when asked: sealed messages all
   * have their sequence number, so the markers alone say where they stand.
   */
  status(
    id: MessageId,
    sealed?: () => Pick<MessageView, "author" | "seq"> | undefined,
  ): MessageStatus | undefined {
    let author = this.authorOf(id)
    let seq = this.index.seqOf.get(id)
    if (author === undefined && sealed) {
      const view = sealed()
      author = view?.author
      seq = view?.seq
    }
    if (author !== this.user) return undefined
    if (seq === undefined) {
      if (this.isSaved(id)) return "sent"
      return this.failures.has(id) ? "failed" : "pending"
    }
    return this.byMarkers(seq)
  }

  /**
   * The status of one of the user's messages that the live document no
   * longer holds and whose number this replica never learnt: sealed into
   * history while the device was away (the relay stored it, and its
   * acknowledgement was lost with the connection). Its number is at most
   * what is sealed through, so the others' markers past that say where it
   * stands at least. Undefined while the live document holds it, or when
   * nothing is sealed.
   */
  sealedUnnumbered(id: MessageId): MessageStatus | undefined {
    if (this.authorOf(id) !== undefined) return undefined
    const through = sealedThrough(this.doc)
    return through === 0 ? undefined : this.byMarkers(through)
  }

  /** Where a message numbered `seq` stands by the other participants' markers. */
  private byMarkers(seq: number): MessageStatus {
    const t = typesOf(this.doc)
    let delivered = false
    for (const [user, upTo] of t.read) if (user !== this.user && upTo >= seq) return "read"
    for (const [user, upTo] of t.delivered) if (user !== this.user && upTo >= seq) delivered = true
    return delivered ? "delivered" : "sent"
  }

  /** The sequence number of the user's own message `id` while the live document holds it. */
  ownSeq(id: MessageId): number | undefined {
    return this.authorOf(id) === this.user ? this.index.seqOf.get(id) : undefined
  }

  private authorOf(id: MessageId): UserId | undefined {
    return (this.index.records.get(id) ?? this.index.deleted.get(id))?.author
  }

  /**
   * Whether the relay's saved state vector covers the item holding message
   * `id`. Only reached for messages without a sequence number yet (the relay
   * sequences before it acknowledges, so this is the rare path).
   */
  private isSaved(id: MessageId): boolean {
    if (this.saved.size === 0) return false
    const at = this.itemOf(id)
    return at !== undefined && (this.saved.get(at.client) ?? 0) > at.clock
  }

  /**
   * The Yjs id (client, clock) of the array element holding message `id`.
   * One walk of the array records it for every message of the user without a
   * sequence number, so a window of pending messages costs one walk, not one each.
   */
  private itemOf(id: MessageId): { client: number; clock: number } | undefined {
    const known = this.items.get(id)
    if (known || this.walkedAt === this.index.changes) return known
    this.walkedAt = this.index.changes
    const messages = this.doc.get(TopLevel.messages, Y.Array) as Y.Array<unknown>
    for (let item = messages._start; item !== null; item = item.right) {
      if (item.deleted) continue
      item.content.getContent().forEach((value, j) => {
        const id = storedRecordId(value)
        if (id && !this.index.seqOf.has(id) && decodeStoredRecord(value)?.author === this.user)
          this.items.set(id, { client: item.id.client, clock: item.id.clock + j })
      })
    }
    return this.items.get(id)
  }
}
