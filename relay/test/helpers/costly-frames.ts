/**
 * Frames that cost the relay their size to read before any rule applies:
 * what the tests of those bounds and `npm run bench:attack` send.
 */
import { MessageType } from "@parley/shared"
import * as encoding from "lib0/encoding"

/** A state vector listing `entries` made-up clients (about 7.7 bytes each: 130,000 fill a megabyte). */
export function stateVectorOf(entries: number): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, entries)
  for (let i = 0; i < entries; i++) {
    encoding.writeVarUint(encoder, 1_000_000 + i * 7919)
    encoding.writeVarUint(encoder, 1_000_000)
  }
  return encoding.toUint8Array(encoder)
}

/**
 * An awareness frame removing `entries` client ids nobody set, from
 * `firstId` on (about 12.3 bytes each: 80,000 fill a megabyte).
 */
export function awarenessRemovals(entries: number, firstId = 2_000_000): Uint8Array {
  const update = encoding.createEncoder()
  encoding.writeVarUint(update, entries)
  for (let i = 0; i < entries; i++) {
    encoding.writeVarUint(update, firstId + i)
    encoding.writeVarUint(update, 1)
    encoding.writeVarString(update, "null")
  }
  const frame = encoding.createEncoder()
  encoding.writeVarUint(frame, MessageType.awareness)
  encoding.writeVarUint8Array(frame, encoding.toUint8Array(update))
  return encoding.toUint8Array(frame)
}
