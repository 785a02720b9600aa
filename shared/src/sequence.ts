import * as Y from "yjs"
import { typesOf } from "./document.js"
import { sealedHistory, sealedThrough } from "./history.js"
import type { MessageId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import { decodeStoredRecord, encodeSequenceRecord, isDeletedRecord } from "./schema.js"
import { contentOf, inListOrder } from "./transaction-changes.js"

/**
 * Ids among `candidates` (default: the whole document) that are in the
 * document and have no sequence number yet, in canonical (array) order.
 */
export function unsequencedMessages(doc: Y.Doc, candidates?: Iterable<MessageId>): MessageId[] {
  const index = messageIndex(doc)
  // A sealed message was numbered before it was sealed (a placeholder for it is a late deletion).
  const sealed = sealedHistory(doc)
  if (!candidates) return index.unsequenced().filter((id) => !sealed.entry(id))
  const wanted = new Set<MessageId>()
  for (const id of candidates) {
    if (!index.seqOf.has(id) && (index.records.has(id) || index.deleted.has(id)) && !sealed.entry(id))
      wanted.add(id)
  }
  if (wanted.size <= 1) return [...wanted]
  return index.unsequenced().filter((id) => wanted.has(id))
}

/** How many `order` records one writer's client id appends before it hands over to the other. */
export const SEQUENCE_RUN_LENGTH = 256

/** The two client ids a document's sequence writer alternates between, and where it is. */
interface SequenceWriter {
  readonly ids: readonly [number, number]
  current: 0 | 1
  written: number
}

const writers = new WeakMap<Y.Doc, SequenceWriter>()

/**
 * Gives `ids` the numbers `from`, `from + 1`, ... in one record of the `order`
 * array. Called by the relay only (the rules refuse it from anyone else), after
 * it has reserved the numbers from its sequencer.
 *
 * Yjs merges consecutive array items of one client by concatenating their
 * content, so a single writer appending forever makes each append cost the
 * length of its run. Taking a fresh client id every so often bounds the run but
 * adds a client to the document for good, and Yjs does work proportional to the
 * number of clients in every transaction on every replica. So the writer
 * alternates between two client ids, switching every {@link SEQUENCE_RUN_LENGTH}
 * records: an item whose left neighbour belongs to the other id never merges,
 * which bounds every run, and the document gains two clients per writer instead
 * of one per run. The caller (the relay) binds every client id it writes under
 * to itself.
 */
export function writeSequenceNumbers(
  doc: Y.Doc,
  from: number,
  ids: readonly MessageId[],
  origin?: unknown,
): void {
  if (ids.length === 0) return
  const writer = writerOf(doc)
  if (writer.written === SEQUENCE_RUN_LENGTH) {
    writer.current = writer.current === 0 ? 1 : 0
    writer.written = 0
  }
  writer.written++
  doc.clientID = writer.ids[writer.current]!
  doc.transact(() => typesOf(doc).order.push([encodeSequenceRecord({ from, ids })]), origin)
}

/**
 * Numbers, inside the running `transaction`, the messages it added so far
 * under `clients` (live records without a number, in list order), as
 * {@link writeSequenceNumbers} would after it: the relay applies a client's
 * update and sequences what it brought in ONE Yjs transaction, so that one
 * update is stored and broadcast for both. Works before the transaction ends
 * (the message index, kept current by observers, has not seen the new records
 * yet, and no number can have been given to them). `earlier`: messages of
 * the same batch applied before the transaction, still without a number, in
 * canonical order (see {@link unsequencedMessages}), numbered first in the
 * same record. A deletion placeholder without a number among the new records
 * (one may stand for a sealed message, and it takes its place in the order)
 * leaves everything to {@link unsequencedMessages}' caller: nothing is
 * numbered. Returns the ids numbered.
 */
export function sequenceAddedMessages(
  doc: Y.Doc,
  transaction: Y.Transaction,
  clients: Iterable<number>,
  reserve: (count: number) => number,
  origin?: unknown,
  earlier: readonly MessageId[] = [],
): MessageId[] {
  const messages = typesOf(doc).messages as Y.AbstractType<unknown>
  const added: Y.Item[] = []
  for (const client of clients) {
    const before = transaction.beforeState.get(client) ?? 0
    const structs = doc.store.clients.get(client)
    if (!structs || Y.getState(doc.store, client) <= before) continue
    for (let i = Y.findIndexSS(structs, before); i < structs.length; i++) {
      const struct = structs[i]!
      if (
        struct instanceof Y.Item &&
        struct.parent === messages &&
        !struct.deleted &&
        struct.id.clock >= before
      )
        added.push(struct)
    }
  }
  if (added.length === 0 && earlier.length === 0) return []
  const index = messageIndex(doc)
  const sealed = sealedHistory(doc)
  const ids = new Set<MessageId>(earlier)
  for (const value of contentOf(inListOrder(added))) {
    const record = decodeStoredRecord(value)
    if (!record || typeof record.id !== "string" || index.seqOf.has(record.id)) continue
    if (isDeletedRecord(record)) {
      if (!index.records.has(record.id) && !ids.has(record.id)) return []
      continue
    }
    if (!sealed.entry(record.id)) ids.add(record.id)
  }
  if (ids.size > 0) writeSequenceNumbers(doc, reserve(ids.size), [...ids], origin)
  return [...ids]
}

const freshClientId = (): number => crypto.getRandomValues(new Uint32Array(1))[0]!

function writerOf(doc: Y.Doc): SequenceWriter {
  let writer = writers.get(doc)
  if (!writer) {
    writer = { ids: [doc.clientID, freshClientId()], current: 0, written: 0 }
    writers.set(doc, writer)
  }
  return writer
}

/**
 * The client ids {@link writeSequenceNumbers} writes `doc`'s sequence records
 * under (chosen on first use: the document's own id and one more), so that the
 * relay can bind both to itself before it ever writes under the second.
 */
export const sequenceWriterIds = (doc: Y.Doc): readonly number[] => writerOf(doc).ids

/**
 * Gives every not-yet-sequenced message among `candidates` (default: all) the
 * next numbers, taken from `reserve(count)` which returns the first of `count`
 * consecutive numbers. Returns the ids sequenced, in order.
 */
export function assignSequenceNumbers(
  doc: Y.Doc,
  reserve: (count: number) => number,
  candidates?: Iterable<MessageId>,
  origin?: unknown,
): MessageId[] {
  const ids = unsequencedMessages(doc, candidates)
  if (ids.length > 0) writeSequenceNumbers(doc, reserve(ids.length), ids, origin)
  return ids
}

/** A `reserve` function for a single writer: continues from the document's highest number. */
export function nextFromDocument(doc: Y.Doc): (count: number) => number {
  return () => Math.max(messageIndex(doc).lastSequence(), sealedThrough(doc)) + 1
}
