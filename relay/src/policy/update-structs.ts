import * as Y from "yjs"
import { decodeOnce, findByClock } from "../yjs-updates.js"

/**
 * Reading a Yjs update against a document without applying it: which structs
 * Yjs would integrate, where each lands (top-level type and map key), and what
 * its delete set removes. Everything here mirrors what `Y.applyUpdate` does
 * (`Item.getMissing` / `Item.integrate`), so that the checker judges exactly
 * the change the relay would then make, and every lookup is a binary search in
 * one client's struct list: the cost follows the update, not the document.
 */

/** Thrown for anything the checker refuses; carries the rule's name. */
export class Refusal extends Error {
  constructor(
    readonly rule: string,
    readonly reason: string,
  ) {
    super(reason)
  }
}

/** Where an item lives: a top-level type and, for maps, its key. */
export interface Location {
  readonly root: string
  readonly key: string | null
}

/** One clock range of a delete set. */
interface Range {
  readonly clock: number
  readonly len: number
}

type Struct = Y.Item | Y.GC
type StoreInternals = { clients: Map<number, Struct[]> }
type TypeInternals = { _item: Y.Item | null; _map: Map<string, Y.Item> }

const rangeStart = (r: Range) => r.clock
const rangeLength = (r: Range) => r.len
const itemStart = (item: Y.Item) => item.id.clock
const itemLength = (item: Y.Item) => item.length

// Clocks beyond this are refused: honest replicas never get near it, and JS numbers lose precision later.
const MAX_CLOCK = 0xffffffff

/** Length of one client's structs in a store. */
export function storeState(doc: Y.Doc, client: number): number {
  const structs = (doc.store as unknown as StoreInternals).clients.get(client)
  if (!structs || structs.length === 0) return 0
  const last = structs[structs.length - 1]!
  return last.id.clock + last.length
}

/** The struct of the store holding `clock` of `client`, or undefined (Y.getItem throws instead). */
export function storeStruct(doc: Y.Doc, client: number, clock: number): Struct | undefined {
  const structs = (doc.store as unknown as StoreInternals).clients.get(client)
  if (!structs || clock < 0 || clock >= storeState(doc, client)) return undefined
  return structs[Y.findIndexSS(structs as Y.Item[], clock)]
}

/** The value a map item holds (its last element). */
export const mapItemValue = (item: Y.Item): unknown => {
  const content = item.content.getContent()
  return content[content.length - 1]
}

/** The current item of `key` in map `root` (possibly deleted), without scanning. */
export function currentMapItem(doc: Y.Doc, root: string, key: string): Y.Item | undefined {
  const type = doc.share.get(root) as unknown as TypeInternals | undefined
  return type?._map.get(key)
}

/** An item of the update that Yjs would integrate, with the part of it that is new. */
export interface NewItem {
  readonly item: Y.Item
  /** Elements before this offset are already in the document. */
  readonly offset: number
  readonly location: Location
}

/** A live element of the document that the update's delete set removes. */
export interface DeletedElement {
  readonly item: Y.Item
  readonly location: Location
  /** Index of the element inside the item's content. */
  readonly index: number
}

/** The update, read against the document. */
export interface ReadUpdate {
  /** New items in the order Yjs integrates them. */
  readonly items: readonly NewItem[]
  /** Client ids under which the update writes new structs. */
  readonly writers: ReadonlySet<number>
  /** Live elements of the document deleted by the update (array elements and map values). */
  readonly deleted: readonly DeletedElement[]
  /**
   * Map entries of the document the update's delete set covers that were
   * deleted already (a value replaced or removed before): a re-sent delete
   * set, or a removal of what a concurrent write replaced.
   */
  readonly redeleted: readonly Y.Item[]
  /** True when the delete set covers `clock` of `client`. */
  deletes(client: number, clock: number): boolean
}

/**
 * Decodes `update` and works out what applying it to `doc` would integrate and
 * delete. Refuses (throws {@link Refusal} with `schemaRule`) what Yjs could not
 * integrate at once or would integrate somewhere unknown: GC and Skip structs,
 * content other than plain values, nested or unknown parents, structs or
 * deletions depending on changes the document does not have. `isKnownRoot`
 * says which top-level names exist and whether they are maps.
 */
export function readUpdate(
  doc: Y.Doc,
  update: Uint8Array,
  rootKind: (name: string) => "map" | "array" | undefined,
  schemaRule: string,
  workBudget: number,
): ReadUpdate {
  const refuse = (reason: string): never => {
    throw new Refusal(schemaRule, reason)
  }
  let decoded: { structs: (Y.Item | Y.GC | Y.Skip)[]; ds: { clients: Map<number, Range[]> } }
  try {
    decoded = decodeOnce(update) as unknown as typeof decoded
  } catch {
    return refuse("the update cannot be decoded")
  }

  // Group the structs by client, in clock order, as Yjs does.
  const byClient = new Map<number, Y.Item[]>()
  let lastClient: number | undefined
  for (const struct of decoded.structs) {
    const client = struct.id.client
    if (!(struct instanceof Y.Item)) refuse("the update holds garbage-collected or skipped structs")
    const item = struct as Y.Item
    if (!(item.content instanceof Y.ContentAny) && !(item.content instanceof Y.ContentDeleted))
      refuse("only plain values may be written")
    if (item.id.clock + item.length > MAX_CLOCK || item.length < 1) refuse("struct clock out of range")
    if (client !== lastClient && byClient.has(client)) refuse("a client's structs appear twice")
    lastClient = client
    let list = byClient.get(client)
    if (!list) {
      list = []
      byClient.set(client, list)
    }
    list.push(item)
  }

  const initialState = new Map<number, number>()
  const stateAtStart = (client: number) => {
    let s = initialState.get(client)
    if (s === undefined) {
      s = storeState(doc, client)
      initialState.set(client, s)
    }
    return s
  }
  const integrated = new Map<number, number>()
  const known = (client: number) => Math.max(stateAtStart(client), integrated.get(client) ?? 0)

  // Yjs integrates a struct once everything it points to exists; what never
  // becomes integrable would sit in the document as pending structs and enter
  // it later, unchecked. So the whole update must integrate now. A worklist
  // replays Yjs's order: a client blocked on another client's clock waits for
  // that client to advance.
  const blockedOn = (item: Y.Item): number | undefined => {
    if (item.id.clock > known(item.id.client)) return item.id.client
    for (const dep of [item.origin, item.rightOrigin]) {
      if (dep && dep.clock >= known(dep.client)) return dep.client
    }
    return undefined
  }
  const order: Y.Item[] = []
  const next = new Map<number, number>()
  const waiting = new Map<number, number[]>()
  const queue = [...byClient.keys()]
  let remaining = decoded.structs.length
  // Linear for what replicas send; a crafted web of cross-client dependencies must not cost structs².
  let budget = 16 * decoded.structs.length + 1_000
  while (queue.length > 0) {
    const client = queue.pop()!
    const items = byClient.get(client)!
    let i = next.get(client) ?? 0
    const from = i
    while (i < items.length) {
      if (--budget < 0) refuse("the update's structs depend on each other too intricately")
      const item = items[i]!
      const blocker = blockedOn(item)
      if (blocker !== undefined) {
        if (blocker !== client && byClient.has(blocker)) {
          const list = waiting.get(blocker)
          if (list) list.push(client)
          else waiting.set(blocker, [client])
        }
        break
      }
      integrated.set(client, Math.max(known(client), item.id.clock + item.length))
      order.push(item)
      remaining--
      i++
    }
    next.set(client, i)
    const woken = i > from ? waiting.get(client) : undefined
    if (woken) {
      waiting.delete(client)
      queue.push(...woken)
    }
  }
  if (remaining > 0) refuse("the update depends on changes the relay does not have")

  const findUpdateItem = (client: number, clock: number): Y.Item | undefined => {
    const items = byClient.get(client)
    return items && findByClock(items, clock, itemStart, itemLength)
  }

  const roots = new Map<unknown, string>()
  for (const [name, type] of doc.share) roots.set(type, name)
  const storeLocation = (item: Y.Item): Location => {
    const parent = item.parent as unknown as TypeInternals | null
    if (!parent || parent._item !== null) return refuse("nested types are not part of a conversation")
    const root = roots.get(parent)
    if (root === undefined) return refuse("unknown top-level type")
    return { root, key: item.parentSub }
  }

  const locations = new Map<Y.Item, Location>()
  const locate = (id: Y.ID): Location => {
    const struct =
      id.clock < stateAtStart(id.client)
        ? storeStruct(doc, id.client, id.clock)
        : findUpdateItem(id.client, id.clock)
    if (!struct || !(struct instanceof Y.Item)) return refuse("the update points at removed content")
    if (id.clock >= stateAtStart(id.client)) {
      const location = locations.get(struct)
      return location ?? refuse("the update points at content it does not integrate")
    }
    return storeLocation(struct)
  }

  const items: NewItem[] = []
  const writers = new Set<number>()
  for (const item of order) {
    const offset = Math.max(0, stateAtStart(item.id.client) - item.id.clock)
    const parent = item.parent as unknown
    let location: Location
    if (typeof parent === "string") {
      location = { root: parent, key: item.parentSub }
    } else if (parent !== null) {
      return refuse("nested types are not part of a conversation")
    } else {
      // As Yjs: the parent comes from the left neighbour if any, else the right one.
      const left = item.origin ? locate(item.origin) : undefined
      const right = item.rightOrigin ? locate(item.rightOrigin) : undefined
      location = (left ?? right)!
    }
    const kind = rootKind(location.root)
    if (kind === undefined) refuse(`unknown top-level type "${location.root.slice(0, 64)}"`)
    if ((kind === "map") !== (location.key !== null)) refuse(`"${location.root}" used as the wrong type`)
    if (offset >= item.length) continue // Already in the document: Yjs skips it.
    if (offset > 0) {
      // Yjs continues such an item after its own known part: both must agree on where it lives.
      const previous = storeStruct(doc, item.id.client, item.id.clock + offset - 1)
      const there = previous instanceof Y.Item ? storeLocation(previous) : undefined
      if (!there || there.root !== location.root || there.key !== location.key)
        refuse("the update continues an item somewhere else")
    }
    locations.set(item, location)
    writers.add(item.id.client)
    items.push({ item, offset, location })
  }

  // The delete set, sorted and merged per client for binary search.
  const ranges = new Map<number, Range[]>()
  for (const [client, list] of decoded.ds.clients) {
    // Yjs cannot even re-encode an empty range it has to keep for later: it throws mid-transaction.
    if (list.some((r) => !(r.len > 0))) refuse("the delete set holds an empty range")
    const sorted = [...list].sort((a, b) => a.clock - b.clock)
    const merged: Range[] = []
    for (const r of sorted) {
      const last = merged[merged.length - 1]
      if (last && r.clock <= last.clock + last.len) {
        merged[merged.length - 1] = {
          clock: last.clock,
          len: Math.max(last.len, r.clock + r.len - last.clock),
        }
      } else merged.push({ clock: r.clock, len: r.len })
    }
    // Deletions of structs Yjs does not have would wait in the document and strike later.
    for (const r of merged)
      if (r.clock + r.len > known(client)) refuse("the update deletes content the relay does not have")
    if (merged.length > 0) ranges.set(client, merged)
  }
  const deletes = (client: number, clock: number): boolean => {
    const list = ranges.get(client)
    return list !== undefined && findByClock(list, clock, rangeStart, rangeLength) !== undefined
  }

  // Live elements of the document the delete set removes.
  const deleted: DeletedElement[] = []
  const redeleted: Y.Item[] = []
  let work = 0
  for (const [client, list] of ranges) {
    const structs = (doc.store as unknown as StoreInternals).clients.get(client)
    const end = stateAtStart(client)
    if (!structs) continue
    for (const r of list) {
      if (r.clock >= end) continue
      const stop = Math.min(end, r.clock + r.len)
      for (let i = Y.findIndexSS(structs as Y.Item[], r.clock); i < structs.length; i++) {
        const struct = structs[i]!
        if (struct.id.clock >= stop) break
        if (++work > workBudget) refuse("the update deletes too much at once")
        if (!(struct instanceof Y.Item)) continue
        if (struct.deleted) {
          if (struct.parentSub !== null) redeleted.push(struct)
          continue
        }
        const location = storeLocation(struct)
        const from = Math.max(r.clock, struct.id.clock) - struct.id.clock
        const to = Math.min(stop, struct.id.clock + struct.length) - struct.id.clock
        for (let index = from; index < to; index++) {
          if (++work > workBudget) refuse("the update deletes too much at once")
          deleted.push({ item: struct, location, index })
        }
      }
    }
  }
  return { items, writers, deleted, redeleted, deletes }
}
