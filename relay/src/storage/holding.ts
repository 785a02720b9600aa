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
