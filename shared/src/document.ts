import type * as Y from "yjs"
import { type EditRecord, type ParticipantRecord, TopLevel, type UnpinRecord } from "./schema.js"

/** The typed top-level types of a conversation document. */
export interface ConversationTypes {
  readonly meta: Y.Map<unknown>
  readonly participants: Y.Map<ParticipantRecord>
  /** Stored records (see `StoredMessage`); read them with `decodeStoredRecord`. */
  readonly messages: Y.Array<unknown>
  readonly edits: Y.Map<EditRecord>
  readonly reactions: Y.Map<number>
  readonly read: Y.Map<number>
  readonly delivered: Y.Map<number>
  readonly order: Y.Array<string>
  /** Sealed segments' summaries (see `history.ts`), oldest first. */
  readonly segments: Y.Array<unknown>
  /** Deletions of sealed messages (see `history.ts`). */
  readonly tombstones: Y.Map<unknown>
  /** Sticky messages unpinned (see `priorities.ts`). */
  readonly unpinned: Y.Map<UnpinRecord>
  /** Copies of sealed sticky messages, written by the relay (see `priorities.ts`). */
  readonly pins: Y.Map<unknown>
}

const cache = new WeakMap<Y.Doc, ConversationTypes>()

/** The top-level types of `doc`, typed. Getting them writes nothing. */
export function typesOf(doc: Y.Doc): ConversationTypes {
  let types = cache.get(doc)
  if (!types) {
    types = {
      meta: doc.getMap(TopLevel.meta),
      participants: doc.getMap(TopLevel.participants),
      messages: doc.getArray(TopLevel.messages),
      edits: doc.getMap(TopLevel.edits),
      reactions: doc.getMap(TopLevel.reactions),
      read: doc.getMap(TopLevel.read),
      delivered: doc.getMap(TopLevel.delivered),
      order: doc.getArray(TopLevel.order),
      segments: doc.getArray(TopLevel.segments),
      tombstones: doc.getMap(TopLevel.tombstones),
      unpinned: doc.getMap(TopLevel.unpinned),
      pins: doc.getMap(TopLevel.pins),
    }
    cache.set(doc, types)
  }
  return types
}

/** A user's markers, as sequence numbers (0 = nothing yet). */
export interface Markers {
  readonly read: number
  readonly delivered: number
}
