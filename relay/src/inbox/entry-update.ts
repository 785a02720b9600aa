import {
  type ConversationHead,
  type ConversationId,
  encodeSyncUpdate,
  type InboxEntry,
  InboxTopLevel,
  type MemberReadState,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import * as Y from "yjs"
import type { DeferTarget } from "../deferred-change.js"
import { DERIVED_ORIGIN } from "../derived-write.js"
import type { DeferredWrites } from "../document-host.js"
import { allocateFramed } from "../ws-frame.js"

/** The bytes of `value` as lib0's `writeAny` writes it. */
const anyBytes = (value: unknown) =>
  encoding.encode((e) => encoding.writeAny(e, value as encoding.AnyEncodable))

/** The bytes of `key` and `value`, as lib0 writes an object's property. */
const propertyBytes = (key: string, value: unknown) =>
  encoding.encode((e) => {
    encoding.writeVarString(e, key)
    encoding.writeAny(e, value as encoding.AnyEncodable)
  })

/** lib0's tag of an object, of an integer (`writeVarInt` follows). */
const ANY_OBJECT = 118
const ANY_INTEGER = 125

/**
 * The entries of one change, encoded for every member from its parts: the
 * head's properties (id, title, participants summary, last message; then
 * last activity, deletion) encoded once as bytes, and per member only its
 * read state (`unread`, `emergency`, `readUpTo`), written straight into the
 * member's buffer. The bytes are what lib0's `writeAny` gives for
 * `entryFromParts(head, state)` (same keys, same order): a message in a big
 * room encodes one entry per connected member, and building each entry as an
 * object and encoding it value by value was most of the work per member.
 */
export class EntryValues {
  /** The head's properties before `unread` (everything up to the last message). */
  private readonly before: Uint8Array
  /** The head's properties after `readUpTo` (`lastActivityAt`, `deleted`). */
  private readonly after: Uint8Array
  /** The head's property count. */
  private readonly headKeys: number

  constructor(readonly head: ConversationHead) {
    const before: Uint8Array[] = []
    const after: Uint8Array[] = []
    let keys = 0
    for (const [key, value] of Object.entries(head.entry)) {
      if (value === undefined) continue
      keys++
      ;(key === "lastActivityAt" || key === "deleted" ? after : before).push(propertyBytes(key, value))
    }
    this.before = concat(before)
    this.after = concat(after)
    this.headKeys = keys
  }

  /** A member's entry value, as `writeAny(entryFromParts(head, state))` encodes it. */
  encode(state: MemberReadState): Uint8Array {
    const value = this.member(state)
    const out = Buffer.allocUnsafe(value.size)
    value.write(out, 0)
    return out
  }

  /**
   * A member's entry value, written where its frame holds it: its size, then
   * writing it (no buffer of its own and no copy per member).
   */
  member(state: MemberReadState): EntryValue {
    return new MemberEntryValue(this.before, this.after, this.headKeys, state)
  }
}

/** One member's entry value: the change's shared bytes around the member's read state. */
class MemberEntryValue implements EntryValue {
  readonly size: number
  private readonly emergency: Uint8Array | undefined
  private readonly keys: number

  constructor(
    private readonly before: Uint8Array,
    private readonly after: Uint8Array,
    headKeys: number,
    private readonly state: MemberReadState,
  ) {
    this.emergency = state.emergency.length > 0 ? propertyBytes("emergency", state.emergency) : undefined
    this.keys = headKeys + 2 + (this.emergency ? 1 : 0)
    this.size =
      1 +
      varUintSize(this.keys) +
      before.length +
      UNREAD_KEY.length +
      anySize(state.unread) +
      (this.emergency?.length ?? 0) +
      READ_UP_TO_KEY.length +
      anySize(state.readUpTo) +
      after.length
  }

  write(out: Uint8Array, at: number): void {
    out[at++] = ANY_OBJECT
    at = putVarUint(out, at, this.keys)
    out.set(this.before, at)
    at += this.before.length
    out.set(UNREAD_KEY, at)
    at = putAny(out, at + UNREAD_KEY.length, this.state.unread)
    if (this.emergency) {
      out.set(this.emergency, at)
      at += this.emergency.length
    }
    out.set(READ_UP_TO_KEY, at)
    at = putAny(out, at + READ_UP_TO_KEY.length, this.state.readUpTo)
    out.set(this.after, at)
  }
}

/** An entry value to write: its size in bytes, and writing it into `out` at `at`. */
export interface EntryValue {
  readonly size: number
  write(out: Uint8Array, at: number): void
}

const UNREAD_KEY = encoding.encode((e) => encoding.writeVarString(e, "unread"))
const READ_UP_TO_KEY = encoding.encode((e) => encoding.writeVarString(e, "readUpTo"))

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const part of parts) {
    out.set(part, at)
    at += part.length
  }
  return out
}

/** Bytes of `n` as lib0's `writeVarUint`. */
function varUintSize(n: number): number {
  let size = 1
  for (; n > 0x7f; n = Math.floor(n / 128)) size++
  return size
}

/** Writes `n` as lib0's `writeVarUint` at `at`; returns the position after it. */
function putVarUint(out: Uint8Array, at: number, n: number): number {
  for (; n > 0x7f; n = Math.floor(n / 128)) out[at++] = 0x80 | (n % 128)
  out[at++] = n
  return at
}

/** Whether lib0 writes `n` as a small integer (tag and `writeVarInt`); read counts and markers are. */
const smallCount = (n: number) => Number.isInteger(n) && n <= 0x7fffffff && (n > 0 || Object.is(n, 0))

/** Bytes of a number as `writeAny` writes it. */
function anySize(n: number): number {
  if (!smallCount(n)) return anyBytes(n).length
  // writeVarInt: 6 bits (and the sign) in the first byte, 7 in each after.
  let size = 2
  for (let rest = n >>> 6; rest > 0; rest >>>= 7) size++
  return size
}

/** Writes a number as `writeAny` at `at`; returns the position after it. */
function putAny(out: Uint8Array, at: number, n: number): number {
  if (!smallCount(n)) {
    const bytes = anyBytes(n)
    out.set(bytes, at)
    return at + bytes.length
  }
  out[at++] = ANY_INTEGER
  let rest = n >>> 6
  out[at++] = (rest > 0 ? 0x80 : 0) | (n & 0x3f)
  for (; rest > 0; rest >>>= 7) out[at++] = (rest > 0x7f ? 0x80 : 0) | (rest & 0x7f)
  return at
}

interface MapInternals {
  readonly _map: Map<string, Y.Item>
}

/** What a pending item's record counts towards the host's bound on deferred writes, beside its value. */
const PENDING_ITEM_BYTES = 32

/** An entry written and not yet applied: an item of the relay's client, at the pending list's base plus its index. */
interface PendingItem {
  readonly key: string
  /** The item it replaces (its last id), or null for a key's first item ever. */
  readonly origin: { readonly client: number; readonly clock: number } | null
  /**
   * Its value (`writeAny` of the entry, from the change's shared bytes and the member's read state:
   * written again when applied, so nothing keeps the frame sent alive), or undefined once a later item
   * of the same key replaced it (then it applies as deleted).
   */
  value: EntryValue | undefined
}

/**
 * Inbox entries sent to an inbox's connections and not yet applied to the
 * relay's copy of it (a {@link DeferredWrites}): successive messages of a big
 * room each replace a connected member's entry, and one Yjs transaction per
 * member and message was most of the inbox upkeep. They are applied as one
 * update: the items of the relay's client in clock order, each replaced one
 * as deleted content (so nothing of it is decoded), the newest of each key
 * with its entry.
 */
class PendingEntries implements DeferredWrites {
  bytes = 0
  readonly items: PendingItem[] = []
  /** Index in {@link items} of each key's newest item. */
  readonly newest = new Map<string, number>()
  /** Items that existed before (not pending) and that pending items replaced. */
  readonly replaced: { readonly client: number; readonly clock: number; readonly length: number }[] = []

  constructor(
    /** The relay's client id in the document. */
    readonly client: number,
    /** Its clock when the first of these was encoded. */
    readonly base: number,
  ) {}

  apply(doc: Y.Doc): void {
    // Written for the state the first was encoded on; anything else would leave them pending in Yjs.
    if (doc.clientID !== this.client || Y.getState(doc.store, this.client) !== this.base)
      throw new Error("deferred inbox entries no longer fit the document")
    const structs = encoding.createEncoder()
    let count = 0
    const { items } = this
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!
      count++
      if (item.value !== undefined) {
        writeItemHead(structs, 8, item.origin, item.key) // ContentAny's ref
        encoding.writeVarUint(structs, 1) // one value
        const value = new Uint8Array(item.value.size)
        item.value.write(value, 0)
        encoding.writeUint8Array(structs, value)
        continue
      }
      // A run of replaced entries of one key, each after the one before: one deleted struct of the
      // run's length, as Yjs merges them once integrated (so a busy room's entry, replaced on every
      // message, costs one struct per application, not one per message).
      let length = 1
      for (let next = items[i + 1]; next !== undefined; next = items[i + 1]) {
        const after = next.origin
        if (next.value !== undefined || next.key !== item.key) break
        if (after === null || after.client !== this.client || after.clock !== this.base + i) break
        i++
        length++
      }
      writeItemHead(structs, 1, item.origin, item.key) // ContentDeleted's ref
      encoding.writeVarUint(structs, length)
    }
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, 1)
    encoding.writeVarUint(encoder, count)
    encoding.writeVarUint(encoder, this.client)
    encoding.writeVarUint(encoder, this.base)
    encoding.writeUint8Array(encoder, encoding.toUint8Array(structs))
    writeDeleteSet(encoder, this.replaced)
    const update = encoding.toUint8Array(encoder)
    // As a local transaction: the items are the document's own client's, which a remote one must not
    // write (Yjs would take it for another client using the id and give the document a new one), and
    // applying an update marks its transaction remote.
    doc.transact((transaction) => {
      Y.applyUpdate(doc, update, DERIVED_ORIGIN)
      transaction.local = true
    }, DERIVED_ORIGIN)
  }
}

/** An item's info byte and where it goes: after `origin`, or first under the entries map's key. */
function writeItemHead(
  encoder: encoding.Encoder,
  contentRef: number,
  origin: { readonly client: number; readonly clock: number } | null,
  key: string,
): void {
  // The content's ref, an origin (bit 8), a parentSub (bit 6).
  encoding.write(encoder, contentRef | (origin ? 0x80 : 0) | 0x20)
  if (origin) {
    encoding.writeVarUint(encoder, origin.client)
    encoding.writeVarUint(encoder, origin.clock)
  } else {
    encoding.writeVarUint(encoder, 1) // the parent is a root type, named
    encoding.writeVarString(encoder, InboxTopLevel.entries)
    encoding.writeVarString(encoder, key)
  }
}

/** A delete set of `ranges` (update format v1), grouped by client. */
function writeDeleteSet(
  encoder: encoding.Encoder,
  ranges: readonly { readonly client: number; readonly clock: number; readonly length: number }[],
): void {
  if (ranges.length <= 1) {
    // A single replacement (every update sent per member): no grouping.
    encoding.writeVarUint(encoder, ranges.length)
    for (const { client, clock, length } of ranges) {
      encoding.writeVarUint(encoder, client)
      encoding.writeVarUint(encoder, 1)
      encoding.writeVarUint(encoder, clock)
      encoding.writeVarUint(encoder, length)
    }
    return
  }
  const byClient = new Map<number, { clock: number; length: number }[]>()
  for (const { client, clock, length } of ranges) {
    let list = byClient.get(client)
    if (!list) {
      list = []
      byClient.set(client, list)
    }
    list.push({ clock, length })
  }
  encoding.writeVarUint(encoder, byClient.size)
  for (const [client, list] of byClient) {
    encoding.writeVarUint(encoder, client)
    encoding.writeVarUint(encoder, list.length)
    for (const { clock, length } of list) {
      encoding.writeVarUint(encoder, clock)
      encoding.writeVarUint(encoder, length)
    }
  }
}

/**
 * Sets `id`'s entry in the inbox `target` holds, without a transaction:
 * returns the sync update frame (`encodeSyncUpdate`) of the update that
 * setting it in a transaction of the relay's client would give (byte for
 * byte), and leaves the item in `target.deferred`, applied with the others
 * when the document is next read (see `DocumentHost.deferred`). `value` is
 * the entry as lib0's `writeAny` encodes it ({@link EntryValues.member}), or
 * undefined to remove it. Undefined when nothing changed. A removal is rare
 * (a member leaving) and goes through a transaction, after the deferred
 * entries.
 */
export function deferEntryReplacement(
  target: DeferTarget,
  id: ConversationId,
  value: EntryValue | undefined,
  origin: unknown,
): Uint8Array | undefined {
  if (!value) return removeEntry(target.doc, id, origin)
  const inbox = target.docAsIs
  let pending = target.deferred instanceof PendingEntries ? target.deferred : undefined
  if (target.deferred !== undefined && pending === undefined) {
    // Someone else's deferred writes: applied first (reading the document does).
    void target.doc
  }
  if (pending !== undefined && pending.client !== inbox.clientID) {
    void target.doc
    pending = undefined
  }
  pending ??= new PendingEntries(inbox.clientID, Y.getState(inbox.store, inbox.clientID))
  const clock = pending.base + pending.items.length
  let left: { readonly client: number; readonly clock: number } | null
  let replaced: { readonly client: number; readonly clock: number; readonly length: number } | undefined
  const previous = pending.newest.get(id)
  if (previous !== undefined) {
    left = { client: pending.client, clock: pending.base + previous }
    replaced = { client: left.client, clock: left.clock, length: 1 }
  } else {
    const old = (inbox.getMap<InboxEntry>(InboxTopLevel.entries) as unknown as MapInternals)._map.get(id)
    left = old ? { client: old.id.client, clock: old.id.clock + old.length - 1 } : null
    replaced =
      old && !old.deleted ? { client: old.id.client, clock: old.id.clock, length: old.length } : undefined
  }
  // The frame, written into one buffer of its exact size: the sync header, then the update (one
  // client, one item: Yjs's writeClientsStructs / Item.write, format v1), then its delete set.
  const head = left === null ? keyedHead(id) : undefined
  const structs =
    2 +
    varUintSize(pending.client) +
    varUintSize(clock) +
    1 +
    (left === null ? head!.length : varUintSize(left.client) + varUintSize(left.clock)) +
    1
  const deletes = replaced
    ? 2 + varUintSize(replaced.client) + varUintSize(replaced.clock) + varUintSize(replaced.length)
    : 1
  const updateLength = structs + value.size + deletes
  // Its WebSocket header is written in front of it, so that a plain socket sends it as one chunk
  // (`sendFramed`). Nothing keeps it once sent (the relay's copy keeps the value's parts, not its bytes),
  // so it may be a slice of Node's shared pool: no buffer of its own allocated per member.
  const frame = allocateFramed(2 + varUintSize(updateLength) + updateLength)
  frame[0] = 0 // y-protocols' sync message
  frame[1] = 2 // its update subtype
  let at = putVarUint(frame, 2, updateLength)
  frame[at++] = 1 // one client
  frame[at++] = 1 // one struct
  at = putVarUint(frame, at, pending.client)
  at = putVarUint(frame, at, clock)
  // ContentAny's ref (8), an origin (bit 8), a parentSub (bit 6).
  frame[at++] = 8 | (left ? 0x80 : 0) | 0x20
  if (left) {
    at = putVarUint(frame, at, left.client)
    at = putVarUint(frame, at, left.clock)
  } else {
    frame.set(head!, at)
    at += head!.length
  }
  frame[at++] = 1 // one value
  value.write(frame, at)
  at += value.size
  if (replaced) {
    frame[at++] = 1 // one client
    at = putVarUint(frame, at, replaced.client)
    frame[at++] = 1 // one range
    at = putVarUint(frame, at, replaced.clock)
    at = putVarUint(frame, at, replaced.length)
  } else {
    frame[at++] = 0
  }
  if (previous !== undefined) {
    const before = pending.items[previous]!
    pending.bytes -= before.value?.size ?? 0
    before.value = undefined
  } else if (replaced) pending.replaced.push(replaced)
  pending.items.push({ key: id, origin: left, value })
  pending.newest.set(id, pending.items.length - 1)
  // What waits is the newest value of each key and a record per item (a replaced one applies as a
  // deleted struct, merged with its run): a room's entry replaced on every message is applied about
  // every 256 messages, not every twenty.
  pending.bytes += value.size + PENDING_ITEM_BYTES
  // Set again: the host bounds what waits (and applies it once it holds enough).
  target.deferred = pending
  return frame
}

/** A first item's parent and key (the entries map, named; the key), as {@link writeItemHead} writes them. */
function keyedHead(key: string): Uint8Array {
  return encoding.encode((e) => {
    encoding.writeVarUint(e, 1) // the parent is a root type, named
    encoding.writeVarString(e, InboxTopLevel.entries)
    encoding.writeVarString(e, key)
  })
}

/**
 * Removes `id`'s entry in a transaction (rare: a member leaving; `doc` has
 * the deferred entries applied first) and returns the sync frame of the
 * update Yjs emitted, or undefined when there was no entry.
 */
function removeEntry(inbox: Y.Doc, id: ConversationId, origin: unknown): Uint8Array | undefined {
  const entries = inbox.getMap<InboxEntry>(InboxTopLevel.entries)
  if (!entries.has(id)) return undefined
  let update: Uint8Array | undefined
  const collect = (emitted: Uint8Array) => {
    update = emitted
  }
  inbox.on("update", collect)
  try {
    inbox.transact(() => entries.delete(id), origin)
  } finally {
    inbox.off("update", collect)
  }
  return update && encodeSyncUpdate(update)
}
