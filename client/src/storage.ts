import * as idb from "lib0/indexeddb"
import { IndexeddbPersistence } from "y-indexeddb"
import type * as Y from "yjs"

/** Where a client keeps its replicas: IndexedDB (survives reloads; the default) or memory. */
export type StorageKind = "indexeddb" | "memory"

/** A document's local persistence. */
export interface LocalReplica {
  /** Resolves once what was stored before has been applied to the document. */
  readonly loaded: Promise<void>
  /**
   * Replaces everything stored with `update` (a full state), in one
   * transaction: a reader sees the old or the new state, never a mix. Used
   * when a resync abandons the replica.
   */
  replaceWith(update: Uint8Array): Promise<void>
  /** Stops persisting; writes already made are kept. */
  destroy(): Promise<void>
}

/**
 * Keeps `doc` in local storage under `name`. With IndexedDB every update is
 * written as it happens (y-indexeddb), so closing the page mid-sync loses
 * nothing; several clients over the same database load each other's updates.
 */
export function persistDocument(kind: StorageKind, name: string, doc: Y.Doc): LocalReplica {
  if (kind === "memory")
    return { loaded: Promise.resolve(), replaceWith: async () => {}, destroy: async () => {} }
  const persistence = new IndexeddbPersistence(name, doc)
  let destroyed: () => void = () => {}
  // y-indexeddb never resolves whenSynced once destroyed; end the wait instead of leaving it hanging.
  const closed = new Promise<void>((resolve) => {
    destroyed = resolve
  })
  return {
    loaded: Promise.race([persistence.whenSynced.then(() => undefined), closed]),
    replaceWith: async (update) => {
      await persistence.whenSynced
      const db = persistence.db
      if (!db) throw new Error("the local database is closed")
      // y-indexeddb's store of updates; its next load merges what is there.
      const updates = idb.transact(db, [UPDATES_STORE])[0]!
      // Both requests are queued before either completes, so they run in the one transaction, in order.
      await Promise.all([
        idb.del(updates, idb.createIDBKeyRangeLowerBound(0, false)),
        // y-indexeddb itself stores updates as Uint8Array (lib0 types the value narrowly).
        idb.addAutoKey(updates, update as unknown as ArrayBuffer),
      ])
    },
    destroy: () => {
      destroyed()
      return persistence.destroy()
    },
  }
}

/** y-indexeddb's object store of updates. */
const UPDATES_STORE = "updates"

/** Name of the local database of one user's conversation (users of one device never share). */
export const replicaName = (user: string, document: string): string => `parley:${user}:${document}`
