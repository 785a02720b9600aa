import { StoredKey } from "@parley/shared"

/** A stored message record's priority `fleeting` as lib0's `writeAny` writes it: key, string tag, value. */
const FLEETING_PRIORITY = Buffer.from([
  StoredKey.priority.length,
  ...Buffer.from(StoredKey.priority),
  119,
  "fleeting".length,
  ...Buffer.from("fleeting"),
])

/**
 * How many fleeting messages an update may send: the times it holds a
 * record's `priority: "fleeting"`, counted over its bytes without decoding
 * it. Each is owed an expiry (a deletion made by the relay, uncharged to
 * anyone then), so the update path charges its sender for it with the send.
 * A body that spells the same bytes only costs its own sender.
 */
export function fleetingSendsIn(update: Uint8Array): number {
  const bytes = Buffer.from(update.buffer, update.byteOffset, update.byteLength)
  let found = 0
  for (let at = bytes.indexOf(FLEETING_PRIORITY); at >= 0; at = bytes.indexOf(FLEETING_PRIORITY, at + 1))
    found++
  return found
}
