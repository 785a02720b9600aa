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
  /**
   * Until when (ms since the epoch) the token that registered or last renewed
   * it holds: the device gets what a notification says only until then, a
   * content-free wake-up after. `null` for a token without `exp` (only with
   * `--allow-tokens-without-exp`): never lapses.
   */
  readonly credentialsUntil: number | null
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
  /**
   * Moves the `credentialsUntil` of `user`'s subscription of `device` to
   * `until` when that is later (`null`: never lapses), provided it still has
   * this `endpoint` and these keys (a renewal from the device that holds
   * them); never earlier. False when there is no such subscription.
   */
  renew(
    user: UserId,
    device: string,
    subscription: { readonly endpoint: string; readonly p256dh: string; readonly auth: string },
    until: number | null,
  ): Promise<boolean>
  /** Removes the user's subscription of `device`; false when there was none. */
  remove(user: UserId, device: string): Promise<boolean>
  /** Removes every subscription with `endpoint` (the push service said it expired); returns how many. */
  removeEndpoint(endpoint: string): Promise<number>
  /**
   * Removes `user`'s subscription of `device` only if its credentials ended
   * at or before `endedBy`: one renewed or replaced meanwhile (the device
   * registered again while a push or a listing judged it lapsed) stays.
   * False when nothing was removed.
   */
  removeLapsed(user: UserId, device: string, endedBy: number): Promise<boolean>
  /** Removes every subscription whose credentials ended at or before `endedBy` (the periodic sweep); returns how many. */
  removeAllLapsed(endedBy: number): Promise<number>
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

  async renew(
    user: UserId,
    device: string,
    subscription: { readonly endpoint: string; readonly p256dh: string; readonly auth: string },
    until: number | null,
  ): Promise<boolean> {
    const devices = this.byUser.get(user)
    const record = devices?.get(device)
    if (!devices || !record || !sameSubscription(record, subscription)) return false
    devices.set(device, { ...record, credentialsUntil: laterOf(record.credentialsUntil, until) })
    return true
  }

  async remove(user: UserId, device: string): Promise<boolean> {
    return this.byUser.get(user)?.delete(device) ?? false
  }

  async removeEndpoint(endpoint: string): Promise<number> {
    return this.removeWhere((record) => record.endpoint === endpoint)
  }

  async removeLapsed(user: UserId, device: string, endedBy: number): Promise<boolean> {
    const devices = this.byUser.get(user)
    const record = devices?.get(device)
    if (!devices || !record || !lapsedBy(record, endedBy)) return false
    return devices.delete(device)
  }

  async removeAllLapsed(endedBy: number): Promise<number> {
    return this.removeWhere((record) => lapsedBy(record, endedBy))
  }

  private removeWhere(matches: (record: PushSubscriptionRecord) => boolean): number {
    let removed = 0
    for (const [user, devices] of this.byUser) {
      for (const [device, record] of devices)
        if (matches(record)) {
          devices.delete(device)
          removed++
        }
      if (devices.size === 0) this.byUser.delete(user)
    }
    return removed
  }
}

const lapsedBy = (record: PushSubscriptionRecord, endedBy: number) =>
  record.credentialsUntil !== null && record.credentialsUntil <= endedBy

const byAge = (a: PushSubscriptionRecord, b: PushSubscriptionRecord) =>
  a.createdAt - b.createdAt || a.device.localeCompare(b.device)

const sameSubscription = (
  a: { readonly endpoint: string; readonly p256dh: string; readonly auth: string },
  b: { readonly endpoint: string; readonly p256dh: string; readonly auth: string },
) => a.endpoint === b.endpoint && a.p256dh === b.p256dh && a.auth === b.auth

/** The later of two `credentialsUntil` (`null` is never, the latest). */
const laterOf = (a: number | null, b: number | null): number | null =>
  a === null || b === null ? null : Math.max(a, b)

/**
 * How the SQL stores write a `credentialsUntil` of `null` (never lapses): the
 * largest time a `Date` holds, so that `MAX`/`GREATEST` renew it as they do
 * any later time.
 */
const NEVER = 8_640_000_000_000_000

const storedUntil = (until: number | null): number => until ?? NEVER

/** The subscriptions' table, the same in SQLite and PostgreSQL (each adds its migration of older tables). */
const PUSH_SUBSCRIPTIONS_TABLE = `CREATE TABLE IF NOT EXISTS parley_push_subscriptions (
  user_id TEXT NOT NULL,
  device TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  p256dh TEXT NOT NULL,
  auth TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  credentials_until BIGINT NOT NULL,
  PRIMARY KEY (user_id, device)
);
CREATE INDEX IF NOT EXISTS parley_push_subscriptions_endpoint ON parley_push_subscriptions (endpoint);`

/**
 * The subscriptions' table in PostgreSQL. Rows registered before
 * `credentials_until` existed have no known credentials: they lapse at the
 * migration (content-free wake-ups until their device renews them, dropped
 * after the grace period), so that one a leaked token registered does not
 * keep its previews.
 */
export const PUSH_SUBSCRIPTIONS_SCHEMA = `${PUSH_SUBSCRIPTIONS_TABLE}
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'parley_push_subscriptions'::regclass AND attname = 'credentials_until') THEN
    ALTER TABLE parley_push_subscriptions ADD COLUMN credentials_until BIGINT;
    UPDATE parley_push_subscriptions SET credentials_until = (extract(epoch FROM now()) * 1000)::BIGINT;
    ALTER TABLE parley_push_subscriptions ALTER COLUMN credentials_until SET NOT NULL;
  END IF;
END $$;`

const COLUMNS = "user_id, device, endpoint, p256dh, auth, created_at, credentials_until"

interface Row {
  readonly user_id: string
  readonly device: string
  readonly endpoint: string
  readonly p256dh: string
  readonly auth: string
  readonly created_at: number | string
  readonly credentials_until: number | string
}

const recordOf = (row: Row): PushSubscriptionRecord => ({
  user: row.user_id as UserId,
  device: row.device,
  endpoint: row.endpoint,
  p256dh: row.p256dh,
  auth: row.auth,
  createdAt: Number(row.created_at),
  credentialsUntil: Number(row.credentials_until) >= NEVER ? null : Number(row.credentials_until),
})

// A replacement takes the new credentials' end as it is, earlier or not: a subscription is only as
// good as the token that last put it there (a leaked token replacing a device's endpoint gets the
// leaked token's lifetime, not the device's).
const UPSERT = (p: (n: number) => string) =>
  `INSERT INTO parley_push_subscriptions (${COLUMNS}) VALUES (${[1, 2, 3, 4, 5, 6, 7].map(p).join(", ")})
   ON CONFLICT (user_id, device) DO UPDATE SET endpoint = excluded.endpoint, p256dh = excluded.p256dh, auth = excluded.auth,
   credentials_until = excluded.credentials_until`

const RENEW = (p: (n: number) => string, greatest: string) =>
  `UPDATE parley_push_subscriptions SET credentials_until = ${greatest}(credentials_until, ${p(1)})
   WHERE user_id = ${p(2)} AND device = ${p(3)} AND endpoint = ${p(4)} AND p256dh = ${p(5)} AND auth = ${p(6)}`

// In the same statement as the test: a renewal or replacement committed first moved the end past it.
const REMOVE_LAPSED = (p: (n: number) => string) =>
  `DELETE FROM parley_push_subscriptions WHERE user_id = ${p(1)} AND device = ${p(2)} AND credentials_until <= ${p(3)}`

const REMOVE_ALL_LAPSED = (p: (n: number) => string) =>
  `DELETE FROM parley_push_subscriptions WHERE credentials_until <= ${p(1)}`

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
    db.exec(PUSH_SUBSCRIPTIONS_TABLE)
    const columns = db.prepare("PRAGMA table_info(parley_push_subscriptions)").all() as { name: string }[]
    if (!columns.some((c) => c.name === "credentials_until")) {
      // Rows from before have no known credentials: they lapse now (see PUSH_SUBSCRIPTIONS_SCHEMA).
      db.exec("ALTER TABLE parley_push_subscriptions ADD COLUMN credentials_until BIGINT NOT NULL DEFAULT 0")
      db.prepare("UPDATE parley_push_subscriptions SET credentials_until = ?").run(Date.now())
    }
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
    this.db
      .prepare(UPSERT(() => "?"))
      .run(r.user, r.device, r.endpoint, r.p256dh, r.auth, r.createdAt, storedUntil(r.credentialsUntil))
    this.subscribers.add(r.user)
  }

  async renew(
    user: UserId,
    device: string,
    s: { readonly endpoint: string; readonly p256dh: string; readonly auth: string },
    until: number | null,
  ): Promise<boolean> {
    const sql = RENEW(() => "?", "MAX")
    return (
      this.db.prepare(sql).run(storedUntil(until), user, device, s.endpoint, s.p256dh, s.auth).changes > 0
    )
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

  async removeLapsed(user: UserId, device: string, endedBy: number): Promise<boolean> {
    return this.db.prepare(REMOVE_LAPSED(() => "?")).run(user, device, endedBy).changes > 0
  }

  async removeAllLapsed(endedBy: number): Promise<number> {
    const removed = this.db.prepare(REMOVE_ALL_LAPSED(() => "?")).run(endedBy).changes
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
      [r.user, r.device, r.endpoint, r.p256dh, r.auth, r.createdAt, storedUntil(r.credentialsUntil)],
    )
  }

  async renew(
    user: UserId,
    device: string,
    s: { readonly endpoint: string; readonly p256dh: string; readonly auth: string },
    until: number | null,
  ): Promise<boolean> {
    const result = await this.pool.query(
      RENEW((n) => `$${n}`, "GREATEST"),
      [storedUntil(until), user, device, s.endpoint, s.p256dh, s.auth],
    )
    return (result.rowCount ?? 0) > 0
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

  async removeLapsed(user: UserId, device: string, endedBy: number): Promise<boolean> {
    const result = await this.pool.query(
      REMOVE_LAPSED((n) => `$${n}`),
      [user, device, endedBy],
    )
    return (result.rowCount ?? 0) > 0
  }

  async removeAllLapsed(endedBy: number): Promise<number> {
    const result = await this.pool.query(
      REMOVE_ALL_LAPSED((n) => `$${n}`),
      [endedBy],
    )
    return result.rowCount ?? 0
  }
}
