import type { UserId } from "@parley/shared"
import type Database from "better-sqlite3"
import type pg from "pg"

/** One device's Web Push subscription, as the browser's `PushSubscription.toJSON()` gives it, kept per user and device. */
export interface PushSubscriptionRecord {
  readonly user: UserId
  /** Chosen by the device (stable per installation): registering again under it replaces the subscription. */
  readonly device: string
  /** The push service's URL for this subscription. */
  readonly endpoint: string
  /** The subscription's public key (P-256, base64url): payloads are encrypted to it. */
  readonly p256dh: string
  /** The subscription's authentication secret (16 bytes, base64url). */
  readonly auth: string
  readonly createdAt: number
}

/**
 * Where the relay keeps Web Push subscriptions (a part of every backend).
 * Every implementation passes `relay/test/conformance/backend.ts`.
 */
export interface PushSubscriptionStore {
  /** Adds or replaces `record.user`'s subscription of `record.device`. */
  put(record: PushSubscriptionRecord): Promise<void>
  /** The user's subscriptions, oldest first. */
  list(user: UserId): Promise<PushSubscriptionRecord[]>
  /** The subscriptions of any of `users` (one query for a message's recipients), oldest first per user. */
  listMany(users: readonly UserId[]): Promise<PushSubscriptionRecord[]>
  /** Removes the user's subscription of `device`; false when there was none. */
  remove(user: UserId, device: string): Promise<boolean>
  /** Removes every subscription with `endpoint` (the push service said it expired); returns how many. */
  removeEndpoint(endpoint: string): Promise<number>
}

/** Subscriptions in process memory (the memory backend). */
export class MemoryPushSubscriptionStore implements PushSubscriptionStore {
  private readonly byUser = new Map<UserId, Map<string, PushSubscriptionRecord>>()

  async put(record: PushSubscriptionRecord): Promise<void> {
    let devices = this.byUser.get(record.user)
    if (!devices) {
      devices = new Map()
      this.byUser.set(record.user, devices)
    }
    const previous = devices.get(record.device)
    // A replaced subscription keeps its place (its creation time), as the SQL stores do.
    devices.set(record.device, previous ? { ...record, createdAt: previous.createdAt } : { ...record })
  }

  async list(user: UserId): Promise<PushSubscriptionRecord[]> {
    return [...(this.byUser.get(user)?.values() ?? [])].sort(byAge)
  }

  async listMany(users: readonly UserId[]): Promise<PushSubscriptionRecord[]> {
    // Only users with a device cost more than a lookup: most members of a big room have none.
    if (this.byUser.size === 0) return []
    const out: PushSubscriptionRecord[] = []
    const seen = new Set<UserId>()
    for (const user of users) {
      const devices = this.byUser.get(user)
      if (!devices || devices.size === 0 || seen.has(user)) continue
      seen.add(user)
      out.push(...[...devices.values()].sort(byAge))
    }
    return out
  }

  async remove(user: UserId, device: string): Promise<boolean> {
    return this.byUser.get(user)?.delete(device) ?? false
  }

  async removeEndpoint(endpoint: string): Promise<number> {
    let removed = 0
    for (const devices of this.byUser.values())
      for (const [device, record] of devices)
        if (record.endpoint === endpoint) {
          devices.delete(device)
          removed++
        }
    return removed
  }
}

const byAge = (a: PushSubscriptionRecord, b: PushSubscriptionRecord) =>
  a.createdAt - b.createdAt || a.device.localeCompare(b.device)

/** The subscriptions' table, the same in SQLite and PostgreSQL. */
export const PUSH_SUBSCRIPTIONS_SCHEMA = `CREATE TABLE IF NOT EXISTS parley_push_subscriptions (
  user_id TEXT NOT NULL,
  device TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  p256dh TEXT NOT NULL,
  auth TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (user_id, device)
);
CREATE INDEX IF NOT EXISTS parley_push_subscriptions_endpoint ON parley_push_subscriptions (endpoint);`

const COLUMNS = "user_id, device, endpoint, p256dh, auth, created_at"

interface Row {
  readonly user_id: string
  readonly device: string
  readonly endpoint: string
  readonly p256dh: string
  readonly auth: string
  readonly created_at: number | string
}

const recordOf = (row: Row): PushSubscriptionRecord => ({
  user: row.user_id as UserId,
  device: row.device,
  endpoint: row.endpoint,
  p256dh: row.p256dh,
  auth: row.auth,
  createdAt: Number(row.created_at),
})

const UPSERT = (p: (n: number) => string) =>
  `INSERT INTO parley_push_subscriptions (${COLUMNS}) VALUES (${[1, 2, 3, 4, 5, 6].map(p).join(", ")})
   ON CONFLICT (user_id, device) DO UPDATE SET endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth`

/**
 * Subscriptions in the relay's SQLite database. The relay is the database's
 * only writer while it runs, so it also keeps the set of users with any
 * subscription in memory (a superset: a removal may leave a user in it):
 * a message in a big room asks the table only about those of its recipients
 * who may have a device, most often none.
 */
export class SqlitePushSubscriptionStore implements PushSubscriptionStore {
  private subscribers = new Set<string>()
  private readonly many: Database.Statement

  constructor(private readonly db: Database.Database) {
    db.exec(PUSH_SUBSCRIPTIONS_SCHEMA)
    this.many = db.prepare(
      `SELECT ${COLUMNS} FROM parley_push_subscriptions WHERE user_id IN (SELECT value FROM json_each(?)) ORDER BY user_id, created_at, device`,
    )
    this.reloadSubscribers()
  }

  private reloadSubscribers(): void {
    const rows = this.db.prepare("SELECT DISTINCT user_id FROM parley_push_subscriptions").all() as {
      user_id: string
    }[]
    this.subscribers = new Set(rows.map((row) => row.user_id))
  }

  async put(r: PushSubscriptionRecord): Promise<void> {
    this.db.prepare(UPSERT(() => "?")).run(r.user, r.device, r.endpoint, r.p256dh, r.auth, r.createdAt)
    this.subscribers.add(r.user)
  }

  async list(user: UserId): Promise<PushSubscriptionRecord[]> {
    const rows = this.db
      .prepare(
        `SELECT ${COLUMNS} FROM parley_push_subscriptions WHERE user_id = ? ORDER BY created_at, device`,
      )
      .all(user) as Row[]
    return rows.map(recordOf)
  }

  async listMany(users: readonly UserId[]): Promise<PushSubscriptionRecord[]> {
    // Nobody on this relay has a device: no member list walked per message.
    if (this.subscribers.size === 0) return []
    const asked = users.filter((user) => this.subscribers.has(user))
    if (asked.length === 0) return []
    return (this.many.all(JSON.stringify(asked)) as Row[]).map(recordOf)
  }

  async remove(user: UserId, device: string): Promise<boolean> {
    return (
      this.db
        .prepare("DELETE FROM parley_push_subscriptions WHERE user_id = ? AND device = ?")
        .run(user, device).changes > 0
    )
  }

  async removeEndpoint(endpoint: string): Promise<number> {
    const removed = this.db
      .prepare("DELETE FROM parley_push_subscriptions WHERE endpoint = ?")
      .run(endpoint).changes
    if (removed > 0) this.reloadSubscribers()
    return removed
  }
}

/** Subscriptions in PostgreSQL, table `parley_push_subscriptions` of the backend's schema. */
export class PostgresPushSubscriptionStore implements PushSubscriptionStore {
  /** `pool` is the backend's, with {@link PUSH_SUBSCRIPTIONS_SCHEMA} created. */
  constructor(private readonly pool: pg.Pool) {}

  async put(r: PushSubscriptionRecord): Promise<void> {
    await this.pool.query(
      UPSERT((n) => `$${n}`),
      [r.user, r.device, r.endpoint, r.p256dh, r.auth, r.createdAt],
    )
  }

  async list(user: UserId): Promise<PushSubscriptionRecord[]> {
    const { rows } = await this.pool.query<Row>(
      `SELECT ${COLUMNS} FROM parley_push_subscriptions WHERE user_id = $1 ORDER BY created_at, device`,
      [user],
    )
    return rows.map(recordOf)
  }

  async listMany(users: readonly UserId[]): Promise<PushSubscriptionRecord[]> {
    if (users.length === 0) return []
    const { rows } = await this.pool.query<Row>(
      `SELECT ${COLUMNS} FROM parley_push_subscriptions WHERE user_id = ANY($1) ORDER BY user_id, created_at, device`,
      [users],
    )
    return rows.map(recordOf)
  }

  async remove(user: UserId, device: string): Promise<boolean> {
    const result = await this.pool.query(
      "DELETE FROM parley_push_subscriptions WHERE user_id = $1 AND device = $2",
      [user, device],
    )
    return (result.rowCount ?? 0) > 0
  }

  async removeEndpoint(endpoint: string): Promise<number> {
    const result = await this.pool.query("DELETE FROM parley_push_subscriptions WHERE endpoint = $1", [
      endpoint,
    ])
    return result.rowCount ?? 0
  }
}
