/*
 * pg's own errors for a server that sent nothing back, apart from the pool
 * (relay/src/postgres.ts), so that the storage guard can recognise them
 * without loading pg where PostgreSQL is not used.
 */

/** What pg rejects a query with when the server sent nothing back within `query_timeout`. */
export const READ_TIMEOUT = "Query read timeout"

/** What pg and pg-pool reject with when a connection could not be opened within `connectionTimeoutMillis`. */
const CONNECT_TIMEOUTS = new Set([
  "timeout exceeded when trying to connect",
  "Connection terminated due to connection timeout",
])

/**
 * Whether `error` is pg's own timeout for a server that sent nothing back
 * (a query's read, a connection's opening), not an answer such as a
 * `statement_timeout` or `lock_timeout`: the storage guard then refuses
 * reads at once too (see `StorageGuardOptions.noAnswer`).
 */
export function isUnansweredPostgresError(error: unknown): boolean {
  return error instanceof Error && (error.message === READ_TIMEOUT || CONNECT_TIMEOUTS.has(error.message))
}
