import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { encodeTombstone, sealedHistory } from "./history.js"
import type { MessageId, UserId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import type { WriteOptions } from "./operations.js"
import {
  type DeletedMessageRecord,
  decodeStoredRecord,
  encodeStoredRecord,
  isDeletedRecord,
  reactionKey,
} from "./schema.js"

/**
 * Erases every message `user` wrote in the conversation `doc` (an erasure
 * request, GDPR art. 17), in one transaction: each live record becomes a
 * deletion placeholder and each sealed one this replica holds the segment of
 * gets a tombstone, both saying `user` deleted it; their edits and reactions
 * go with them. For the relay, which writes it as itself whoever may write to
 * the conversation (no rule is consulted: the user may have left it, or it
 * may be closed). Already deleted messages are left as they are, so erasing
 * twice writes nothing. Returns how many messages it erased.
 */
export function eraseAuthor(doc: Y.Doc, user: UserId, options: WriteOptions = {}): number {
  const t = typesOf(doc)
  const index = messageIndex(doc)
  const deletedAt = options.now ?? Date.now()
  const reactionsOf = (id: MessageId) =>
    [...(index.reactions.get(id) ?? [])].flatMap(([emoji, users]) =>
      [...users].map((u) => reactionKey(id, u, emoji)),
    )
  const live: { position: number; placeholder: DeletedMessageRecord; reactions: string[] }[] = []
  t.messages.toArray().forEach((value, position) => {
    const record = decodeStoredRecord(value)
    if (!record || isDeletedRecord(record) || record.author !== user) return
    const placeholder = {
      id: record.id,
      author: user,
      createdAt: record.createdAt,
      deletedAt,
      deletedBy: user,
    }
    live.push({ position, placeholder, reactions: reactionsOf(record.id) })
  })
  const history = sealedHistory(doc)
  const sealed: { id: MessageId; seq: number; reactions: string[] }[] = []
  for (const segment of history.held().map((i) => history.segment(i)!))
    for (const { seq, record } of segment.entries)
      if (record.author === user && !isDeletedRecord(record) && !t.tombstones.has(record.id))
        sealed.push({ id: record.id, seq, reactions: reactionsOf(record.id) })
  if (live.length === 0 && sealed.length === 0) return 0
  doc.transact(() => {
    // From the end, so that each position still names its record.
    for (const { position, placeholder, reactions } of live.reverse()) {
      t.messages.delete(position, 1)
      t.messages.insert(position, [encodeStoredRecord(placeholder)])
      t.edits.delete(placeholder.id)
      for (const key of reactions) t.reactions.delete(key)
    }
    for (const { id, seq, reactions } of sealed) {
      t.tombstones.set(id, encodeTombstone({ author: user, seq, deletedAt, deletedBy: user }))
      t.edits.delete(id)
      if (t.pins.has(id)) t.pins.delete(id)
      for (const key of reactions) t.reactions.delete(key)
    }
  }, options.origin)
  return live.length + sealed.length
}
