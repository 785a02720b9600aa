import { spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer, type Server } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ErrorCode, ParleyError } from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { ExitCode, exitCodeOf } from "../src/startup-error.js"
import { postgresUnreachable, scratchSchema } from "./helpers/postgres.js"
import { relayEntry } from "./helpers/relay-process.js"

const dir = mkdtempSync(join(tmpdir(), "parley-startup-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/**
 * Runs the relay's command line to its exit (a start that fails exits by itself): the relay
 * compiled for the test run (see `relayEntry`), as the bin's tsx start-up cost each of these
 * a few seconds; the bin itself is run by configuration.test.ts and the packages' test.
 */
function runRelay(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
  return new Promise<{ code: number | null; stderr: string; stdout: string }>((done) => {
    const child = spawn(process.execPath, [relayEntry(args), "--log-level", "warn", ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => {
      stdout += d
    })
    child.stderr.on("data", (d: Buffer) => {
      stderr += d
    })
    // "close", not "exit": the process may exit before its output is read to the end.
    child.on("close", (code) => done({ code, stderr, stdout }))
  })
}

/** The failure's lines on stderr: a start-up failure is exactly one, with no stack trace. */
const linesOf = (stderr: string) => stderr.trimEnd().split("\n")

// Each test runs a relay process of its own, on its own paths: they run at once.
describe.concurrent("a relay that cannot start says why in one line", () => {
  it("names the address and the flags when the port is in use, and exits 3", async () => {
    const taken: Server = createServer()
    await new Promise<void>((ready) => taken.listen(0, "127.0.0.1", ready))
    const port = (taken.address() as { port: number }).port
    try {
      const { code, stderr } = await runRelay([
        "--auth-secret",
        "s",
        "--storage",
        "memory",
        "--port",
        `${port}`,
      ])
      expect(code).toBe(ExitCode.LISTEN)
      expect(linesOf(stderr)).toHaveLength(1)
      expect(stderr).toContain(`cannot listen on 127.0.0.1:${port}`)
      expect(stderr).toContain("EADDRINUSE")
      expect(stderr).toContain("--port")
    } finally {
      taken.close()
    }
  })

  it("names the data directory when it cannot be created, and exits 4", async () => {
    const file = join(dir, "a-file")
    writeFileSync(file, "not a directory")
    const dataDir = join(file, "data")
    const { code, stderr } = await runRelay(["--auth-secret", "s", "--data-dir", dataDir])
    expect(code).toBe(ExitCode.STORAGE)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(`cannot open the data directory ${dataDir} (--data-dir)`)
  })

  it("names the data directory when SQLite cannot open a database in it, and exits 4", async () => {
    const dataDir = join(dir, "blocked")
    // A directory where the documents' database file should be: SQLite says only "unable to open database file".
    mkdirSync(join(dataDir, "parley.sqlite"), { recursive: true })
    const { code, stderr } = await runRelay(["--auth-secret", "s", "--data-dir", dataDir])
    expect(code).toBe(ExitCode.STORAGE)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(`cannot open the data directory ${dataDir} (--data-dir)`)
    expect(stderr).toContain("unable to open database file")
  })

  it("says to restore from a backup when a database file of the data directory is damaged, and exits 4", async () => {
    const dataDir = join(dir, "damaged")
    mkdirSync(dataDir, { recursive: true })
    // Not a database at all: what a truncated or overwritten file looks like to SQLite.
    writeFileSync(join(dataDir, "parley.sqlite"), Buffer.alloc(8192, 7))
    const { code, stderr } = await runRelay(["--auth-secret", "s", "--data-dir", dataDir])
    expect(code).toBe(ExitCode.STORAGE)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(`cannot open the data directory ${dataDir} (--data-dir)`)
    expect(stderr).toContain("restore it from a backup")
    expect(stderr).not.toContain("a directory this user can write")
  })

  it("names the flag and the file of a public key that is not PEM, and exits 2", async () => {
    const pem = join(dir, "key.pem")
    writeFileSync(pem, "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    const { code, stderr } = await runRelay(["--auth-public-key", pem, "--storage", "memory"])
    expect(code).toBe(ExitCode.CONFIG)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(`--auth-public-key ${pem} is not a usable PEM public key`)
  })

  it("names a mistyped command and the commands there are, and exits 2", async () => {
    const child = spawn(process.execPath, [relayEntry([]), "erase-usr", "bob"], {
      stdio: ["ignore", "pipe", "pipe"],
    })
    let stderr = ""
    child.stderr.on("data", (d: Buffer) => {
      stderr += d
    })
    const code = await new Promise((done) => child.on("close", done))
    expect(code).toBe(ExitCode.CONFIG)
    // Before: "too many arguments. Expected 0 arguments but got 2."
    expect(linesOf(stderr)).toEqual([
      expect.stringContaining('unknown command "erase-usr": the commands are erase-user,'),
    ])
  })

  it("names a --static directory that does not exist, and exits 2", async () => {
    const { code, stderr } = await runRelay([
      "--dev",
      "--static",
      join(dir, "no-such-build"),
      "--storage",
      "memory",
    ])
    expect(code).toBe(ExitCode.CONFIG)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(`--static ${join(dir, "no-such-build")}: no such directory`)
  })

  it("names the flag of a malformed JWKS URL, and exits 2", async () => {
    const { code, stderr } = await runRelay([
      "--auth-jwks-url",
      "keys.example.com/jwks",
      "--storage",
      "memory",
    ])
    expect(code).toBe(ExitCode.CONFIG)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain("--auth-jwks-url must be an http(s) URL, got keys.example.com/jwks")
  })

  it("names the database, without its password, when PostgreSQL cannot be reached, and exits 4", async () => {
    const url = "postgres://parley:hunter2@127.0.0.1:1/parley"
    const { code, stderr } = await runRelay([
      "--auth-secret",
      "s",
      "--storage",
      "postgres",
      "--database-url",
      url,
    ])
    expect(code).toBe(ExitCode.STORAGE)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(
      "cannot open PostgreSQL at postgres://parley:***@127.0.0.1:1/parley (--database-url",
    )
    expect(stderr).toContain("ECONNREFUSED")
    expect(stderr).not.toContain("hunter2")
  })

  it("names Redis, without its password, when a clustered relay cannot reach it (PostgreSQL answering), and exits 4", async () => {
    const missing = await postgresUnreachable()
    if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") return
    const scratch = await scratchSchema()
    try {
      const { code, stderr } = await runRelay([
        "--auth-secret",
        "s",
        "--storage",
        "postgres",
        "--database-url",
        scratch.url,
        "--redis-url",
        "redis://:hunter2@127.0.0.1:1",
      ])
      expect(code).toBe(ExitCode.STORAGE)
      expect(linesOf(stderr)).toHaveLength(1)
      expect(stderr).toContain("cannot open Redis at redis://:***@127.0.0.1:1 (--redis-url")
      expect(stderr).not.toContain("PostgreSQL")
      expect(stderr).not.toContain("hunter2")
    } finally {
      await scratch.drop()
    }
  })

  it("refuses PostgreSQL storage without a database URL instead of using a default database, and exits 2", async () => {
    const { code, stderr } = await runRelay(["--auth-secret", "s", "--storage", "postgres"], {
      DATABASE_URL: "",
      PARLEY_DATABASE_URL: "postgres://postgres@127.0.0.1:5432/prod",
    })
    expect(code).toBe(ExitCode.CONFIG)
    expect(linesOf(stderr)).toEqual([
      "parley-relay: --storage postgres needs --database-url or DATABASE_URL (PARLEY_DATABASE_URL is not read: rename it DATABASE_URL) (parley-relay --help lists every flag)",
    ])
  })

  it("refuses --dev on a public host, naming --force-dev, and exits 2", async () => {
    const { code, stderr } = await runRelay([
      "--dev",
      "--host",
      "0.0.0.0",
      "--storage",
      "memory",
      "--port",
      "0",
    ])
    expect(code).toBe(ExitCode.CONFIG)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain("refusing to listen on 0.0.0.0")
    expect(stderr).toContain("--force-dev")
  })

  it("names the variable of a bad value from the environment, and exits 2", async () => {
    const { code, stderr } = await runRelay(["--dev", "--storage", "memory"], {
      PARLEY_MAX_DOCUMENTS: "lots",
    })
    expect(code).toBe(ExitCode.CONFIG)
    expect(linesOf(stderr)).toHaveLength(1)
    expect(stderr).toContain(
      "PARLEY_MAX_DOCUMENTS=lots: --max-documents must be a non-negative integer, got lots",
    )
  })
})

describe("the exit code of a failed start", () => {
  it("is storage's (4), not a bug's (1), for storage that fails or is damaged after it opened", () => {
    // As the storage guard reports a damaged page of the hook outbox read at start ("database disk image
    // is malformed"): nothing but the disk is wrong, and a supervisor should treat it as storage.
    const malformed = new ParleyError(
      ErrorCode.STORAGE_UNAVAILABLE,
      "hook outbox: pendingLanes failed: database disk image is malformed",
    )
    expect(exitCodeOf(malformed)).toBe(ExitCode.STORAGE)
    expect(exitCodeOf(new ParleyError(ErrorCode.DAMAGED, "a damaged document"))).toBe(ExitCode.STORAGE)
    expect(exitCodeOf(new Error("a bug"))).toBe(ExitCode.FAILURE)
  })
})
