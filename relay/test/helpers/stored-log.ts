import * as Y from "yjs"

/**
 * The Yjs structs stored more than once across a document's stored log, as
 * `client:clock` ranges: empty when every change was stored exactly once. A
 * re-sent update the relay stored again would show up here even though Yjs
 * hides the duplicate from anyone reading the document.
 */
export function storedTwice(updates: readonly Uint8Array[]): string[] {
  const seen = new Map<number, [number, number][]>()
  const twice: string[] = []
  for (const update of updates) {
    for (const struct of Y.decodeUpdate(update).structs) {
      if (!(struct instanceof Y.Item)) continue
      const { client, clock } = struct.id
      const ranges = seen.get(client) ?? []
      const end = clock + struct.length
      if (ranges.some(([from, to]) => clock < to && from < end)) twice.push(`${client}:${clock}`)
      ranges.push([clock, end])
      seen.set(client, ranges)
    }
  }
  return twice
}
