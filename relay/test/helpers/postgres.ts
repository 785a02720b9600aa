import pg from "pg"

/** The database tests use: `DATABASE_URL`, else the local default. */
export const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"

/** Why PostgreSQL at `url` cannot be reached, or undefined when it can. */
export async function postgresUnreachable(url: string = DATABASE_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 })
  try {
    await client.connect()
    await client.end()
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

/** A schema of its own in the test database, and a connection string whose tables go there. */
export interface ScratchSchema {
  readonly schema: string
  /** `DATABASE_URL` with `search_path` set to the schema: every unqualified table lives in it. */
  readonly url: string
  /** Drops the schema and everything in it. */
  drop(): Promise<void>
}

let count = 0

/**
 * Creates a uniquely named schema, so that test files running in parallel (and
 * other runs on the same database) never see each other's tables.
 */
export async function scratchSchema(url: string = DATABASE_URL): Promise<ScratchSchema> {
  const schema = `parley_test_${process.pid}_${Date.now().toString(36)}_${count++}`
  const admin = new pg.Client({ connectionString: url })
  await admin.connect()
  try {
    await admin.query(`CREATE SCHEMA ${schema}`)
  } finally {
    await admin.end()
  }
  const scoped = new URL(url)
  const options = scoped.searchParams.get("options")
  scoped.searchParams.set("options", `${options ? `${options} ` : ""}-c search_path=${schema}`)
  return {
    schema,
    url: scoped.toString(),
    drop: async () => {
      const client = new pg.Client({ connectionString: url })
      await client.connect()
      try {
        await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
      } finally {
        await client.end()
      }
    },
  }
}
