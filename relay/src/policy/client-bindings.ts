import type Database from "better-sqlite3"

/** A Yjs client id and the key of the principal it belongs to. */
export type ClientBinding = readonly [clientId: number, principal: string]

/** The key of the relay's own client ids (`describePrincipal(RELAY)`). */
export const RELAY_KEY = "relay"

/**
 * Which principal each Yjs client id of one document belongs to. The first
 * principal to write under an id owns it; an update carrying structs under an
 * id owned by someone else is refused, so that no one can write "as" another
 * user's replica (Yjs attributes nothing itself: the client id is just a number
 * the sender picks).
 */
export class ClientBindings {
  private readonly owners = new Map<number, string>()

  constructor(entries: Iterable<ClientBinding> = []) {
    for (const [clientId, key] of entries) this.owners.set(clientId, key)
  }

  /** The principal key owning `clientId`, if any. */
  get(clientId: number): string | undefined {
    return this.owners.get(clientId)
  }

  /** Binds ids not bound yet; an id keeps its first owner. */
  bind(entries: Iterable<ClientBinding>): void {
    for (const [clientId, key] of entries) if (!this.owners.has(clientId)) this.owners.set(clientId, key)
  }

  /**
   * Records each id's owner as storage answered it, over what memory held: another relay of a
   * cluster may have bound an id this relay's memory took for free.
   */
  record(owners: ReadonlyMap<number, string>): void {
    for (const [clientId, key] of owners) this.owners.set(clientId, key)
  }

  /** Whether `key` owns an id other than those of `except` (it wrote, or claimed an id, before). */
  ownsOther(key: string, except: ReadonlySet<number>): boolean {
    for (const [clientId, owner] of this.owners) if (owner === key && !except.has(clientId)) return true
    return false
  }

  /** Number of bound ids. */
  get size(): number {
    return this.owners.size
  }
}

/**
 * Where bindings persist, per document name. `bind` is called with the new
 * bindings of an accepted update, before or together with storing the update;
 * binding an id again keeps its first owner.
 */
export interface ClientBindingStore {
  /** Every binding of document `name`. */
  load(name: string): Promise<Map<number, string>>
  /**
   * Binds each id of `entries` not bound yet, and answers the owner of each of their ids
   * afterwards: the entry's key, or the first owner's when the id was bound before (by anyone
   * sharing the store: the caller's memory may not know it).
   */
  bind(name: string, entries: readonly ClientBinding[]): Promise<Map<number, string>>
  /**
   * Deletes every binding of document `name`: its purge finished and nobody can write to it again
   * (see `AuthorizationPolicy.conversationPurged`). Dropping a document with none is no error.
   */
  drop(name: string): Promise<void>
}

/**
 * Bytes of disk one stored binding of principal key `principal` in document `document` costs,
 * charged to the binding user's daily budget of stored bytes (`--user-update-bytes-per-day`).
 * Measured on PostgreSQL, the dearest backend (table and primary-key index, random client ids as
 * they come: 154 bytes a row for a 20-character document and a 12-character key, 228 for 40 and
 * 20, 578 for 160 and 69; one binding per document, an honest client's pattern, 170, 251 and 683).
 * SQLite's table (one B-tree, `WITHOUT ROWID`) takes about a third of that; the memory backend
 * holds a map entry of about as much in memory. One formula for all: the budget is a promise
 * about the disk, kept on every backend.
 */
export function bindingBytes(document: string, principal: string): number {
  // The document's name is in the row and in the index (and the index's pages are ~70 % full).
  return 128 + 3 * document.length + principal.length
}

/** Each id's owner after binding `entries` over `owners` (which it updates): the first one wins. */
function bindFirst(owners: Map<number, string>, entries: readonly ClientBinding[]): Map<number, string> {
  const answer = new Map<number, string>()
  for (const [clientId, key] of entries) {
    let owner = owners.get(clientId)
    if (owner === undefined) {
      owner = key
      owners.set(clientId, key)
    }
    answer.set(clientId, owner)
  }
  return answer
}

/** Bindings in memory, for tests and the in-memory relay. */
export class MemoryClientBindingStore implements ClientBindingStore {
  private readonly documents = new Map<string, Map<number, string>>()

  async load(name: string): Promise<Map<number, string>> {
    return new Map(this.documents.get(name))
  }

  async bind(name: string, entries: readonly ClientBinding[]): Promise<Map<number, string>> {
    let owners = this.documents.get(name)
    if (!owners) {
      owners = new Map()
      this.documents.set(name, owners)
    }
    return bindFirst(owners, entries)
  }

  async drop(name: string): Promise<void> {
    this.documents.delete(name)
  }
}

/**
 * Bindings in the relay's SQLite database, in their own table. Writes are
 * synchronous transactions, so a binding is durable when `bind` resolves.
 */
export class SqliteClientBindingStore implements ClientBindingStore {
  private readonly select: Database.Statement<[string], { client_id: number; principal: string }>
  private readonly insert: Database.Statement<[string, number, string]>
  private readonly ownerOf: Database.Statement<[string, number], { principal: string }>
  private readonly insertAll: (name: string, entries: readonly ClientBinding[]) => Map<number, string>
  private readonly deleteAll: Database.Statement<[string]>

  constructor(db: Database.Database) {
    db.exec(`CREATE TABLE IF NOT EXISTS parley_client_bindings (
      document TEXT NOT NULL,
      client_id INTEGER NOT NULL,
      principal TEXT NOT NULL,
      PRIMARY KEY (document, client_id)
    ) WITHOUT ROWID`)
    this.select = db.prepare("SELECT client_id, principal FROM parley_client_bindings WHERE document = ?")
    // First owner wins, also across relays writing to the same database.
    this.insert = db.prepare(
      "INSERT OR IGNORE INTO parley_client_bindings (document, client_id, principal) VALUES (?, ?, ?)",
    )
    this.ownerOf = db.prepare(
      "SELECT principal FROM parley_client_bindings WHERE document = ? AND client_id = ?",
    )
    this.deleteAll = db.prepare("DELETE FROM parley_client_bindings WHERE document = ?")
    this.insertAll = db.transaction((name: string, entries: readonly ClientBinding[]) => {
      const owners = new Map<number, string>()
      for (const [clientId, key] of entries) {
        // Another relay over the same file may have bound it: the row answers, not the entry.
        if (this.insert.run(name, clientId, key).changes === 1) owners.set(clientId, key)
        else owners.set(clientId, this.ownerOf.get(name, clientId)?.principal ?? key)
      }
      return owners
    })
  }

  async load(name: string): Promise<Map<number, string>> {
    return new Map(this.select.all(name).map((row) => [row.client_id, row.principal]))
  }

  async bind(name: string, entries: readonly ClientBinding[]): Promise<Map<number, string>> {
    return entries.length > 0 ? this.insertAll(name, entries) : new Map()
  }

  async drop(name: string): Promise<void> {
    this.deleteAll.run(name)
  }
}
