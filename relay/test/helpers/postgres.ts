import pg from "pg"
import { expect } from "vitest"

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
        // A relay of the test may still be ending its last transaction on the schema: PostgreSQL then
        // picks one side of the deadlock, sometimes this one.
        for (let attempt = 1; ; attempt++) {
          try {
            await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
            break
          } catch (error) {
            if ((error as { code?: string }).code !== "40P01" || attempt >= 5) throw error
            await new Promise((resolve) => setTimeout(resolve, 100 * attempt))
          }
        }
      } finally {
        await client.end()
      }
    },
  }
}

/** Where `text` is in the schema's tables (every column, bytes as latin1), as "table document". */
export async function rowsHolding(schemaUrl: string, text: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: schemaUrl })
  await client.connect()
  try {
    const { rows: tables } = await client.query<{ name: string }>(
      "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    const found: string[] = []
    for (const { name } of tables) {
      const { rows } = await client.query<Record<string, unknown>>(`SELECT * FROM "${name}"`)
      for (const row of rows)
        for (const value of Object.values(row))
          if (
            (typeof value === "string" && value.includes(text)) ||
            (value instanceof Uint8Array && Buffer.from(value).toString("latin1").includes(text))
          )
            found.push(`${name} ${String(row.doc ?? row.document ?? row.conversation ?? "")}`)
    }
    return found
  } finally {
    await client.end()
  }
}

/** Waits until no table holds `text` (`withinMs`, 10 s by default), then asserts it, naming where it still is. */
export async function purgedEverywhere(schemaUrl: string, text: string, withinMs = 10_000): Promise<void> {
  const deadline = Date.now() + withinMs
  while ((await rowsHolding(schemaUrl, text)).length > 0 && Date.now() < deadline)
    await new Promise((resolve) => setTimeout(resolve, 100))
  expect(await rowsHolding(schemaUrl, text)).toEqual([])
}
