import { IndexeddbPersistence } from "y-indexeddb"
import type * as Y from "yjs"

/** Where a client keeps its replicas: IndexedDB (survives reloads; the default) or memory. */
export type StorageKind = "indexeddb" | "memory"

/** A document's local persistence. */
export interface LocalReplica {
  /** Resolves once what was stored before has been applied to the document. */
  readonly loaded: Promise<void>
  /** Stops persisting; writes already made are kept. */
  destroy(): Promise<void>
}

/**
 * Keeps `doc` in local storage under `name`. With IndexedDB every update is
 * written as it happens (y-indexeddb), so closing the page mid-sync loses
 * nothing; several clients over the same database load each other's updates.
 */
export function persistDocument(kind: StorageKind, name: string, doc: Y.Doc): LocalReplica {
  if (kind === "memory") return { loaded: Promise.resolve(), destroy: async () => {} }
  const persistence = new IndexeddbPersistence(name, doc)
  return {
    loaded: persistence.whenSynced.then(() => undefined),
    destroy: () => persistence.destroy(),
  }
}

/** Name of the local database of one user's conversation (users of one device never share). */
export const replicaName = (user: string, document: string): string => `parley:${user}:${document}`
