import pg from "pg"
import { DEFAULT_STORAGE_TIMEOUT_MS } from "./storage/guard.js"

/**
 * Runs `run` in one transaction on a pooled connection: committed when it
 * resolves, rolled back when it throws. `begin` is the statement that opens it
 * (an isolation level, say).
 */
export async function inTransaction<T>(
  pool: pg.Pool,
  run: (client: pg.PoolClient) => Promise<T>,
  begin = "BEGIN",
): Promise<T> {
  const client = await pool.connect()
  // The pool listens for "error" only on idle connections: without a listener of our own, a connection
  // the server terminates mid-transaction (restart, failover, pg_terminate_backend, a reset) would
  // crash the process with an unhandled "error" event. The failing query rejects as well.
  const onError = () => {}
  client.on("error", onError)
  let failure: Error | undefined
  try {
    await client.query(begin)
    const result = await run(client)
    await client.query("COMMIT")
    return result
  } catch (error) {
    failure = error instanceof Error ? error : new Error(String(error))
    throw error
  } finally {
    client.off("error", onError)
    if (failure) discard(client, failure)
    else client.release()
  }
}

/**
 * Closes a connection whose transaction failed instead of returning it to the
 * pool: after a timeout or a reset its state is unknown, and closing it makes
 * the server abort the transaction (no ROLLBACK needed, which would only wait
 * on a dead connection). After a timeout the socket is reset, not ended: an
 * end would still deliver the statements queued on it (a late COMMIT) once the
 * network answers again, after the caller was told the write failed.
 */
function discard(client: pg.PoolClient, failure: Error): void {
  if (/timeout/i.test(failure.message)) {
    const stream = (client as unknown as { connection?: { stream?: { resetAndDestroy?: () => void } } })
      .connection?.stream
    try {
      stream?.resetAndDestroy?.()
    } catch {
      // Already closed.
    }
  }
  client.release(failure)
}

/** Class of the two-key advisory lock that table setup takes ("Prlz"), apart from the documents' one-key locks. */
const SETUP_LOCK = 0x50726c7a

/** How {@link openPool} opens the backend's connections. */
export interface PoolOptions {
  readonly url: string
  readonly max: number
  /** `CREATE TABLE IF NOT EXISTS ...` statements of the backend. */
  readonly schema: string
  /** Hears of idle connections the server dropped (the pool replaces them). */
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
    // Notices a dead peer on idle connections too.
    keepAlive: true,
  })
  // An idle connection dropped by the server would otherwise crash the process ("error" unhandled).
  pool.on("error", (error) => options.onIdleError(error))
  try {
    await inTransaction(pool, async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1, 0)", [SETUP_LOCK])
      await client.query(options.schema)
    })
  } catch (error) {
    await pool.end()
    throw error
  }
  return pool
}
