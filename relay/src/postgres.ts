import pg from "pg"

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
  try {
    await client.query(begin)
    const result = await run(client)
    await client.query("COMMIT")
    return result
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {})
    throw error
  } finally {
    client.release()
  }
}

/** Class of the two-key advisory locks that table setup takes ("Prlz"); each store has its own object id. */
const SETUP_LOCK = 0x50726c7a

/** How {@link openPool} opens a store's connections. */
export interface PoolOptions {
  readonly url: string
  readonly max: number
  /** `CREATE TABLE IF NOT EXISTS ...` statements of the store. */
  readonly schema: string
  /** The store's object id under the setup lock. */
  readonly setupLock: number
  /** Hears of idle connections the server dropped (the pool replaces them). */
  readonly onIdleError: (error: Error) => void
}

/**
 * A connection pool for one of the relay's PostgreSQL stores, with its tables
 * created. Creation holds an advisory lock, so relays starting together do not
 * race on `CREATE TABLE IF NOT EXISTS` (which can then fail on a duplicate
 * catalog entry). If setup fails the pool is closed again.
 */
export async function openPool(options: PoolOptions): Promise<pg.Pool> {
  const pool = new pg.Pool({ connectionString: options.url, max: options.max })
  // An idle connection dropped by the server would otherwise crash the process ("error" unhandled).
  pool.on("error", (error) => options.onIdleError(error))
  try {
    await inTransaction(pool, async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1, $2)", [SETUP_LOCK, options.setupLock])
      await client.query(options.schema)
    })
  } catch (error) {
    await pool.end()
    throw error
  }
  return pool
}
