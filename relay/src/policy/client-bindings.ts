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
  load(name: string): Promise<Map<number, string>>
  bind(name: string, entries: readonly ClientBinding[]): Promise<void>
}

/** Bindings in memory, for tests and the in-memory relay. */
export class MemoryClientBindingStore implements ClientBindingStore {
  private readonly documents = new Map<string, Map<number, string>>()

  async load(name: string): Promise<Map<number, string>> {
    return new Map(this.documents.get(name))
  }

  async bind(name: string, entries: readonly ClientBinding[]): Promise<void> {
    let owners = this.documents.get(name)
    if (!owners) {
      owners = new Map()
      this.documents.set(name, owners)
    }
    for (const [clientId, key] of entries) if (!owners.has(clientId)) owners.set(clientId, key)
  }
}

/**
 * Bindings in the relay's SQLite database, in their own table. Writes are
 * synchronous transactions, so a binding is durable when `bind` resolves.
 */
export class SqliteClientBindingStore implements ClientBindingStore {
  private readonly select: Database.Statement<[string], { client_id: number; principal: string }>
  private readonly insert: Database.Statement<[string, number, string]>
  private readonly insertAll: (name: string, entries: readonly ClientBinding[]) => void

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
    this.insertAll = db.transaction((name: string, entries: readonly ClientBinding[]) => {
      for (const [clientId, key] of entries) this.insert.run(name, clientId, key)
    })
  }

  async load(name: string): Promise<Map<number, string>> {
    return new Map(this.select.all(name).map((row) => [row.client_id, row.principal]))
  }

  async bind(name: string, entries: readonly ClientBinding[]): Promise<void> {
    if (entries.length > 0) this.insertAll(name, entries)
  }
}
