import type pg from "pg"
import { inTransaction } from "../pg-transaction.js"
import { type BlobStore, checkBlobKey, missingBlob, offsetConflict, rangeOf } from "./blob-store.js"

/** The table of {@link PostgresBlobStore}: one row per chunk. */
export const BLOBS_SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_blob_chunks (
  key text NOT NULL,
  start bigint NOT NULL,
  bytes bytea NOT NULL,
  PRIMARY KEY (key, start)
);`

const UNIQUE_VIOLATION = "23505"

/**
 * Blobs in PostgreSQL, so that several relays share them: one row of
 * `parley_blob_chunks` per chunk (at most an upload's chunk size, 1 MiB by
 * default), keyed by blob and offset. An append inserts its row only when the
 * offset is the blob's length; two appends at one offset collide on the
 * primary key and one gets CONFLICT. A read fetches one row at a time.
 */
export class PostgresBlobStore implements BlobStore {
  readonly kind = "postgres"

  constructor(private readonly pool: pg.Pool) {}

  async append(key: string, offset: number, bytes: Uint8Array): Promise<void> {
    checkBlobKey(key)
    if (bytes.length === 0) {
      // An empty row would take the offset's key from the chunk that follows it.
      const length = (await this.size(key)) ?? 0
      if (offset !== length) throw offsetConflict(key, offset, length)
      return
    }
    let inserted: number
    try {
      const result = await this.pool.query(
        `INSERT INTO parley_blob_chunks (key, start, bytes)
         SELECT $1, $2, $3
         WHERE (SELECT coalesce(max(start + octet_length(bytes)), 0) FROM parley_blob_chunks WHERE key = $1) = $2`,
        [key, offset, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)],
      )
      inserted = result.rowCount ?? 0
    } catch (error) {
      if ((error as { code?: string }).code !== UNIQUE_VIOLATION) throw error
      inserted = 0
    }
    if (inserted === 0) throw offsetConflict(key, offset, (await this.size(key)) ?? 0)
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    checkBlobKey(key)
    await inTransaction(this.pool, async (client) => {
      await client.query("DELETE FROM parley_blob_chunks WHERE key = $1", [key])
      await client.query("INSERT INTO parley_blob_chunks (key, start, bytes) VALUES ($1, 0, $2)", [
        key,
        Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      ])
    })
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    checkBlobKey(key)
    // One statement: one snapshot, so a put (delete and insert in a transaction) is seen whole or not at all.
    const { rows } = await this.pool.query<{ bytes: Buffer }>(
      "SELECT bytes FROM parley_blob_chunks WHERE key = $1 ORDER BY start",
      [key],
    )
    if (rows.length === 0) return undefined
    return new Uint8Array(Buffer.concat(rows.map((row) => row.bytes)))
  }

  async size(key: string): Promise<number | undefined> {
    const { rows } = await this.pool.query<{ length: string | null }>(
      "SELECT max(start + octet_length(bytes)) AS length FROM parley_blob_chunks WHERE key = $1",
      [key],
    )
    const length = rows[0]?.length
    return length === null || length === undefined ? undefined : Number(length)
  }

  async *read(key: string, start?: number, end?: number): AsyncIterable<Uint8Array> {
    const length = await this.size(key)
    if (length === undefined) throw missingBlob(key)
    const range = rangeOf(length, start, end)
    let at = range.start
    while (at < range.end) {
      // The chunk holding byte `at`, cut to the range on the server: one row in memory at a time.
      const { rows } = await this.pool.query<{ start: string; bytes: Buffer }>(
        `SELECT start, substring(bytes FROM ($2::bigint - start + 1)::int FOR ($3::bigint - $2::bigint)::int) AS bytes
         FROM parley_blob_chunks WHERE key = $1 AND start <= $2 ORDER BY start DESC LIMIT 1`,
        [key, at, range.end],
      )
      const row = rows[0]
      if (!row || row.bytes.length === 0) throw missingBlob(key)
      yield row.bytes
      at += row.bytes.length
    }
  }

  async delete(key: string): Promise<void> {
    await this.pool.query("DELETE FROM parley_blob_chunks WHERE key = $1", [key])
  }

  async list(prefix: string): Promise<string[]> {
    const { rows } = await this.pool.query<{ key: string }>(
      'SELECT key FROM parley_blob_chunks WHERE left(key, char_length($1)) = $1 GROUP BY key ORDER BY key COLLATE "C"',
      [prefix],
    )
    return rows.map((r) => r.key)
  }

  async close(): Promise<void> {}
}
