import type * as Y from "yjs"
import type { DeferredWrites } from "./document-host.js"

// Apart from derived-write.ts so that extension.ts can name it without importing the update path.

/**
 * What a deferring derived write is given: the document as it is (its
 * deferred writes not applied), the document with them applied (reading it
 * applies them), and the slot its deferred writes are kept in.
 */
export interface DeferTarget {
  readonly doc: Y.Doc
  readonly docAsIs: Y.Doc
  deferred: DeferredWrites | undefined
}

/**
 * A derived write that the relay encodes without a transaction: it returns the
 * sync update frame to broadcast (`encodeSyncUpdate` of its update; undefined
 * when it wrote nothing) and leaves in
 * `target.deferred` what applies it to the document later, in one
 * transaction with the others (see {@link DocumentHost.deferred}).
 */
export type DeferringChange = (target: DeferTarget, origin: unknown) => Uint8Array | undefined
