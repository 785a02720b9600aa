import * as map from "lib0/map"
import type * as Y from "yjs"
import { typesOf } from "./document.js"
import type { MessageId, UserId } from "./ids.js"
import {
  type DeletedMessageRecord,
  decodeSequenceRecord,
  decodeStoredRecord,
  isDeletedRecord,
  isReactionRemoval,
  type MessageRecord,
  parseReactionKey,
  recordChars,
} from "./schema.js"
import { addedItems, contentOf, deletedItems, inListOrder } from "./transaction-changes.js"

/**
 * Lookups over a conversation's messages that the array and maps do not give
 * directly: a record by id, the sequence number of a message, the canonical
 * order, reactions per message. Built once per document (O(n)) and then kept
 * current by observers in time proportional to each change, so that reads on a
 * 100,000-message conversation never rescan it.
 */
export class MessageIndex {
  /** Live (not deleted) records by id. */
  readonly records = new Map<MessageId, MessageRecord>()
  /** Deletion placeholders by id. */
  readonly deleted = new Map<MessageId, DeletedMessageRecord>()
  /**
   * Every record present per id, kept only for ids with more than one: two
   * users deleting a message concurrently leave two placeholders, and the one
   * shown must be the same on every replica whatever order they arrived in, so
   * it is chosen by content. For every other id (all but a handful) the two
   * maps above are the whole truth, which keeps the index small.
   */
  private readonly copies = new Map<MessageId, (MessageRecord | DeletedMessageRecord)[]>()
  /** Sequence number of each sequenced message (the lowest, if several). */
  readonly seqOf = new Map<MessageId, number>()
  /** Reactions per message: emoji → users. */
  readonly reactions = new Map<MessageId, Map<string, Set<UserId>>>()
  /** Removals of folded reactions per message: emoji → users (see `isReactionRemoval`). */
  readonly reactionRemovals = new Map<MessageId, Map<string, Set<UserId>>>()
  /** Keys of the `reactions` map per user, removals included (for `Limits.reactionsPerUser`). */
  private readonly reactionsBy = new Map<UserId, number>()
  /** Sequenced message ids sorted by sequence number. */
  private readonly sequenced: MessageId[] = []
  /**
   * Sequence numbers of live (not deleted) sequenced messages, sorted, overall
   * and per author, so that an unread count is two binary searches rather than
   * a walk over everything after the reader's marker (a lurker in a large group
   * has most of the conversation unread, and the relay recomputes every
   * participant's unread count on every message).
   */
  private readonly liveSeqs: number[] = []
  private readonly liveSeqsBy = new Map<UserId, number[]>()
  /**
   * Author of each id counted in `liveSeqs` (under its number in `seqOf`,
   * which never changes while it is counted: `addSequence` takes it out first).
   */
  private readonly live = new Map<MessageId, UserId>()
  /**
   * Live records whose priority is not `normal` (sticky, emergency,
   * fleeting): few in any conversation, so that pinned lists, emergency flags
   * and fleeting expiry walk them rather than every message.
   */
  readonly prioritized = new Set<MessageId>()
  /** Ids with a record but no sequence number, in the order this replica saw them. */
  private readonly pending = new Set<MessageId>()
  /** {@link recordChars} of every element of the `messages` array (copies of an id each). */
  private stored = 0
  /** Cache of {@link order}, dropped when the sequenced or pending ids change. */
  private canonical: readonly MessageId[] | undefined
  private version = 0
  /** Numbers to take out of the live lists at the end of the running observer (see {@link batched}). */
  private liveRemovals:
    | { count: number; all: Map<number, number>; by: Map<UserId, Map<number, number>> }
    | undefined

  constructor(doc: Y.Doc) {
    const t = typesOf(doc)
    for (const value of t.messages.toArray()) this.addStored(value)
    for (const value of t.order) this.addSequence(value)
    for (const [key, value] of t.reactions.entries()) this.addReaction(key, value)
    t.messages.observe((event) =>
      this.batched(() => {
        const messages = t.messages as Y.AbstractType<unknown>
        for (const value of contentOf(inListOrder(addedItems(event.transaction, messages))))
          this.addStored(value)
        for (const value of contentOf(deletedItems(event.transaction, messages))) this.removeStored(value)
        this.touch()
      }),
    )
    t.order.observe((event) =>
      this.batched(() => {
        const added = contentOf<string>(addedItems(event.transaction, t.order as Y.AbstractType<unknown>))
        // The relay removes the numbers of messages it sealed into history segments; a seal that ends
        // inside a record replaces it with the rest of its numbers: those stay (removed, then added).
        this.removeSequences(
          contentOf<string>(deletedItems(event.transaction, t.order as Y.AbstractType<unknown>)),
          added,
        )
        for (const value of added) this.addSequence(value)
        this.touch()
      }),
    )
    t.reactions.observe((event) => {
      for (const [key, change] of event.changes.keys) {
        if (change.action !== "add") this.removeReaction(key, change.oldValue)
        if (change.action !== "delete") this.addReaction(key, t.reactions.get(key))
      }
      this.touch()
    })
  }

  /** Increases whenever the messages, their order or reactions change. */
  get changes(): number {
    return this.version
  }

  /**
   * Every message id in canonical order: sequenced by number, then the ones
   * not sequenced yet in the order this replica saw them (array order for what
   * it loaded). Those are few — this replica's pending messages until the relay
   * numbers them — so the common case returns the sequenced list itself.
   */
  order(): readonly MessageId[] {
    this.canonical ??= this.pending.size === 0 ? this.sequenced : [...this.sequenced, ...this.pending]
    return this.canonical
  }

  /** Position of a message in {@link order}, or -1. */
  positionOf(id: MessageId): number {
    const seq = this.seqOf.get(id)
    if (seq === undefined) return this.order().indexOf(id)
    return this.sequencedIndexOf(seq)
  }

  /** Index in the sequenced list of the first message whose number is ≥ `seq`. */
  sequencedIndexOf(seq: number): number {
    let lo = 0
    let hi = this.sequenced.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((this.seqOf.get(this.sequenced[mid]!) ?? 0) < seq) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Sequenced ids with a number greater than `seq`. */
  sequencedAfter(seq: number): readonly MessageId[] {
    return this.sequenced.slice(this.sequencedIndexOf(seq + 1))
  }

  /** How many sequenced ids have a number greater than `seq`: {@link sequencedAfter}'s length without the copy (asked after every change). */
  countSequencedAfter(seq: number): number {
    return this.sequenced.length - this.sequencedIndexOf(seq + 1)
  }

  /**
   * How many live messages not written by `user` have a sequence number above
   * `after`, plus live unsequenced ones not written by `user`: the unread count
   * for a reader whose marker is `after`. O(log n) plus the pending messages.
   */
  unreadFor(user: UserId, after: number): number {
    let count = countAbove(this.liveSeqs, after) - countAbove(this.liveSeqsBy.get(user) ?? [], after)
    for (const id of this.pending) {
      const record = this.records.get(id)
      if (record && record.author !== user && !this.deleted.has(id)) count++
    }
    return count
  }

  /** Highest sequence number in the document (0 when none). */
  lastSequence(): number {
    const last = this.sequenced[this.sequenced.length - 1]
    return last === undefined ? 0 : this.seqOf.get(last)!
  }

  /** How many keys of the `reactions` map are `user`'s: reactions on live and sealed messages, and removals of folded ones. */
  reactionsOf(user: UserId): number {
    return this.reactionsBy.get(user) ?? 0
  }

  /** Ids present in the document but without a sequence number. */
  unsequenced(): MessageId[] {
    return [...this.pending]
  }

  /**
   * Characters ({@link recordChars}) of the sequenced records the `messages`
   * array holds: what sealing can move out of the live document. Kept as each
   * element is added or removed, less the few pending messages', so that
   * asking after every change is cheap.
   */
  sequencedChars(): number {
    let pending = 0
    for (const id of this.pending) {
      const record = this.records.get(id) ?? this.deleted.get(id)
      if (record) pending += recordChars(record)
    }
    return Math.max(0, this.stored - pending)
  }

  private touch() {
    this.version++
  }

  private addStored(value: unknown) {
    const record = decodeStoredRecord(value)
    if (!record || typeof record.id !== "string") return
    this.stored += recordChars(record)
    const id = record.id
    const live = this.records.get(id)
    const placeholder = this.deleted.get(id)
    let list = this.copies.get(id)
    if (!list && !live && !placeholder) {
      if (isDeletedRecord(record)) this.deleted.set(id, record)
      else this.records.set(id, record)
      this.updatePending(id)
      return
    }
    if (!list) {
      list = [live, placeholder].filter((r) => r !== undefined)
      this.copies.set(id, list)
    }
    list.push(record)
    this.choose(id, list)
  }

  /**
   * Forgets a removed element. Records are decoded copies, so the one to drop
   * is found by content; copies with equal content are interchangeable.
   */
  private removeStored(value: unknown) {
    const record = decodeStoredRecord(value)
    if (!record || typeof record.id !== "string") return
    this.stored -= recordChars(record)
    const id = record.id
    const list = this.copies.get(id)
    if (list) {
      const at = list.findIndex((r) => sameRecord(r, record))
      if (at >= 0) list.splice(at, 1)
      this.choose(id, list)
      if (list.length <= 1) this.copies.delete(id)
      return
    }
    if (isDeletedRecord(record)) this.deleted.delete(id)
    else this.records.delete(id)
    this.updatePending(id)
  }

  private choose(id: MessageId, list: readonly (MessageRecord | DeletedMessageRecord)[]) {
    let live: MessageRecord | undefined
    let placeholder: DeletedMessageRecord | undefined
    for (const r of list) {
      if (isDeletedRecord(r)) {
        if (
          !placeholder ||
          orderKey(r.deletedAt, r.deletedBy) < orderKey(placeholder.deletedAt, placeholder.deletedBy)
        )
          placeholder = r
      } else if (
        !live ||
        orderKey(r.createdAt, r.author + r.body) < orderKey(live.createdAt, live.author + live.body)
      ) {
        live = r
      }
    }
    if (live) this.records.set(id, live)
    else this.records.delete(id)
    if (placeholder) this.deleted.set(id, placeholder)
    else this.deleted.delete(id)
    this.updatePending(id)
  }

  /** Keeps `pending` and the live sequence numbers in step after the records or number of `id` changed. */
  private updatePending(id: MessageId) {
    this.updateLive(id)
    if (this.records.get(id)?.priority !== undefined && !this.deleted.has(id)) this.prioritized.add(id)
    else this.prioritized.delete(id)
    const isPending = (this.records.has(id) || this.deleted.has(id)) && !this.seqOf.has(id)
    if (isPending !== this.pending.has(id)) {
      if (isPending) this.pending.add(id)
      else this.pending.delete(id)
      this.canonical = undefined
    }
  }

  private updateLive(id: MessageId) {
    const seq = this.seqOf.get(id)
    const record = this.records.get(id)
    const now = seq !== undefined && record !== undefined && !this.deleted.has(id) ? record.author : undefined
    if (this.live.get(id) === now) return
    this.removeLive(id)
    if (now !== undefined && seq !== undefined) {
      insertSorted(this.liveSeqs, seq)
      insertSorted(
        map.setIfUndefined(this.liveSeqsBy, now, (): number[] => []),
        seq,
      )
      this.live.set(id, now)
    }
  }

  private removeLive(id: MessageId) {
    const author = this.live.get(id)
    const seq = this.seqOf.get(id)
    if (author === undefined || seq === undefined) return
    this.live.delete(id)
    const later = this.liveRemovals
    if (later) {
      later.count++
      count(later.all, seq)
      count(
        map.setIfUndefined(later.by, author, () => new Map<number, number>()),
        seq,
      )
      return
    }
    removeSorted(this.liveSeqs, seq)
    removeSorted(this.liveSeqsBy.get(author)!, seq)
  }

  /**
   * Runs an observer's work with the removals from the sorted live lists
   * gathered and made at the end: a seal removes thousands of the oldest
   * messages in one transaction, and one splice each near the front of the
   * lists moved the whole rest every time. Nothing reads the lists meanwhile,
   * and they are multisets in order, so the outcome is the same.
   */
  private batched(work: () => void) {
    if (this.liveRemovals) return work()
    const removals = { count: 0, all: new Map<number, number>(), by: new Map<UserId, Map<number, number>>() }
    this.liveRemovals = removals
    try {
      work()
    } finally {
      this.liveRemovals = undefined
      const apply = (values: number[], seqs: Map<number, number>) => {
        if (removals.count < BULK_REMOVAL)
          for (const [seq, times] of seqs) for (let i = 0; i < times; i++) removeSorted(values, seq)
        else removeCounted(values, seqs)
      }
      apply(this.liveSeqs, removals.all)
      for (const [author, seqs] of removals.by) apply(this.liveSeqsBy.get(author)!, seqs)
    }
  }

  private addSequence(value: string) {
    const record = decodeSequenceRecord(value)
    if (!record) return
    record.ids.forEach((id, i) => {
      const seq = record.from + i
      const existing = this.seqOf.get(id)
      if (existing !== undefined && existing <= seq) return
      this.removeLive(id)
      if (existing !== undefined) this.sequenced.splice(this.sequencedIndexOf(existing), 1)
      this.seqOf.set(id, seq)
      if (seq > this.lastSequence()) this.sequenced.push(id)
      else this.sequenced.splice(this.sequencedIndexOf(seq), 0, id)
      this.pending.delete(id)
      this.updateLive(id)
      this.canonical = undefined
    })
  }

  /**
   * Forgets the numbers of removed `order` records (their messages were
   * sealed). A seal removes hundreds or thousands at once, the oldest: the
   * sequenced list is then filtered once rather than spliced once per message
   * (each splice near the front moves the whole rest).
   */
  private removeSequences(values: readonly string[], added: readonly string[] = []) {
    if (values.length === 0) return
    // Numbers the same transaction gives again (a record replaced by its rest): kept as they are.
    const again = new Map<MessageId, number>()
    for (const value of added) {
      const record = decodeSequenceRecord(value)
      if (!record) continue
      record.ids.forEach((id, i) => {
        again.set(id, record.from + i)
      })
    }
    const gone: MessageId[] = []
    for (const value of values) {
      const record = decodeSequenceRecord(value)
      if (!record) continue
      record.ids.forEach((id, i) => {
        const seq = record.from + i
        if (this.seqOf.get(id) === seq && again.get(id) !== seq) gone.push(id)
      })
    }
    if (gone.length < BULK_REMOVAL) {
      for (const id of gone) {
        this.removeLive(id)
        const at = this.sequencedIndexOf(this.seqOf.get(id)!)
        if (this.sequenced[at] === id) this.sequenced.splice(at, 1)
        this.seqOf.delete(id)
        this.canonical = undefined
        this.updatePending(id)
      }
      return
    }
    // The same outcome with one pass over the sequenced list.
    const ids = new Set<MessageId>()
    for (const id of gone) {
      this.removeLive(id)
      // Only the id listed at its number leaves the sequenced list (as a splice at that number would).
      if (this.sequenced[this.sequencedIndexOf(this.seqOf.get(id)!)] === id) ids.add(id)
    }
    let kept = 0
    for (const id of this.sequenced) if (!ids.has(id)) this.sequenced[kept++] = id
    this.sequenced.length = kept
    for (const id of gone) {
      this.seqOf.delete(id)
      this.updatePending(id)
    }
    this.canonical = undefined
  }

  private addReaction(key: string, value: unknown) {
    const parsed = parseReactionKey(key)
    if (!parsed) return
    const byEmoji = map.setIfUndefined(
      isReactionRemoval(value) ? this.reactionRemovals : this.reactions,
      parsed.message,
      () => new Map<string, Set<UserId>>(),
    )
    const users = map.setIfUndefined(byEmoji, parsed.emoji, () => new Set<UserId>())
    if (users.has(parsed.user)) return
    users.add(parsed.user)
    this.reactionsBy.set(parsed.user, this.reactionsOf(parsed.user) + 1)
  }

  private removeReaction(key: string, value: unknown) {
    const parsed = parseReactionKey(key)
    const from = isReactionRemoval(value) ? this.reactionRemovals : this.reactions
    const byEmoji = parsed && from.get(parsed.message)
    const users = parsed && byEmoji?.get(parsed.emoji)
    if (!parsed || !byEmoji || !users?.has(parsed.user)) return
    users.delete(parsed.user)
    const left = this.reactionsOf(parsed.user) - 1
    if (left > 0) this.reactionsBy.set(parsed.user, left)
    else this.reactionsBy.delete(parsed.user)
    if (users.size === 0) byEmoji.delete(parsed.emoji)
    if (byEmoji.size === 0) from.delete(parsed.message)
  }
}

/** Index of the first element of sorted `values` greater than `after`. */
function firstAbove(values: readonly number[], after: number): number {
  let lo = 0
  let hi = values.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (values[mid]! <= after) lo = mid + 1
    else hi = mid
  }
  return lo
}

const countAbove = (values: readonly number[], after: number) => values.length - firstAbove(values, after)

/** Inserts into a sorted array; numbers are mostly new highs, which is a push. */
function insertSorted(values: number[], value: number): void {
  if (values.length === 0 || values[values.length - 1]! <= value) values.push(value)
  else values.splice(firstAbove(values, value), 0, value)
}

const count = (counts: Map<number, number>, value: number) => counts.set(value, (counts.get(value) ?? 0) + 1)

/** Removes from `values`, in place, as many occurrences of each number as `counts` says. */
function removeCounted(values: number[], counts: Map<number, number>): void {
  let kept = 0
  for (const value of values) {
    const left = counts.get(value)
    if (left) counts.set(value, left - 1)
    else values[kept++] = value
  }
  values.length = kept
}

/** Removals beyond which {@link MessageIndex} filters its sorted lists once instead of splicing. */
const BULK_REMOVAL = 64

/** Removes one occurrence of `value` from a sorted array. */
function removeSorted(values: number[], value: number): void {
  const at = firstAbove(values, value - 1)
  if (values[at] === value) values.splice(at, 1)
}

const sameRecord = (a: MessageRecord | DeletedMessageRecord, b: MessageRecord | DeletedMessageRecord) =>
  JSON.stringify(a) === JSON.stringify(b)

const orderKey = (time: number, text: string) => `${String(time).padStart(16, "0")}\u0000${text}`

const indexes = new WeakMap<Y.Doc, MessageIndex>()

/** The message index of `doc`, built on first use. */
export function messageIndex(doc: Y.Doc): MessageIndex {
  let index = indexes.get(doc)
  if (!index) {
    index = new MessageIndex(doc)
    indexes.set(doc, index)
  }
  return index
}
