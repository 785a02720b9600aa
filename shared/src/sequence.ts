import type * as Y from "yjs"
import { typesOf } from "./document.js"
import { sealedHistory, sealedThrough } from "./history.js"
import type { MessageId } from "./ids.js"
import { messageIndex } from "./message-index.js"
import { encodeSequenceRecord } from "./schema.js"

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
