import {
  type ConversationId,
  type Decision,
  InboxTopLevel,
  isConversationId,
  isPlainJson,
  Rule,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { mapItemValue, Refusal, readUpdate } from "../policy/update-structs.js"
import type { Principal } from "../principal.js"

/**
 * Most mute flags an inbox holds under keys it shows no entry under: a user
 * may mute a conversation their inbox does not list yet (created on this
 * device a moment ago), but flags under ids of their choosing were kept
 * without bound (an outside probe stored 199,200, and each load of that
 * inbox cost the relay 2.2 s and 230 MB).
 */
export const MAX_UNLISTED_MUTES = 64

const rootKind = (name: string): "map" | "array" | undefined =>
  name === InboxTopLevel.entries || name === InboxTopLevel.muted ? "map" : undefined

/**
 * Who may change an inbox document: the relay writes everything; the inbox's
 * own user writes their `muted` preferences (a conversation id → `true`, or
 * removing one) and may hand entries back (keyed by conversation id). Entries
 * are derived data the relay does not always store at once (`LiveInbox`): a
 * device that synced one the relay then lost (it crashed before the inbox, or
 * even the entry's key, was stored; or an operator restored a backup) sends
 * it back on reconnecting, and refusing that would lock the device out of its
 * own inbox for good (every later sync sends it again). So any entry is
 * accepted, and `LiveInbox` then settles it: one under a key the inbox shows
 * now is derived again from its conversation; any other is removed again
 * without loading anything (see {@link entriesHandedBack}), so a forged entry
 * misleads nobody but its writer, and only until then. Anyone else may not
 * write at all.
 */
export function checkInboxUpdate(input: {
  readonly doc: Y.Doc
  readonly update: Uint8Array
  readonly principal: Principal
  readonly owner: UserId
}): Decision {
  const { doc, update, principal, owner } = input
  if (principal.kind === "relay") return { allowed: true }
  if (principal.kind !== "user" || principal.user !== owner)
    return { allowed: false, rule: Rule.relayOnly, reason: "only the relay and its user write an inbox" }
  try {
    const read = readUpdate(doc, update, rootKind, Rule.schema, 10_000 + 64 * update.length)
    for (const { item, location } of read.items) {
      if (location.key === null || !isConversationId(location.key))
        throw new Refusal(Rule.schema, "an inbox is keyed by conversation id")
      // As in conversations: one value per item (deleting part of an item of two left its second
      // half under the key, an entry of the user's the relay took for its own), written after the
      // key's value (one with a right origin lands deleted, and would be counted as set).
      if (item.content instanceof Y.ContentAny && item.length !== 1)
        throw new Refusal(Rule.schema, "an inbox entry or muted flag holds one value")
      if (item.rightOrigin !== null)
        throw new Refusal(Rule.schema, "a map entry is written after the key's value, never before it")
      // Garbage-collected content holds nothing; a value deleted on arrival is judged like any other.
      if (item.content instanceof Y.ContentDeleted) continue
      const value = mapItemValue(item)
      if (location.root === InboxTopLevel.muted && value !== true)
        throw new Refusal(Rule.schema, "a muted flag is true or absent")
      if (location.root === InboxTopLevel.entries) {
        if (typeof value !== "object" || value === null)
          throw new Refusal(Rule.schema, "an inbox entry is an object")
        // As in conversations: a bigint (or bytes, undefined) made the relay's rewrite of the entry
        // throw, and the user's forged entry stayed shown until the conversation next changed.
        if (!isPlainJson(value)) throw new Refusal(Rule.schema, "values are plain JSON only")
      }
    }
    return { allowed: true }
  } catch (error) {
    if (error instanceof Refusal) return { allowed: false, rule: error.rule as Rule, reason: error.reason }
    return { allowed: false, rule: Rule.schema, reason: "the update is malformed" }
  }
}

/** What the relay does with the entries a user's own write to their inbox touched. */
export interface HandedBack {
  /** Keys whose entry the inbox shows now (the user is in the conversation): derived again. */
  readonly derive: readonly ConversationId[]
  /**
   * Keys whose shown entry the write removes and puts nothing under: left
   * removed until the relay next writes the entry (the conversation changes,
   * or the next whole-inbox derivation). No device removes an entry the relay
   * has (membership is the relay's): deriving each again at once let one
   * frame of removals buy a derivation, a conversation load and a rewritten
   * entry per conversation, again and again.
   */
  readonly removed: readonly ConversationId[]
  /**
   * Keys the inbox shows no entry under (never written, or removed): the
   * items the write puts there, by `client:clock`, which the relay removes
   * again once it is stored (those items only: an entry the relay writes
   * meanwhile, recovering a membership a crash lost, stays).
   */
  readonly remove: ReadonlyMap<ConversationId, ReadonlySet<string>>
  /**
   * When the write sets a mute flag under a key the inbox lists no entry of
   * the relay's under (none, or one of the user's own the relay is to
   * remove): how many such flags the inbox would hold after it (see
   * {@link MAX_UNLISTED_MUTES}).
   */
  readonly unlistedMutes?: number
}

/** An item's id as {@link HandedBack.remove} lists it. */
export const itemKey = (item: Y.Item): string => `${item.id.client}:${item.id.clock}`

/**
 * Sorts the entries `update` (already allowed by {@link checkInboxUpdate})
 * writes or removes in `doc`, the inbox before it. Deriving an entry loads
 * its conversation, so only keys the inbox shows an entry under now are
 * derived (conversations the relay holds the user to be in): under keys of
 * the user's choosing, one cheap write would make the relay load any
 * conversation from storage. An entry under any other key is either the
 * device's copy of one the relay lost (its membership is written again when
 * the relay recovers the change that made it, `inboxTarget`) or a forgery:
 * removed either way. Empty for what it cannot read (it was refused then).
 */
export function entriesHandedBack(
  doc: Y.Doc,
  update: Uint8Array,
  /**
   * Whether the relay is to remove the item `item` (by {@link itemKey}) under `key` again: an earlier
   * write of the user's put it under a key the inbox showed nothing under. Such an entry is shown
   * until it is removed, but it is the user's, not the relay's: a second write to its key (or its
   * deletion) before then must not count it as the user's membership.
   */
  pendingRemoval: (key: ConversationId, item: string) => boolean = () => false,
): HandedBack {
  const derive = new Set<ConversationId>()
  const removed = new Set<ConversationId>()
  const remove = new Map<ConversationId, Set<string>>()
  try {
    const read = readUpdate(doc, update, rootKind, Rule.schema, 10_000 + 64 * update.length)
    const entries = (doc.getMap(InboxTopLevel.entries) as unknown as { readonly _map: Map<string, Y.Item> })
      ._map
    // Shown now, and put there by the relay (not by a write of the user's it is about to remove).
    const shown = (key: ConversationId) => {
      const current = entries.get(key)
      return current !== undefined && !current.deleted && !pendingRemoval(key, itemKey(current))
    }
    for (const { item, location } of read.items) {
      if (location.root !== InboxTopLevel.entries || location.key === null || !isConversationId(location.key))
        continue
      if (shown(location.key)) derive.add(location.key)
      else {
        let items = remove.get(location.key)
        if (!items) {
          items = new Set()
          remove.set(location.key, items)
        }
        items.add(itemKey(item))
      }
    }
    // A removal of a shown entry with nothing written under its key derives nothing (see `removed`);
    // one that comes with a new entry (a device's copy of later writes the relay lost) is derived above.
    for (const { location } of read.deleted)
      if (
        location.root === InboxTopLevel.entries &&
        location.key !== null &&
        isConversationId(location.key) &&
        shown(location.key) &&
        !derive.has(location.key) &&
        !remove.has(location.key)
      )
        removed.add(location.key)
    // Mute flags under keys with no entry of the relay's: counted once the write sets one.
    const unlisted = (key: string) => !shown(key as ConversationId) || remove.has(key as ConversationId)
    const setsUnlisted = read.items.some(
      ({ item, location }) =>
        location.root === InboxTopLevel.muted &&
        location.key !== null &&
        !(item.content instanceof Y.ContentDeleted) &&
        !read.deletes(item.id.client, item.id.clock) &&
        unlisted(location.key),
    )
    if (setsUnlisted) {
      const muted = new Set<string>()
      for (const key of doc.getMap(InboxTopLevel.muted).keys()) if (unlisted(key)) muted.add(key)
      for (const { location } of read.deleted)
        if (location.root === InboxTopLevel.muted && location.key !== null) muted.delete(location.key)
      for (const { item, location } of read.items)
        if (
          location.root === InboxTopLevel.muted &&
          location.key !== null &&
          !(item.content instanceof Y.ContentDeleted) &&
          !read.deletes(item.id.client, item.id.clock) &&
          unlisted(location.key)
        )
          muted.add(location.key)
      return { derive: [...derive], removed: [...removed], remove, unlistedMutes: muted.size }
    }
  } catch {
    return { derive: [], removed: [], remove: new Map() }
  }
  return { derive: [...derive], removed: [...removed], remove }
}
