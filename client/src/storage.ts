import * as bc from "lib0/broadcastchannel"
import * as Y from "yjs"

/** Where a client keeps its replicas: IndexedDB (survives reloads; the default) or memory. */
export type StorageKind = "indexeddb" | "memory"

/** A document's local persistence. */
export interface LocalReplica {
  /** Resolves once what was stored before has been applied to the document. */
  readonly loaded: Promise<void>
  /**
   * Replaces everything stored with `update` (a full state), in one
   * transaction: a reader sees the old or the new state, never a mix. Used
   * when a resync abandons the replica. It starts a new generation of what is
   * stored: the other clients over the same database (the user's other tabs)
   * stop writing to it and are told (`onReplaced` of {@link persistDocument}).
   */
  replaceWith(update: Uint8Array): Promise<void>
  /**
   * The generation of what is stored that this replica holds (undefined: the
   * first, or storage in memory); the user's tabs on one generation can share
   * their updates.
   */
  readonly generation: string | undefined
  /**
   * Replaces the stored updates with one fresh encoding of the document,
   * soon (once the current task's updates are queued), in one transaction.
   * Called when the replica learns of a deletion: the stored updates keep a
   * deleted message's text until they are merged, while the document
   * (garbage-collected) keeps only the deleted items' ids and lengths. What
   * the document holds unsent stays. Resolves once written (at once in memory).
   */
  compact(): Promise<void>
  /** Stops persisting; writes already made are kept (and a compaction asked for is finished first). */
  destroy(): Promise<void>
}

/**
 * The one object store of a replica's database: Yjs updates under
 * auto-increment keys, merged into one full state on every load, after
 * {@link COMPACT_AFTER} writes and after a deletion ({@link LocalReplica.compact}). It is the layout y-indexeddb 9 writes, which
 * SDK versions before 0.2 used, so the replicas they stored load unchanged.
 */
const UPDATES_STORE = "updates"

/** Updates written one by one before they are merged into one (as y-indexeddb does, at 500). */
const COMPACT_AFTER = 500

/** How long after the {@link COMPACT_AFTER}th write the merge waits, so that a burst merges once. */
const COMPACT_DELAY_MS = 1000

/**
 * The generation marker: one row under the key `[GENERATION, id]`, written
 * by {@link LocalReplica.replaceWith}. Array keys sort after the numbers of
 * the updates, so a range of numbers reads the updates alone; its value is an
 * empty Yjs update, so what applies every row (this storage in earlier
 * builds, y-indexeddb) reads it as nothing.
 *
 * Why: a resync replaces what is stored with a rebuilt state under a new Yjs
 * client id, while the user's other tabs still hold the old replica. What
 * they wrote on it afterwards builds on structs the stored state no longer
 * has: Yjs holds such updates as pending for good, and a message sent in
 * such a tab was never shown or sent again, with nothing said (an outside
 * tester). Each write now checks the generation in its own transaction; a
 * replica whose generation was replaced writes nothing more and tells its
 * conversation, which rebuilds on what is stored (its pending work re-applied).
 */
const GENERATION = "parley-generation"
const EMPTY_UPDATE = new Uint8Array([0, 0])
const UPDATE_KEYS = lazyRange(() => IDBKeyRange.upperBound(Number.POSITIVE_INFINITY))
const GENERATION_KEYS = lazyRange(() => IDBKeyRange.bound([GENERATION], [GENERATION, []]))

/** A key range made once IndexedDB is there (the module also loads where it is not). */
function lazyRange(make: () => IDBKeyRange): () => IDBKeyRange {
  let range: IDBKeyRange | undefined
  return () => {
    range ??= make()
    return range
  }
}

/** The stored generation, from the keys of its marker (see {@link GENERATION}). */
const generationOf = (keys: IDBValidKey[]): string | undefined => {
  const key = keys.at(-1)
  return Array.isArray(key) && typeof key[1] === "string" ? key[1] : undefined
}

/** A new generation's id: random, so that two tabs rebuilding at once never take the same. */
const newGeneration = (): string =>
  Array.from(crypto.getRandomValues(new Uint8Array(9)), (b) => b.toString(16).padStart(2, "0")).join("")

/**
 * Keeps `doc` in local storage under `name`. With IndexedDB every update is
 * written as it happens, so closing the page mid-sync loses nothing; several
 * clients over the same database load each other's updates.
 */
export function persistDocument(
  kind: StorageKind,
  name: string,
  doc: Y.Doc,
  /** Told when local storage fails (no IndexedDB, quota, a damaged entry): the replica then lives in memory. */
  onError: (error: unknown) => void = () => {},
  /**
   * Told once when another client over the database (another tab) replaced
   * what is stored ({@link LocalReplica.replaceWith}): this replica has
   * stopped writing, and what it holds must be rebuilt on what is stored.
   */
  onReplaced: () => void = () => {},
): LocalReplica {
  if (kind === "memory")
    return {
      loaded: Promise.resolve(),
      generation: undefined,
      replaceWith: async () => {},
      compact: async () => {},
      destroy: async () => {},
    }
  return new IndexedDbReplica(name, doc, onError, onReplaced)
}

/** Name of the local database of one user's conversation (users of one device never share). */
export const replicaName = (user: string, document: string): string => `parley:${user}:${document}`

/**
 * The user's databases besides one per conversation and the inbox's
 * (`inbox~<user>`), each named with {@link replicaName}. Every database the
 * SDK makes is named so: `deleteLocalData` finds them by this prefix, or, where
 * the browser cannot list databases, from these names and the recorded conversations.
 */
export const LocalDatabase = {
  /** The conversations known on this device, the user's profile, the deleted ones purged here. */
  directory: "directory",
  /** The user's inbox changes not yet reflected by the relay (never synced). */
  pendingInbox: "inbox-pending",
  /** Sealed history segments fetched from the relay. */
  history: "history",
  /** Messages waiting for their files to upload, with the files. */
  uploads: "uploads",
} as const

/** A document's replica in an IndexedDB database of its own (see {@link UPDATES_STORE}). */
class IndexedDbReplica implements LocalReplica {
  readonly loaded: Promise<void>
  generation: string | undefined
  /** Set once the stored state is loaded: from then on every update is written. */
  private db: IDBDatabase | undefined
  private readonly opening: Promise<IDBDatabase | undefined>
  private destroyed = false
  /** Set once another client replaced the stored generation: nothing more is written. */
  private replaced = false
  private written = 0
  /** Updates not written yet: written together, in one transaction, once the current task ends. */
  private unwritten: Uint8Array[] = []
  /** Transactions of written updates not committed yet ({@link destroy} waits for them). */
  private readonly committing = new Set<Promise<void>>()
  private compactTimer: ReturnType<typeof setTimeout> | undefined
  /** The compaction {@link compact} runs, if any, and whether another was asked for meanwhile. */
  private purging: Promise<void> | undefined
  private purgeAgain = false
  private endWait: () => void = () => {}

  /** Where a replacement is announced: a tab that writes nothing meanwhile learns of it at once too. */
  private readonly notices: string

  private readonly onNotice = (_data: unknown, origin: unknown) => {
    const db = this.db
    if (origin === this || !db || this.destroyed || this.replaced) return
    let marker: IDBRequest<IDBValidKey[]>
    try {
      marker = db
        .transaction(UPDATES_STORE, "readonly")
        .objectStore(UPDATES_STORE)
        .getAllKeys(GENERATION_KEYS())
    } catch (error) {
      // Closed under it (deleted by another tab's sign-out): told like any failed write, not thrown in the channel's handler.
      this.failed(error)
      return
    }
    marker.onsuccess = () => {
      if (!this.destroyed) this.isReplaced(marker.result)
    }
  }

  private readonly onUpdate = (update: Uint8Array, origin: unknown) => {
    const db = this.db
    // Before the load, the load's merged state covers it; what the load applied is stored already.
    if (origin === this || !db || this.destroyed || this.replaced) return
    // One transaction per task, not per update: a burst of messages written offline made hundreds of
    // transactions, committed one by one over seconds, and a tab closed meanwhile lost what had not
    // committed (an outside probe: 1,763 of 2,000 messages, destroy() awaited).
    if (this.unwritten.push(update) === 1) setTimeout(() => this.writeUnwritten(), 0)
    if (++this.written >= COMPACT_AFTER && this.compactTimer === undefined)
      this.compactTimer = setTimeout(() => {
        this.compactTimer = undefined
        if (this.db && !this.destroyed) this.merge(this.db).catch(this.failed)
      }, COMPACT_DELAY_MS)
  }

  /** Writes the updates waiting, in order, in one transaction; {@link destroy} waits for its commit. */
  private writeUnwritten(): void {
    const updates = this.unwritten
    if (updates.length === 0) return
    this.unwritten = []
    const db = this.db
    if (!db || this.replaced) return
    let transaction: IDBTransaction
    try {
      transaction = db.transaction(UPDATES_STORE, "readwrite")
    } catch (error) {
      // Closed under it: the database is being deleted (a sign-out in another tab, see deleteLocalData).
      this.failed(error)
      return
    }
    const store = transaction.objectStore(UPDATES_STORE)
    // Checked in the write's own transaction: no replacement can fall between the check and the write.
    const marker = store.getAllKeys(GENERATION_KEYS())
    marker.onsuccess = () => {
      if (this.isReplaced(marker.result)) return
      for (const update of updates) store.add(update)
    }
    const committed = completion(transaction).catch(this.failed)
    this.committing.add(committed)
    void committed.finally(() => this.committing.delete(committed))
  }

  /** Logs a failure of local storage and tells the client (its `error` event). */
  private readonly failed = (error: unknown): void => {
    console.warn("parley: local storage failed", error)
    this.onError(error)
  }

  constructor(
    name: string,
    private readonly doc: Y.Doc,
    private readonly onError: (error: unknown) => void,
    private readonly onReplaced: () => void,
  ) {
    this.notices = `${name}#generation`
    bc.subscribe(this.notices, this.onNotice)
    doc.on("update", this.onUpdate)
    this.opening = (
      typeof indexedDB === "undefined"
        ? Promise.reject(new Error('this environment has no IndexedDB (use storage: "memory")'))
        : openDatabase(name)
    ).catch((error: unknown) => {
      // No IndexedDB (private mode, quota, blocked): the replica lives in memory this time.
      this.failed(error)
      return undefined
    })
    const load = this.opening.then(async (db) => {
      if (!db) return
      if (this.destroyed) return db.close()
      await this.merge(db).catch(this.failed)
    })
    // A replica destroyed while loading ends the wait instead of leaving it hanging.
    const ended = new Promise<void>((resolve) => {
      this.endWait = resolve
    })
    this.loaded = Promise.race([load, ended])
  }

  async replaceWith(update: Uint8Array): Promise<void> {
    await this.loaded
    const db = this.db
    if (!db || this.destroyed) throw new Error("the local database is closed")
    // What the replaced state wrote goes before the replacement, as it did when each update was written at once.
    this.writeUnwritten()
    const transaction = db.transaction(UPDATES_STORE, "readwrite")
    const store = transaction.objectStore(UPDATES_STORE)
    // All in one transaction, in order: a reader sees the old state or the new one, never a mix.
    const generation = newGeneration()
    store.clear()
    store.add(update)
    // Taken in the transaction: a write of this replica's queued after it checks against the new one,
    // one queued before it (done by now) checked against the old.
    store.add(EMPTY_UPDATE, [GENERATION, generation]).onsuccess = () => {
      this.generation = generation
    }
    this.written = 0
    await completion(transaction)
    bc.publish(this.notices, generation, this)
  }

  compact(): Promise<void> {
    // Asked once destroy() began: the database is closing (destroy finishes a compaction under way).
    if (this.destroyed) return this.purging ?? Promise.resolve()
    if (this.purging) {
      // The one under way may have encoded the document before this deletion: once more after it.
      this.purgeAgain = true
      return this.purging
    }
    this.purging = this.purgeStored().finally(() => {
      this.purging = undefined
    })
    return this.purging
  }

  private async purgeStored(): Promise<void> {
    do {
      this.purgeAgain = false
      // The deleting transaction's own update is queued once its task ends: it goes before the merge.
      await new Promise((resolve) => setTimeout(resolve, 0))
      await this.loaded
      const db = this.db
      if (!db || this.replaced) return
      // Queued updates (the deleted text among them, maybe) are written first, so the merge removes them.
      this.writeUnwritten()
      try {
        await this.merge(db, true)
      } catch (error) {
        this.failed(error)
      }
    } while (this.purgeAgain)
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    bc.unsubscribe(this.notices, this.onNotice)
    this.doc.off("update", this.onUpdate)
    clearTimeout(this.compactTimer)
    this.endWait()
    // The last writes are committed before this resolves: the database's close lets transactions under
    // way finish, but a page closed right after would abort them (an app awaits destroy() to know).
    this.writeUnwritten()
    await Promise.all([...this.committing])
    // A deletion learned just before: its text leaves the disk now, not at the next load.
    await this.purging
    const db = await this.opening
    db?.close()
    this.db = undefined
  }

  /**
   * True, and tells the conversation once, when `markerKeys` (read in the
   * current transaction) name another generation than this replica's.
   */
  private isReplaced(markerKeys: IDBValidKey[]): boolean {
    if (this.replaced) return true
    if (generationOf(markerKeys) === this.generation) return false
    this.replaced = true
    clearTimeout(this.compactTimer)
    if (!this.destroyed) this.onReplaced()
    return true
  }

  /**
   * In one transaction: applies every stored update to the document (what
   * this and other clients over the database wrote), then replaces them with
   * the document's whole state, which also holds what was written in memory
   * before the database opened. From then on each update is written. The
   * first (the load) takes the stored generation as this replica's; a later
   * one finding another generation writes nothing (see {@link GENERATION}).
   * `purge` ({@link compact}): runs while the replica is being destroyed too.
   */
  private async merge(db: IDBDatabase, purge = false): Promise<void> {
    // Async so that a database closed under it (deleted by another tab's sign-out) rejects, as every
    // caller expects, instead of throwing inside the compaction's timer.
    const transaction = db.transaction(UPDATES_STORE, "readwrite")
    const store = transaction.objectStore(UPDATES_STORE)
    const loading = this.db === undefined
    const marker = store.getAllKeys(GENERATION_KEYS())
    const keys = store.getAllKeys(UPDATE_KEYS())
    const values = store.getAll(UPDATE_KEYS())
    values.onsuccess = () => {
      if (this.destroyed && !purge) return
      if (loading) this.generation = generationOf(marker.result)
      else if (this.isReplaced(marker.result)) return
      const updates = values.result as Uint8Array[]
      this.doc.transact(() => {
        for (const update of updates) {
          try {
            Y.applyUpdate(this.doc, update, this)
          } catch (error) {
            // One damaged entry must not keep the rest (and the document) from loading.
            this.failed(error)
          }
        }
      }, this)
      const last = keys.result.at(-1)
      if (last !== undefined) store.delete(IDBKeyRange.upperBound(last))
      store.add(Y.encodeStateAsUpdate(this.doc))
      this.written = 0
      this.db = db
    }
    return completion(transaction)
  }
}

/**
 * Changes what is stored under `name` without a replica open on it: in one
 * transaction, applies the stored updates to a fresh document (garbage
 * collected), runs `change` on it and stores its encoding in their place.
 * Resolves with `change`'s result, or undefined when no such database
 * exists (none is created). For a deleted conversation the app does not open
 * (see `ChatClient`); a replica open on it meanwhile (another tab) loads the
 * result at its next merge, as it loads what other tabs write.
 */
export async function rewriteStored<T>(name: string, change: (doc: Y.Doc) => T): Promise<T | undefined> {
  const db = await openExisting(name)
  if (!db) return undefined
  try {
    const transaction = db.transaction(UPDATES_STORE, "readwrite")
    const store = transaction.objectStore(UPDATES_STORE)
    const keys = store.getAllKeys(UPDATE_KEYS())
    const values = store.getAll(UPDATE_KEYS())
    let result: T | undefined
    values.onsuccess = () => {
      const last = keys.result.at(-1)
      if (last === undefined) return
      const doc = new Y.Doc()
      try {
        Y.transact(doc, () => {
          for (const update of values.result as Uint8Array[]) Y.applyUpdate(doc, update)
        })
        result = change(doc)
        store.delete(IDBKeyRange.upperBound(last))
        store.add(Y.encodeStateAsUpdate(doc))
      } finally {
        doc.destroy()
      }
    }
    await completion(transaction)
    return result
  } finally {
    db.close()
  }
}

/**
 * What is stored under replica `name`, applied to a fresh document (the
 * caller destroys it); undefined, and nothing created, if there is no such database.
 */
export async function readStored(name: string): Promise<Y.Doc | undefined> {
  const db = await openExisting(name)
  if (!db) return undefined
  try {
    const request = db.transaction(UPDATES_STORE, "readonly").objectStore(UPDATES_STORE).getAll(UPDATE_KEYS())
    const updates = await new Promise<Uint8Array[]>((resolve, reject) => {
      request.onsuccess = () => resolve(request.result as Uint8Array[])
      request.onerror = () => reject(request.error)
    })
    const doc = new Y.Doc()
    for (const update of updates) {
      try {
        Y.applyUpdate(doc, update)
      } catch {
        // A damaged entry: the others still name what they name.
      }
    }
    return doc
  } finally {
    db.close()
  }
}

/** Opens database `name` if it exists; undefined (and nothing created) if not. */
function openExisting(name: string): Promise<IDBDatabase | undefined> {
  if (typeof indexedDB === "undefined") return Promise.resolve(undefined)
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(name)
    let absent = false
    request.onupgradeneeded = () => {
      // Aborting the creation leaves no database behind.
      absent = true
      request.transaction?.abort()
    }
    request.onerror = (event) => {
      if (!absent) return reject(request.error)
      event.preventDefault()
      resolve(undefined)
    }
    request.onsuccess = () => {
      const db = request.result
      db.onversionchange = () => db.close()
      if (db.objectStoreNames.contains(UPDATES_STORE)) return resolve(db)
      db.close()
      resolve(undefined)
    }
  })
}

function openDatabase(name: string): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(name)
    request.onupgradeneeded = () => {
      if (!request.result.objectStoreNames.contains(UPDATES_STORE))
        request.result.createObjectStore(UPDATES_STORE, { autoIncrement: true })
    }
    request.onerror = () => reject(request.error)
    request.onsuccess = () => {
      const db = request.result
      // Another tab deleting or upgrading the database must not wait on this one.
      db.onversionchange = () => db.close()
      resolve(db)
    }
  })
}

function completion(transaction: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve()
    transaction.onerror = () => reject(transaction.error)
    transaction.onabort = () => reject(transaction.error ?? new Error("the local transaction was aborted"))
  })
}
