import { createHash } from "node:crypto"
import pg from "pg"

/**
 * Class of the two-key advisory lock that says relays use a database's tables
 * ("Prlr"); the second key is the schema's, so that deployments (and tests)
 * in other schemas of one database do not see each other's relays.
 */
const RELAYS_LOCK = 0x50726c72

/**
 * The table whose one row numbers who took the database last without a
 * cluster: a lone relay at its start, an offline command. A lone relay's
 * document writes check it (see `PostgresStorage`'s fence), so that one whose
 * lock connection dropped while another took the database stores nothing
 * more, rather than write beside it until its next attempt at the lock.
 */
const FENCE_TABLE = "parley_relay_fence"

/**
 * Takes the database for a lone relay or an offline command (holding the lock
 * exclusively on `client`): the fence's new token. The row's update waits for
 * the transactions of a relay that still writes under an older token, so what
 * they stored is there for the taker to read, and they store nothing after.
 */
async function claim(client: pg.Client): Promise<string> {
  await client.query(
    `CREATE TABLE IF NOT EXISTS ${FENCE_TABLE} (id smallint PRIMARY KEY, token bigint NOT NULL)`,
  )
  const { rows } = await client.query<{ token: string }>(
    `INSERT INTO ${FENCE_TABLE} (id, token) VALUES (1, 1)
     ON CONFLICT (id) DO UPDATE SET token = ${FENCE_TABLE}.token + 1 RETURNING token`,
  )
  return rows[0]!.token
}

/**
 * Whether the database is still the lone relay's that took it with `token`,
 * checked on `client` inside the write's transaction: the row is read `FOR
 * SHARE`, so a new taker's claim waits until this transaction ends.
 */
export async function stillHolds(client: pg.ClientBase, token: string): Promise<boolean> {
  const { rows } = await client.query<{ token: string }>(
    `SELECT token FROM ${FENCE_TABLE} WHERE id = 1 FOR SHARE`,
  )
  return rows[0]?.token === token
}

/** How long a relay waits before it connects again to hold the lock, after losing its connection. */
const RECONNECT_MS = [1_000, 2_000, 5_000, 10_000] as const

/** Who holds the lock: one session of `pg_stat_activity`. */
export interface LockHolder {
  /** `parley-relay`, or `parley-relay <command>`. */
  readonly application: string
  /** The holder's address as PostgreSQL saw it; empty over a Unix socket. */
  readonly address: string
  readonly since: string
}

/** Offline commands and relays exclude each other on this database: who holds it. */
export class DatabaseInUse extends Error {
  constructor(readonly holders: readonly LockHolder[]) {
    super(
      holders.length === 0
        ? "another session holds it"
        : holders
            .map((h) => `${h.application || "a session"} (${h.address || "local socket"}, since ${h.since})`)
            .join(", ") + (holders.length === 1 ? " is using it" : " are using it"),
    )
  }
}

async function connect(url: string, application: string, timeoutMs: number): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    application_name: application,
    connectionTimeoutMillis: timeoutMs,
    query_timeout: timeoutMs,
    keepAlive: true,
  })
  // A dropped connection emits "error": heard here, so that it cannot crash the process.
  client.on("error", () => {})
  try {
    await client.connect()
    // A holder whose host vanished (power, network) holds the lock until the server sees its socket
    // dead: by the system's keepalives, two hours. Asked of this session: within about 25 s. (Over a
    // Unix socket these do nothing, and nothing needs them.)
    await client.query(
      "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3",
    )
  } catch (error) {
    await client.end().catch(() => {})
    throw error
  }
  return client
}

/** The lock's second key: the first schema of the connection's search path, hashed to 31 bits. */
async function schemaKey(client: pg.Client): Promise<number> {
  const { rows } = await client.query<{ schema: string | null }>("SELECT current_schema() AS schema")
  return (
    createHash("sha256")
      .update(rows[0]?.schema ?? "")
      .digest()
      .readUInt32BE(0) >>> 1
  )
}

async function holders(client: pg.Client, key: number): Promise<LockHolder[]> {
  const { rows } = await client.query<{ application: string; address: string | null; since: Date }>(
    `SELECT a.application_name AS application, host(a.client_addr) AS address, a.backend_start AS since
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2 AND l.granted
        AND l.pid <> pg_backend_pid()
        -- Advisory locks are the database's own: relays on other databases of the server hold other locks.
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [RELAYS_LOCK, key],
  )
  return rows.map((r) => ({
    application: r.application,
    address: r.address ?? "",
    since: r.since.toISOString(),
  }))
}

/** Takes the lock on `client`, shared (a cluster's relay) or exclusive (a lone relay, an offline command), or throws {@link DatabaseInUse}. */
async function take(client: pg.Client, shared: boolean): Promise<void> {
  const key = await schemaKey(client)
  const { rows } = await client.query<{ taken: boolean }>(
    `SELECT ${shared ? "pg_try_advisory_lock_shared" : "pg_try_advisory_lock"}($1, $2) AS taken`,
    [RELAYS_LOCK, key],
  )
  if (!rows[0]?.taken) throw new DatabaseInUse(await holders(client, key))
}

/** The lock a relay holds: released by {@link RelaysLock.close}. */
export interface RelaysLock {
  /** A lone relay's token of the database's fence (see {@link stillHolds}); undefined in a cluster. */
  readonly token: string | undefined
  close(): void
}

/**
 * Holds, for the relay's life, a session lock on the PostgreSQL database at
 * `url` (its schema), on a connection of its own: shared by the relays of a
 * cluster, exclusive for a relay without one. So a second relay without a
 * cluster, or one that joins a database a lone relay uses, is refused at
 * start, and an offline command that must run with them stopped
 * (`erase-user`, `rebuild-inboxes`) is refused while one runs — what the
 * relays hold in memory would be written back over its work. Throws
 * {@link DatabaseInUse} while another holds it so.
 *
 * A lost connection (a restart, a failover) is opened again, and the lock
 * taken again, after 1 to 10 s; `onLost` hears of each loss and failed
 * attempt. The lock goes with its session: a relay killed outright, or cut off
 * until PostgreSQL drops its connection, no longer holds it.
 */
export async function holdRelaysLock(
  url: string,
  options: {
    readonly timeoutMs: number
    /**
     * A relay of a cluster (`--redis-url`) shares the database with the others; one without a
     * cluster must be its only relay (two would each number and compact the same logs, and
     * acknowledged changes of one would be lost): it holds the lock alone.
     */
    readonly clustered: boolean
    readonly onLost: (error: Error) => void
  },
): Promise<RelaysLock> {
  let closed = false
  let attempt = 0
  let timer: NodeJS.Timeout | undefined
  let current: pg.Client | undefined
  const hold = async (): Promise<pg.Client> => {
    const client = await connect(
      url,
      options.clustered ? "parley-relay" : "parley-relay (alone)",
      options.timeoutMs,
    )
    try {
      await take(client, options.clustered)
    } catch (error) {
      await client.end().catch(() => {})
      throw error
    }
    client.once("end", () => {
      if (!closed) again(new Error("the connection that holds the relays' lock on PostgreSQL closed"))
    })
    return client
  }
  const again = (error: Error) => {
    options.onLost(error)
    const delay = RECONNECT_MS[Math.min(attempt++, RECONNECT_MS.length - 1)]
    timer = setTimeout(() => {
      hold().then(
        (client) => {
          attempt = 0
          if (closed) void client.end().catch(() => {})
          else current = client
        },
        (failure: unknown) => {
          if (!closed) again(failure as Error)
        },
      )
    }, delay)
    timer.unref()
  }
  current = await hold()
  let token: string | undefined
  if (!options.clustered) {
    try {
      token = await claim(current)
    } catch (error) {
      closed = true
      await current.end().catch(() => {})
      throw error
    }
  }
  return {
    token,
    close() {
      closed = true
      clearTimeout(timer)
      void current?.end().catch(() => {})
      current = undefined
    },
  }
}

/**
 * Takes the PostgreSQL database at `url` (its schema) for offline command
 * `command`: the release, or undefined after writing one line saying which
 * relays (or which other command) use it, for the command to exit 1.
 */
export async function lockPostgresForCommand(
  url: string,
  command: string,
  out: (text: string) => void,
  timeoutMs: number,
): Promise<(() => Promise<void>) | undefined> {
  let client: pg.Client | undefined
  try {
    client = await connect(url, `parley-relay ${command}`, timeoutMs)
    // A mistyped URL or schema: opening the backend would create empty tables there, and an erasure
    // would report success for a user it never saw.
    const { rows } = await client.query<{ present: boolean }>(
      "SELECT to_regclass('parley_updates') IS NOT NULL AS present",
    )
    if (!rows[0]?.present) {
      await client.end().catch(() => {})
      out(`parley-relay ${command}: no relay's documents in this database (schema): check --database-url`)
      return undefined
    }
    await take(client, false)
    // A lone relay whose lock connection is down stores nothing from now on (see `claim`).
    await claim(client)
    const held = client
    return () => held.end().catch(() => {})
  } catch (error) {
    await client?.end().catch(() => {})
    out(
      error instanceof DatabaseInUse
        ? `parley-relay ${command}: ${error.message}: stop the relays first (what they hold in memory would be written back over this command's work)`
        : `parley-relay ${command}: cannot take the relays' lock on PostgreSQL: ${(error as Error).message}`,
    )
    return undefined
  }
}
