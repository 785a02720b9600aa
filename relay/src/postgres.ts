import { createHash } from "node:crypto"
import pg from "pg"
import { inTransaction } from "./pg-transaction.js"
import { READ_TIMEOUT } from "./postgres-errors.js"
import { DEFAULT_STORAGE_TIMEOUT_MS } from "./storage/guard.js"

/** Class of the two-key advisory lock that table setup takes ("Prlz"), apart from the documents' one-key locks. */
const SETUP_LOCK = 0x50726c7a

/** How {@link openPool} opens the backend's connections. */
export interface PoolOptions {
  readonly url: string
  readonly max: number
  /** `CREATE TABLE IF NOT EXISTS ...` statements of the backend. */
  readonly schema: string
  /** Hears of connections the server dropped, idle or in use (the pool replaces them). */
  readonly onIdleError: (error: Error) => void
  /**
   * Longest wait, in ms, for a connection (including a free one from the
   * pool), for one query (client side: a server that stopped answering), and
   * for one statement (server side). Default {@link DEFAULT_STORAGE_TIMEOUT_MS}.
   */
  readonly timeoutMs?: number
}

/**
 * The connection pool of the relay's PostgreSQL backend, with its tables
 * created. Creation holds an advisory lock, so relays starting together do not
 * race on `CREATE TABLE IF NOT EXISTS` (which can then fail on a duplicate
 * catalog entry). If setup fails the pool is closed again.
 *
 * A schema that is already in place (its digest recorded) is not run again:
 * `CREATE INDEX IF NOT EXISTS` locks its table before it looks for the index,
 * so a relay restarting next to running ones would take share locks on
 * several busy tables in one transaction and could deadlock with their writes
 * (seen: a chaos-test restart failing with 40P01). A setup that does run and
 * loses a deadlock is retried.
 */
export async function openPool(options: PoolOptions): Promise<pg.Pool> {
  const timeout = options.timeoutMs ?? DEFAULT_STORAGE_TIMEOUT_MS
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.max,
    connectionTimeoutMillis: timeout,
    query_timeout: timeout,
    statement_timeout: timeout,
    // A transaction whose relay vanished (timed out, reset) must not hold its locks on the server.
    idle_in_transaction_session_timeout: timeout,
    // Notices a dead peer on idle connections too. Without a delay the OS default applies (two hours
    // on Linux); keepalive still takes minutes on a silent peer (the probes' interval and count stay
    // the OS's), so a dead idle connection is found sooner by evictIdleAfterReadTimeouts below.
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_IDLE_MS,
  })
  const evicted = evictIdleAfterReadTimeouts(pool)
  // A connection the server drops (a terminated backend, a restart, a failover) emits "error", which
  // would crash the process unheard. Heard for the connection's whole life, not only while idle (the
  // pool's own listener): pg-pool takes that one off before the caller gets the connection and can
  // add its own, and the server's FATAL message may be read in between. The query in progress, if
  // any, still rejects with the error. A connection the relay closed itself is no news.
  pool.on("connect", (client) =>
    client.on("error", (error) => {
      if (!evicted.has(client)) options.onIdleError(error)
    }),
  )
  // The pool re-emits an idle connection's error, already heard above.
  pool.on("error", () => {})
  try {
    await setUpSchema(pool, options.schema)
  } catch (error) {
    await pool.end()
    throw error
  }
  return pool
}

/** Idle time after which the pool's connections send TCP keepalive probes, in ms. */
const KEEPALIVE_IDLE_MS = 10_000

/**
 * Closes every idle connection of `pool` whenever a query times out without
 * an answer (pg's `query_timeout`): the connection it ran on is discarded by
 * its caller, but the idle ones were opened before the failure too. When the
 * network forgot the old flows while new ones work (a NAT or firewall that
 * dropped them, a failover behind a virtual IP), each of them is as dead, and
 * the next caller (the storage probe, a retried append) would take one and
 * wait a whole storage timeout again: recovery took two timeouts or more.
 * Evicted, the next caller opens a fresh connection. An answered timeout
 * (`statement_timeout`, `lock_timeout`) says the connection works and evicts
 * nothing. Returns the connections it closed, whose errors are no news.
 *
 * pg-pool has no call to close idle connections: they are tracked from its
 * events, and closed by resetting their sockets, so each fails at once and the
 * pool drops it as it drops any connection that errs while idle (an end would
 * wait for the dead peer).
 */
function evictIdleAfterReadTimeouts(pool: pg.Pool): WeakSet<pg.PoolClient> {
  const idle = new Set<pg.PoolClient>()
  const evicted = new WeakSet<pg.PoolClient>()
  pool.on("acquire", (client) => idle.delete(client))
  pool.on("remove", (client) => idle.delete(client))
  // Released without an error, a connection goes back to the pool (or is closed, then "remove").
  pool.on("release", (error, client) => {
    if (!error) {
      idle.add(client)
      return
    }
    idle.delete(client)
    if (error.message !== READ_TIMEOUT) return
    for (const stale of idle) {
      evicted.add(stale)
      resetSocket(stale)
    }
    idle.clear()
  })
  return evicted
}

/** Resets `client`'s socket: closed at once, without waiting on a peer that may not answer. */
function resetSocket(client: pg.ClientBase): void {
  const stream = (client as unknown as { connection?: { stream?: { resetAndDestroy?: () => void } } })
    .connection?.stream
  try {
    stream?.resetAndDestroy?.()
  } catch {
    // Already closed.
  }
}

/** Where the digests of the schemas already set up in this (search-path) schema are kept. */
const SETUPS_TABLE = "parley_schema_setups"

/** Lock and serialization failures that leave nothing behind and succeed when tried again. */
const TRANSIENT_SETUP_FAILURES = new Set(["40P01", "40001", "55P03"])

/** How often a setup that lost a deadlock is tried before the error is given to the caller. */
const SETUP_ATTEMPTS = 5

async function setUpSchema(pool: pg.Pool, schema: string): Promise<void> {
  const digest = createHash("sha256").update(schema).digest("hex")
  if (await schemaRecorded(pool, digest)) return
  for (let attempt = 1; ; attempt++) {
    try {
      await inTransaction(pool, async (client) => {
        await client.query("SELECT pg_advisory_xact_lock($1, 0)", [SETUP_LOCK])
        // Another relay may have finished the same setup while this one waited for the lock.
        if (await schemaRecorded(client, digest)) return
        await client.query(schema)
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${SETUPS_TABLE} (digest TEXT PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now())`,
        )
        await client.query(`INSERT INTO ${SETUPS_TABLE} (digest) VALUES ($1) ON CONFLICT DO NOTHING`, [
          digest,
        ])
      })
      return
    } catch (error) {
      const code = (error as { code?: unknown }).code
      if (attempt >= SETUP_ATTEMPTS || typeof code !== "string" || !TRANSIENT_SETUP_FAILURES.has(code))
        throw error
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt + Math.random() * 100))
    }
  }
}

async function schemaRecorded(db: pg.Pool | pg.ClientBase, digest: string): Promise<boolean> {
  const { rows } = await db.query<{ present: boolean }>("SELECT to_regclass($1) IS NOT NULL AS present", [
    SETUPS_TABLE,
  ])
  if (!rows[0]?.present) return false
  const found = await db.query(`SELECT 1 FROM ${SETUPS_TABLE} WHERE digest = $1`, [digest])
  return (found.rowCount ?? 0) > 0
}
