/**
 * Hand-written Yjs v1 updates, byte by byte, for shapes no honest replica
 * produces: thousands of client ids, siblings at one position, items deleted
 * on arrival, long chains on one map key, delete sets in confetti. The frame
 * cost tests and `npm run bench:frames` both build their attacks from here.
 */
import * as encoding from "lib0/encoding"

/** A Yjs id (client, clock). */
export interface Id {
  readonly client: number
  readonly clock: number
}

/** What a crafted struct holds. */
export type CraftedContent =
  | { readonly kind: "any"; readonly values: readonly unknown[] }
  /** Content-any values already encoded (`writeAny`), `count` of them: shapes `writeAny` cannot write. */
  | { readonly kind: "encoded-any"; readonly count: number; readonly bytes: Uint8Array }
  | { readonly kind: "json"; readonly texts: readonly string[] }
  | { readonly kind: "doc"; readonly guid: string; readonly options: unknown }
  | { readonly kind: "deleted"; readonly length: number }
  | { readonly kind: "string"; readonly text: string }
  | { readonly kind: "type"; readonly typeRef: number }
  | { readonly kind: "gc"; readonly length: number }
  | { readonly kind: "skip"; readonly length: number }

/** One struct; without origins it names its parent (a top-level type) and, for maps, its key. */
export interface CraftedStruct {
  readonly origin?: Id
  readonly rightOrigin?: Id
  readonly parent?: string
  readonly parentId?: Id
  readonly key?: string
  readonly content: CraftedContent
}

/** The structs of one client, from `clock` on. */
export interface CraftedClient {
  readonly client: number
  readonly clock: number
  readonly structs: readonly CraftedStruct[]
}

/** One delete-set range. */
export interface CraftedRange {
  readonly client: number
  readonly clock: number
  readonly length: number
}

const contentLength = (c: CraftedContent): number => {
  switch (c.kind) {
    case "any":
      return c.values.length
    case "encoded-any":
      return c.count
    case "json":
      return c.texts.length
    case "doc":
      return 1
    case "string":
      return c.text.length
    case "type":
      return 1
    default:
      return c.length
  }
}

/** Clock length of a struct. */
export const structLength = (s: CraftedStruct): number => contentLength(s.content)

const writeId = (encoder: encoding.Encoder, id: Id) => {
  encoding.writeVarUint(encoder, id.client)
  encoding.writeVarUint(encoder, id.clock)
}

/** Encodes a v1 update from structs per client and a delete set, as `Y.encodeStateAsUpdate` lays one out. */
export function encodeCraftedUpdate(
  clients: readonly CraftedClient[],
  deletes: readonly CraftedRange[] = [],
) {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, clients.length)
  for (const { client, clock, structs } of clients) {
    encoding.writeVarUint(encoder, structs.length)
    encoding.writeVarUint(encoder, client)
    encoding.writeVarUint(encoder, clock)
    for (const s of structs) {
      const c = s.content
      if (c.kind === "gc" || c.kind === "skip") {
        encoding.writeUint8(encoder, c.kind === "gc" ? 0 : 10)
        encoding.writeVarUint(encoder, c.length)
        continue
      }
      const ref = { deleted: 1, json: 2, string: 4, type: 7, any: 8, "encoded-any": 8, doc: 9 }[c.kind]
      const info = ref | (s.origin ? 0x80 : 0) | (s.rightOrigin ? 0x40 : 0) | (s.key !== undefined ? 0x20 : 0)
      encoding.writeUint8(encoder, info)
      if (s.origin) writeId(encoder, s.origin)
      if (s.rightOrigin) writeId(encoder, s.rightOrigin)
      if (!s.origin && !s.rightOrigin) {
        if (s.parentId) {
          encoding.writeVarUint(encoder, 0)
          writeId(encoder, s.parentId)
        } else {
          encoding.writeVarUint(encoder, 1)
          encoding.writeVarString(encoder, s.parent ?? "messages")
        }
        if (s.key !== undefined) encoding.writeVarString(encoder, s.key)
      }
      switch (c.kind) {
        case "deleted":
          encoding.writeVarUint(encoder, c.length)
          break
        case "string":
          encoding.writeVarString(encoder, c.text)
          break
        case "type":
          encoding.writeVarUint(encoder, c.typeRef)
          break
        case "any":
          encoding.writeVarUint(encoder, c.values.length)
          for (const v of c.values) encoding.writeAny(encoder, v as never)
          break
        case "encoded-any":
          encoding.writeVarUint(encoder, c.count)
          encoding.writeUint8Array(encoder, c.bytes)
          break
        case "json":
          encoding.writeVarUint(encoder, c.texts.length)
          for (const text of c.texts) encoding.writeVarString(encoder, text)
          break
        case "doc":
          encoding.writeVarString(encoder, c.guid)
          encoding.writeAny(encoder, c.options as never)
          break
      }
    }
  }
  const byClient = new Map<number, CraftedRange[]>()
  for (const r of deletes) {
    const list = byClient.get(r.client)
    if (list) list.push(r)
    else byClient.set(r.client, [r])
  }
  encoding.writeVarUint(encoder, byClient.size)
  for (const [client, ranges] of byClient) {
    encoding.writeVarUint(encoder, client)
    encoding.writeVarUint(encoder, ranges.length)
    for (const r of ranges) {
      encoding.writeVarUint(encoder, r.clock)
      encoding.writeVarUint(encoder, r.length)
    }
  }
  return encoding.toUint8Array(encoder)
}

/** Every clock range a crafted client writes, as delete-set ranges (the "deleted on arrival" half). */
export function rangesOf(clients: readonly CraftedClient[]): CraftedRange[] {
  return clients.map(({ client, clock, structs }) => ({
    client,
    clock,
    length: structs.reduce((sum, s) => sum + structLength(s), 0),
  }))
}
