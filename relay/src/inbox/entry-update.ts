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
  // writeVarInt: 6 bits (and the sign) in the first byte, 7 in each after. Every comparison runs
  // whatever `n` is: a loop's body first run when a count passes 63 sent the optimized callers (the
  // whole per-member path) back to the interpreter, to be compiled again.
  return 2 + (n > 0x3f ? 1 : 0) + (n > 0x1fff ? 1 : 0) + (n > 0xfffff ? 1 : 0) + (n > 0x7ffffff ? 1 : 0)
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

/** An item's id: its client and clock. */
interface ItemId {
  readonly client: number
  readonly clock: number
}

/**
 * Entries written and not yet applied, as runs: items of the relay's client
 * at consecutive clocks, all of one key, each replacing the one before it (a
 * busy room's entry replaced on every message is one run, however many
 * messages wait). Only the run's newest item can still hold a value; the
 * others apply as one deleted struct, as Yjs merges them once integrated.
 */
interface PendingRun {
  readonly key: string
  /** Its first item's index among the pending items (its clock is the pending list's base plus it). */
  readonly start: number
  /** The item its first item replaces (its last id), or null for a key's first item ever. */
  readonly origin: ItemId | null
  /** Items in the run. */
  length: number
  /**
   * Its newest item's value (`writeAny` of the entry, from the change's shared bytes and the member's
   * read state: written again when applied, so nothing keeps the frame sent alive), or undefined once
   * an item of a later run replaced it (then the whole run applies as deleted).
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
 * with its entry. Kept as runs ({@link PendingRun}): an entry that replaces
 * the newest pending item lengthens its run and keeps no record of its own,
 * so what waits is no garbage the collector copies from message to message.
 */
class PendingEntries implements DeferredWrites {
  bytes = 0
  /** Items pending, over all runs. */
  count = 0
  readonly runs: PendingRun[] = []
  /** Index in {@link runs} of the run holding each key's newest item. */
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
    for (const run of this.runs) {
      // The replaced items of the run: one deleted struct of their length, after the run's origin.
      const deleted = run.value === undefined ? run.length : run.length - 1
      if (deleted > 0) {
        count++
        writeItemHead(structs, 1, run.origin, run.key) // ContentDeleted's ref
        encoding.writeVarUint(structs, deleted)
      }
      if (run.value === undefined) continue
      count++
      const origin =
        deleted > 0 ? { client: this.client, clock: this.base + run.start + deleted - 1 } : run.origin
      writeItemHead(structs, 8, origin, run.key) // ContentAny's ref
      encoding.writeVarUint(structs, 1) // one value
      // A Buffer, as the frames the values are otherwise written into are: one kind of array for the
      // writers (an optimized writer meeting another kind is compiled again).
      const value = Buffer.allocUnsafe(run.value.size)
      run.value.write(value, 0)
      encoding.writeUint8Array(structs, value)
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
  const clock = pending.base + pending.count
  // The item this one replaces, its last id (leftClock < 0: none, the key's first item ever), and
  // what the update deletes (replacedLength 0: nothing), as numbers: no objects per member.
  let leftClient = 0
  let leftClock = -1
  let replacedClient = 0
  let replacedClock = 0
  let replacedLength = 0
  const previous = pending.newest.get(id)
  if (previous !== undefined) {
    const run = pending.runs[previous]!
    leftClient = pending.client
    leftClock = pending.base + run.start + run.length - 1
    replacedClient = leftClient
    replacedClock = leftClock
    replacedLength = 1
  } else {
    const old = (inbox.getMap<InboxEntry>(InboxTopLevel.entries) as unknown as MapInternals)._map.get(id)
    if (old) {
      leftClient = old.id.client
      leftClock = old.id.clock + old.length - 1
      if (!old.deleted) {
        replacedClient = old.id.client
        replacedClock = old.id.clock
        replacedLength = old.length
      }
    }
  }
  // The frame, written into one buffer of its exact size: the sync header, then the update (one
  // client, one item: Yjs's writeClientsStructs / Item.write, format v1), then its delete set.
  const head = leftClock < 0 ? keyedHead(id) : undefined
  const structs =
    2 +
    varUintSize(pending.client) +
    varUintSize(clock) +
    1 +
    (head !== undefined ? head.length : varUintSize(leftClient) + varUintSize(leftClock)) +
    1
  const deletes =
    replacedLength > 0
      ? 2 + varUintSize(replacedClient) + varUintSize(replacedClock) + varUintSize(replacedLength)
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
  frame[at++] = 8 | (head === undefined ? 0x80 : 0) | 0x20
  if (head === undefined) {
    at = putVarUint(frame, at, leftClient)
    at = putVarUint(frame, at, leftClock)
  } else {
    frame.set(head, at)
    at += head.length
  }
  frame[at++] = 1 // one value
  value.write(frame, at)
  at += value.size
  if (replacedLength > 0) {
    frame[at++] = 1 // one client
    at = putVarUint(frame, at, replacedClient)
    frame[at++] = 1 // one range
    at = putVarUint(frame, at, replacedClock)
    at = putVarUint(frame, at, replacedLength)
  } else {
    frame[at++] = 0
  }
  const { runs } = pending
  if (previous !== undefined) {
    const run = runs[previous]!
    pending.bytes -= run.value?.size ?? 0
    if (previous === runs.length - 1) {
      // It replaces the newest pending item (the common case: the room's entry replaced on each of
      // its messages): its run grows by one.
      run.length++
      run.value = value
    } else {
      run.value = undefined
      pending.newest.set(id, runs.length)
      runs.push({
        key: id,
        start: pending.count,
        origin: { client: leftClient, clock: leftClock },
        length: 1,
        value,
      })
    }
  } else {
    if (replacedLength > 0)
      pending.replaced.push({ client: replacedClient, clock: replacedClock, length: replacedLength })
    pending.newest.set(id, runs.length)
    runs.push({
      key: id,
      start: pending.count,
      origin: leftClock < 0 ? null : { client: leftClient, clock: leftClock },
      length: 1,
      value,
    })
  }
  pending.count++
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
