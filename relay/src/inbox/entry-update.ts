import { type ConversationId, type InboxEntry, InboxTopLevel } from "@parley/shared"
import * as encoding from "lib0/encoding"
import * as Y from "yjs"

/**
 * Values that the entries of one change share (its head: id, title,
 * participants summary, last message), encoded once: a message in a big room
 * writes one entry per connected member, and each member's entry differs from
 * the others' only in its unread count and read marker.
 */
export class SharedEntryValues {
  private readonly encoded = new Map<string, { readonly value: unknown; readonly bytes: Uint8Array }>()

  /** Writes `entry` as lib0's `writeAny` would, reusing the bytes of values seen before under the same key. */
  write(encoder: encoding.Encoder, entry: InboxEntry): void {
    const keys = Object.keys(entry)
    encoding.write(encoder, 118) // lib0's tag of an object
    encoding.writeVarUint(encoder, keys.length)
    for (const key of keys) {
      encoding.writeVarString(encoder, key)
      const value = (entry as unknown as Record<string, unknown>)[key]
      if (typeof value === "number" || typeof value === "boolean") {
        encoding.writeAny(encoder, value)
        continue
      }
      let known = this.encoded.get(key)
      // The same value, by identity: an entry derived from the same head shares its objects.
      if (known === undefined || known.value !== value) {
        const bytes = encoding.encode((e) => encoding.writeAny(e, value as encoding.AnyEncodable))
        known = { value, bytes }
        this.encoded.set(key, known)
      }
      encoding.writeUint8Array(encoder, known.bytes)
    }
  }
}

interface MapInternals {
  readonly _map: Map<string, Y.Item>
}

/**
 * Sets (or removes) `id`'s entry in `inbox` in one transaction with
 * `origin`, and returns the Yjs update of that transaction, byte for byte what
 * Yjs's "update" event would carry, or undefined when nothing changed. Encoded
 * here rather than by Yjs: Yjs encodes a transaction's structs generically
 * (and the entry object value by value for every member), which costs twice
 * the transaction itself; a map entry replaced by the relay is always one item
 * of one value, whose origin is the entry it replaces, and one deletion.
 */
export function replaceEntryEncoded(
  inbox: Y.Doc,
  id: ConversationId,
  entry: InboxEntry | undefined,
  values: SharedEntryValues,
  origin: unknown,
): Uint8Array | undefined {
  const map = inbox.getMap<InboxEntry>(InboxTopLevel.entries)
  const items = (map as unknown as MapInternals)._map
  const old = items.get(id)
  const replaced =
    old && !old.deleted ? { client: old.id.client, clock: old.id.clock, length: old.length } : undefined
  if (!entry && !replaced) return undefined
  inbox.transact(() => {
    if (entry) map.set(id, entry)
    else map.delete(id)
  }, origin)
  const item = entry ? items.get(id) : undefined
  if (
    entry &&
    (item === undefined ||
      item === old ||
      item.id.client !== inbox.clientID ||
      item.rightOrigin !== null ||
      !(item.content instanceof Y.ContentAny) ||
      item.length !== 1)
  )
    // Not the shape Yjs gives a map write (it always is): the whole document, correct if larger.
    return Y.encodeStateAsUpdate(inbox)
  const encoder = encoding.createEncoder()
  // Structs: one client, one item (Yjs's writeClientsStructs / Item.write, update format v1).
  if (item) {
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, item.id.client)
    encoding.writeVarUint(encoder, item.id.clock)
    const left = item.origin
    // ContentAny's ref (8), an origin (bit 8), a parentSub (bit 6).
    encoding.write(encoder, 8 | (left ? 0x80 : 0) | 0x20)
    if (left) {
      encoding.writeVarUint(encoder, left.client)
      encoding.writeVarUint(encoder, left.clock)
    } else {
      encoding.writeVarUint(encoder, 1) // the parent is a root type, named
      encoding.writeVarString(encoder, InboxTopLevel.entries)
      encoding.writeVarString(encoder, id)
    }
    encoding.writeVarUint(encoder, 1) // one value
    values.write(encoder, entry!)
  } else {
    encoding.writeVarUint(encoder, 0)
  }
  // Delete set: the entry replaced, if there was one.
  if (replaced) {
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, replaced.client)
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, replaced.clock)
    encoding.writeVarUint(encoder, replaced.length)
  } else {
    encoding.writeVarUint(encoder, 0)
  }
  return encoding.toUint8Array(encoder)
}
