import type { UserId } from "@parley/shared"
import Database from "better-sqlite3"
import pg from "pg"
import { describe, expect, it } from "vitest"
import { pushStanding } from "../../src/push/lifetime.js"
import {
  PostgresPushSubscriptionStore,
  PUSH_SUBSCRIPTIONS_SCHEMA,
  SqlitePushSubscriptionStore,
} from "../../src/push/store.js"
import { postgresUnreachable, scratchSchema } from "../helpers/postgres.js"

// The table before subscriptions recorded their credentials' end.
const OLD_TABLE = `CREATE TABLE parley_push_subscriptions (
  user_id TEXT NOT NULL,
  device TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  p256dh TEXT NOT NULL,
  auth TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (user_id, device)
)`
const OLD_ROW = `INSERT INTO parley_push_subscriptions VALUES ('alice', 'phone', 'https://push.example/a', 'k', 'a', 1000)`
const DAY = 86_400_000
const unreachable = await postgresUnreachable()

// A subscription stored before may have been registered with a leaked token: its credentials are unknown.
describe("push subscriptions stored before their credentials were recorded", () => {
  it("lapse when SQLite first opens them: wake-ups only, until their device renews them", async () => {
    const db = new Database(":memory:")
    db.exec(OLD_TABLE)
    db.exec(OLD_ROW)
    const before = Date.now()
    const store = new SqlitePushSubscriptionStore(db)
    const [sub] = await store.list("alice" as UserId)
    expect(sub!.credentialsUntil).toBeGreaterThanOrEqual(before)
    expect(sub!.credentialsUntil).toBeLessThanOrEqual(Date.now())
    expect(pushStanding(sub!, Date.now() + 1, 30 * DAY)).toBe("wake")
    db.close()
  })

  it.skipIf(unreachable !== undefined)("lapse when PostgreSQL first opens them", async () => {
    const scratch = await scratchSchema()
    const pool = new pg.Pool({ connectionString: scratch.url })
    try {
      await pool.query(OLD_TABLE)
      await pool.query(OLD_ROW)
      const before = Date.now()
      await pool.query(PUSH_SUBSCRIPTIONS_SCHEMA)
      // Run again as every start does: the migration is done once.
      await pool.query(PUSH_SUBSCRIPTIONS_SCHEMA)
      const [sub] = await new PostgresPushSubscriptionStore(pool).list("alice" as UserId)
      expect(sub!.credentialsUntil).toBeGreaterThanOrEqual(before - 1_000)
      expect(sub!.credentialsUntil).toBeLessThanOrEqual(Date.now() + 1_000)
      expect(pushStanding(sub!, Date.now() + 1_000, 30 * DAY)).toBe("wake")
    } finally {
      await pool.end()
      await scratch.drop()
    }
  })
})
