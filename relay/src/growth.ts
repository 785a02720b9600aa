import { MetaKey, TOP_LEVEL_ARRAYS, TOP_LEVEL_MAPS, TopLevel, typesOf, type UserId } from "@parley/shared"
import type * as Y from "yjs"
import { readUpdate } from "./policy/update-structs.js"
import type { Growth } from "./user-limits.js"

const NONE: Growth = { creates: false, participantsAdded: 0 }
const PARTICIPANTS = new TextEncoder().encode(TopLevel.participants)

const rootKind = (name: string): "map" | "array" | undefined =>
  TOP_LEVEL_MAPS.has(name) ? "map" : TOP_LEVEL_ARRAYS.has(name) ? "array" : undefined

/**
 * What an update to a conversation would create, worked out without applying
 * it: whether it creates the conversation, and how many users other than
 * `sender` it makes participants (new ones, and removed ones added again).
 *
 * Most updates (messages, markers, reactions) are told apart without decoding:
 * a participant key never written before carries the map's name in the update
 * (Yjs writes the parent of an item that has no left neighbour), so an update
 * of a created conversation without that name and without removed
 * participants (whose re-adding would not carry it) adds nobody.
 */
export function growthOf(doc: Y.Doc, update: Uint8Array, sender: UserId): Growth {
  const types = typesOf(doc)
  const created = typeof types.meta.get(MetaKey.createdAt) === "number"
  const entries = (types.participants as unknown as { _map: Map<string, Y.Item> })._map
  const hasRemoved = entries.size > types.participants.size
  if (
    created &&
    !hasRemoved &&
    Buffer.from(update.buffer, update.byteOffset, update.byteLength).indexOf(PARTICIPANTS) < 0
  )
    return NONE
  let read: ReturnType<typeof readUpdate>
  try {
    read = readUpdate(doc, update, rootKind, "schema", 10_000 + 64 * update.length)
  } catch {
    // Not an update the document rules accept; a plugged-in policy that let it through decides alone.
    return NONE
  }
  let creates = false
  const added = new Set<string>()
  for (const { item, location } of read.items) {
    // Written and deleted in the same update: nothing stays.
    if (read.deletes(item.id.client, item.id.clock)) continue
    if (location.root === TopLevel.meta && location.key === MetaKey.createdAt) creates = !created
    if (
      location.root === TopLevel.participants &&
      location.key !== null &&
      location.key !== sender &&
      !types.participants.has(location.key)
    )
      added.add(location.key)
  }
  return { creates, participantsAdded: added.size }
}
