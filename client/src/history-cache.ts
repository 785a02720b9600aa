import * as idb from "lib0/indexeddb"
import { LocalDatabase, replicaName, type StorageKind } from "./storage.js"

/**
 * This device's copy of the sealed history segments it fetched, by content
 * hash: a segment never changes, so its hash names it for good and a cached
 * copy never goes stale. Shown offline once fetched. A purge re-seals a
 * segment under a new hash; the SDK then deletes the old copy.
 */
export interface SegmentCache {
  /** The bytes of the segment whose SHA-256 is `hash`, if cached. */
  get(hash: string): Promise<Uint8Array | undefined>
  put(hash: string, bytes: Uint8Array): Promise<void>
  /** Forgets a segment the relay re-sealed or dropped (a purge): its old bytes hold deleted text. */
  delete(hash: string): Promise<void>
  close(): void
}

const STORE = "segments"

/** A user's segment cache: IndexedDB database `parley:<user>:history`, or memory. */
export function openSegmentCache(kind: StorageKind, user: string): SegmentCache {
  if (kind === "memory") {
    const memory = new Map<string, Uint8Array>()
    return {
      get: async (hash) => memory.get(hash),
      put: async (hash, bytes) => {
        memory.set(hash, bytes)
      },
      delete: async (hash) => {
        memory.delete(hash)
      },
      close: () => {},
    }
  }
  const opening = idb.openDB(replicaName(user, LocalDatabase.history), (db) =>
    idb.createStores(db, [[STORE]]),
  )
  // A cache that cannot open (private mode, quota) only costs refetching.
  opening.catch(() => {})
  return {
    async get(hash) {
      try {
        const [store] = idb.transact(await opening, [STORE], "readonly")
        const value = (await idb.get(store!, hash)) as unknown
        return value instanceof Uint8Array
          ? value
          : value instanceof ArrayBuffer
            ? new Uint8Array(value)
            : undefined
      } catch {
        return undefined
      }
    },
    async put(hash, bytes) {
      try {
        const [store] = idb.transact(await opening, [STORE])
        // IndexedDB stores a Uint8Array as it is (lib0 types the value narrowly).
        await idb.put(store!, bytes as unknown as ArrayBuffer, hash)
      } catch {
        // Not cached: the segment is fetched again next time.
      }
    },
    async delete(hash) {
      try {
        const [store] = idb.transact(await opening, [STORE])
        await idb.del(store!, hash)
      } catch {
        // Left behind only if the database cannot be opened at all.
      }
    },
    close() {
      void opening.then((db) => db.close()).catch(() => {})
    },
  }
}
