import { type MessageId, MetaKey, messageIndex, typesOf } from "@parley/shared"
import type * as Y from "yjs"

/**
 * What a conversation's snapshot says was deleted, taken after the snapshot
 * is applied and before its log: see {@link purgesOwed}.
 */
export interface DeletedInSnapshot {
  /** Deleted messages: live ones' placeholders and sealed ones' tombstones, dropped ones included. */
  readonly messages: ReadonlySet<string>
  /** The conversation's deletion the snapshot holds (see {@link deletionOf}), if any. */
  readonly deletion: string | undefined
}

/** What a stored log's purges still owe, as {@link purgesOwed} finds them. */
export interface OwedPurges {
  /** Deleted messages whose purge did not finish. */
  readonly messages: readonly MessageId[]
  /** True when the conversation's own deletion was not purged to the end. */
  readonly conversation: boolean
}

/** Call on a conversation's document holding its snapshot alone (see {@link purgesOwed}). */
export function deletedInSnapshot(doc: Y.Doc): DeletedInSnapshot {
  return {
    messages: new Set(deletedMessages(doc)),
    deletion: deletionOf(doc),
  }
}

/**
 * Which deletion of the conversation `doc` holds: the Yjs id of its
 * `deletedAt` entry, undefined while it is not deleted. A direct conversation
 * reopened and deleted again holds another one: a snapshot folded by the
 * first deletion's purge must not hide that the second one's is owed.
 */
function deletionOf(doc: Y.Doc): string | undefined {
  if (typeof typesOf(doc).meta.get(MetaKey.deletedAt) !== "number") return undefined
  const item = (typesOf(doc).meta as unknown as { _map: Map<string, Y.Item> })._map.get(MetaKey.deletedAt)
  return item ? `${item.id.client}:${item.id.clock}` : ""
}

/**
 * Live messages' placeholders, and every key the tombstones map ever held in
 * this epoch: a purge that re-sealed a sealed message drops its tombstone in
 * the same change (shared `purgeFromSegment`), and Yjs keeps the key of a
 * removed map entry (its item, deleted). A log that added a tombstone and
 * removed it, over a snapshot from before, is a purge that may not have
 * folded the log yet: owed, like one whose tombstone is still there.
 */
function* deletedMessages(doc: Y.Doc): Iterable<MessageId> {
  yield* messageIndex(doc).deleted.keys()
  const entries = (typesOf(doc).tombstones as unknown as { _map: Map<string, unknown> })._map
  for (const id of entries.keys()) yield id as MessageId
}

/**
 * The purges a stored conversation still owes, from its snapshot and its log
 * alone: every purge ends by folding the log into a snapshot, and nothing
 * folds the log of a document while a purge of it is owed (`compact` in
 * update-path.ts), so a deletion that the log holds and the snapshot does not
 * is one whose purge did not finish — the relay was killed, or stopped or
 * unloaded the document while storage failed. Nothing else needs to be
 * stored for it: the load of the document after a crash finds it.
 *
 * Call on the same document after its log is applied.
 */
export function purgesOwed(doc: Y.Doc, snapshot: DeletedInSnapshot): OwedPurges {
  const messages: MessageId[] = []
  for (const id of deletedMessages(doc)) if (!snapshot.messages.has(id)) messages.push(id)
  const deletion = deletionOf(doc)
  const conversation = deletion !== undefined && deletion !== snapshot.deletion
  return { messages, conversation }
}
