import type pg from "pg"

// Apart from postgres.ts (the pool, which loads the pg driver): the stores that run transactions are
// imported by every relay, SQLite ones too, and a type-only import keeps pg (about 1 MB of heap
// once loaded) out of a relay that never opens a PostgreSQL pool.

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
