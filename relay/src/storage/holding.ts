/**
 * Whether a document's stored form (snapshot, log entries) holds one of
 * `needles` anywhere: the byte search `RelayStorage.holding` answers, for a
 * storage that keeps the bytes in the process (memory), and for the relay's
 * own fallback over `load` when a storage does not search itself.
 */
export function storedHolds(
  stored: {
    readonly snapshot: Uint8Array | null
    readonly updates: readonly { readonly update: Uint8Array }[]
  },
  needles: readonly Uint8Array[],
): boolean {
  const holds = (bytes: Uint8Array) => {
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    return needles.some((needle) => buffer.indexOf(needle) >= 0)
  }
  return (stored.snapshot !== null && holds(stored.snapshot)) || stored.updates.some((u) => holds(u.update))
}

/**
 * What lib0's `writeAny` writes before a string under the key `id`: the
 * key's length (2) and text, then the tag of a string (119). A message
 * preview in an inbox entry is such an object; so is a message id anywhere
 * the document model stores one in a JSON value.
 */
const ID_KEY = Buffer.from([2, 0x69, 0x64, 119])
/** Message ids are at most 64 characters: their length is one byte. */
const LONGEST_ID = 64

/**
 * Whether a document's stored form holds a JSON value whose `id` is one of
 * `ids`: one pass over its bytes for the key, whatever the number of ids,
 * where {@link storedHolds} passes over them once per needle. Used to find
 * the inboxes that showed one of many deleted messages (a batch of
 * deletions in a big room) without loading any of them as a document.
 */
export function storedShowsId(
  stored: {
    readonly snapshot: Uint8Array | null
    readonly updates: readonly { readonly update: Uint8Array }[]
  },
  ids: ReadonlySet<string>,
): boolean {
  const shows = (bytes: Uint8Array) => {
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    for (let at = buffer.indexOf(ID_KEY); at >= 0; at = buffer.indexOf(ID_KEY, at + ID_KEY.length)) {
      const length = buffer[at + ID_KEY.length]!
      const start = at + ID_KEY.length + 1
      if (
        length <= LONGEST_ID &&
        start + length <= buffer.length &&
        ids.has(buffer.toString("latin1", start, start + length))
      )
        return true
    }
    return false
  }
  return (stored.snapshot !== null && shows(stored.snapshot)) || stored.updates.some((u) => shows(u.update))
}
