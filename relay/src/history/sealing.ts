import { decodeSegmentSummary, type SegmentSummary, typesOf } from "@parley/shared"
import type * as Y from "yjs"

export {
  applySeal,
  applySeals,
  placeholdersToTombstones,
  planSeal,
  planSeals,
  type SealingOptions,
  type SealPlan,
  sealDue,
} from "@parley/shared"

/** The summary of segment `index` in `doc`, if sealed. */
export const summaryOf = (doc: Y.Doc, index: number): SegmentSummary | undefined =>
  typesOf(doc)
    .segments.toArray()
    .map(decodeSegmentSummary)
    .find((s) => s?.index === index)
