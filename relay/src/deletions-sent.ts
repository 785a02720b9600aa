import { StoredKey } from "@parley/shared"

/** A deletion's `deletedAt` key (of a placeholder or a tombstone) as lib0's `writeAny` writes it. */
const DELETED_AT = Buffer.from([StoredKey.deletedAt.length, ...Buffer.from(StoredKey.deletedAt)])
/** lib0's tags of a number: float64, float32, varint. */
const NUMBER_TAGS: ReadonlySet<number> = new Set([123, 124, 125])

/**
 * How many messages an update may delete: the times it holds a `deletedAt`
 * key followed by a number, counted over its bytes without decoding it. A
 * deletion makes the relay purge the message from every member's inbox that
 * previews it (rebuilt, written, compacted), so the update path charges its
 * sender for that with the frame. Metadata that spells the same bytes only
 * costs its own sender.
 */
export function deletionsIn(update: Uint8Array): number {
  const bytes = Buffer.from(update.buffer, update.byteOffset, update.byteLength)
  let found = 0
  for (let at = bytes.indexOf(DELETED_AT); at >= 0; at = bytes.indexOf(DELETED_AT, at + 1))
    if (NUMBER_TAGS.has(bytes[at + DELETED_AT.length]!)) found++
  return found
}
