import { ErrorCode, ParleyError } from "@parley/shared"
import * as Y from "yjs"
import { RELAY_DOC_OPTIONS } from "../replica-view.js"
import { checksumOf } from "./checksum.js"
import type { StoredDocument } from "./types.js"

/**
 * Why a stored document cannot be trusted, judged from its shape alone, before
 * any byte of it is applied; undefined when nothing is wrong with it. A
 * document storage never heard of (no record, no data) is not damaged: it is
 * not created yet. Everything else is compared with what the catalog recorded:
 * - the catalog already recorded it as damaged;
 * - the catalog records it but storage holds none of its data;
 * - the log does not continue the snapshot position by position (a gap);
 * - the log ends before the last position the catalog recorded (a lost tail);
 * - the snapshot or a log entry does not match the checksum stored with it
 *   (bytes changed after they were written, even into a valid update).
 */
export function findDamage(stored: StoredDocument): string | undefined {
  const { record, snapshot, updates } = stored
  if (record?.damaged) return record.damaged
  if (record && snapshot === null && updates.length === 0)
    return `the catalog records the document (up to log position ${record.lastPosition}) but storage holds none of its data`
  let expected = (snapshot === null ? 0 : stored.through) + 1
  for (const { position } of updates) {
    if (position > expected)
      return `the log has a gap: ${position - expected} entr${position - expected === 1 ? "y" : "ies"} missing before position ${position}`
    if (position < expected)
      return `log entry ${position} comes after position ${expected - 1} (already covered by the snapshot or repeated)`
    expected++
  }
  const last = expected - 1
  if (record && last < record.lastPosition)
    return `the log ends at position ${last}, before position ${record.lastPosition} the catalog records`
  const { snapshotChecksum } = stored
  if (snapshot !== null && snapshotChecksum != null && checksumOf(snapshot) !== snapshotChecksum)
    return "the snapshot does not match its checksum"
  for (const { position, update, checksum } of updates)
    if (checksum != null && checksumOf(update) !== checksum)
      return `the stored update at log position ${position} does not match its checksum`
  return undefined
}

/** Applies one stored update to `doc`; throws DAMAGED (naming its position, 0 for the snapshot) when Yjs cannot. */
export function applyStored(doc: Y.Doc, update: Uint8Array, position: number): void {
  try {
    Y.applyUpdate(doc, update)
  } catch (cause) {
    const what = position === 0 ? "the snapshot" : `the stored update at log position ${position}`
    throw new ParleyError(ErrorCode.DAMAGED, `${what} cannot be applied: ${(cause as Error).message}`, {
      cause,
    })
  }
}

/**
 * Loads a stored document into a new Y.Doc, or throws DAMAGED with the reason:
 * {@link findDamage}, then every stored update applied in order. For operator
 * tools (checking a backup before restoring from it); the relay applies into
 * its own document.
 */
export function loadVerified(stored: StoredDocument): Y.Doc {
  const damage = findDamage(stored)
  if (damage) throw new ParleyError(ErrorCode.DAMAGED, damage)
  const doc = new Y.Doc(RELAY_DOC_OPTIONS)
  if (stored.snapshot) applyStored(doc, stored.snapshot, 0)
  for (const { position, update } of stored.updates) applyStored(doc, update, position)
  return doc
}
