import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"
import { ConfigError, parseConfig } from "../src/config.js"
import { DEFAULT_RELAY_OPTIONS, DEFAULT_TRANSPORT_LIMITS } from "../src/defaults.js"
import { runDeadLetterCli } from "../src/hooks/dead-letter-cli.js"
import { runRebuildInboxesCli } from "../src/inbox/rebuild-cli.js"
import type { RelayOptions } from "../src/relay.js"
import { DEFAULT_CORE_LIMITS } from "../src/relay-core.js"
import { runDamagedCli } from "../src/storage/damaged-cli.js"
import { relayEntry } from "./helpers/relay-process.js"

const here = dirname(fileURLToPath(import.meta.url))
const BIN = resolve(here, "../bin/parley-relay.js")

interface FlagRow {
  readonly flag: string
  readonly env: string
  readonly default: string
}

/** The flags `parley-relay --help` prints, each with its variable and default (commander wraps long lines). */
function flagsOfHelp(help: string): FlagRow[] {
  const entries: string[] = []
  for (const line of help.split("\n")) {
    if (/^ {2}--/.test(line)) entries.push(line.trim())
    else if (/^ {6,}\S/.test(line) && entries.length > 0) entries[entries.length - 1] += ` ${line.trim()}`
  }
  return entries.map((entry) => {
    const flag = entry.match(/^(--[a-z-]+)/)![1]!
    const tail = entry.match(/\(((?:default|env): [^()]*)\)$/)?.[1] ?? ""
    return {
      flag,
      env: tail.match(/env: (\w+)/)?.[1] ?? "",
      default: (tail.match(/default: ("[^"]*"|\d+)/)?.[1] ?? "").replaceAll('"', ""),
    }
  })
}

/** The rows of relay/README.md's configuration table. */
function flagsOfReadme(readme: string): FlagRow[] {
  const section = readme.slice(readme.indexOf("## Configuration"), readme.indexOf("### Exit codes"))
  return section
    .split("\n")
    .filter((line) => line.startsWith("| `--"))
    .map((line) => {
      const [flag, env, def] = line
        .split("|")
        .slice(1, 4)
        .map((cell) => cell.trim())
      // A cell is code (`--port N`, `PARLEY_WEBHOOKS` (comma-separated), `./data`) or a bare word; "off" is no default.
      const code = (cell: string) => cell!.match(/`([^`]*)`/)?.[1] ?? cell!
      return {
        flag: code(flag!).split(" ")[0]!,
        env: env ? code(env) : "",
        default: def === "off" ? "" : code(def!),
      }
    })
}

describe("configuration", () => {
  it("documents in the README exactly the flags, variables and defaults that --help prints", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [BIN, "--help"])
    const help = flagsOfHelp(stdout)
    const readme = flagsOfReadme(readFileSync(resolve(here, "../README.md"), "utf8"))
    expect(help.length).toBeGreaterThan(40)
    expect(readme).toEqual(help)
  })

  it("names every command in --help's usage, and each answers --help instead of doing its work", async () => {
    const run = promisify(execFile)
    const { stdout } = await run(process.execPath, [BIN, "--help"])
    const commands = /parley-relay ([\w|-]+) \.\.\. \(--help for each\)/.exec(stdout)?.[1]?.split("|")
    expect(commands).toContain("vapid-keys")
    // The commands' own --help from the relay as the other tests run it (compiled for the test run
    // when it is, see relayEntry: a second each through the bin's TypeScript loader), all at once.
    const helps = await Promise.all(
      commands!.map((command) => run(process.execPath, [relayEntry(), command, "--help"])),
    )
    for (const [i, help] of helps.entries()) {
      expect(help.stdout, commands![i]).toMatch(/usage/i)
      expect(help.stdout, commands![i]).not.toMatch(/PARLEY_VAPID_PRIVATE_KEY=\S/)
    }
  }, 60_000)

  it("starts the command-line relay with the same defaults as startRelay({})", () => {
    const config = parseConfig(["--auth-secret", "s"], {}) as RelayOptions
    expect(config).toMatchObject({
      port: DEFAULT_RELAY_OPTIONS.port,
      host: DEFAULT_RELAY_OPTIONS.host,
      dataDir: DEFAULT_RELAY_OPTIONS.dataDir,
      storage: DEFAULT_RELAY_OPTIONS.storage,
      log: DEFAULT_RELAY_OPTIONS.log,
      maxTokenLifetimeMs: DEFAULT_RELAY_OPTIONS.maxTokenLifetimeMs,
      storageTimeoutMs: DEFAULT_RELAY_OPTIONS.storageTimeoutMs,
      hookTimeoutMs: DEFAULT_RELAY_OPTIONS.hookTimeoutMs,
      hookAttempts: DEFAULT_RELAY_OPTIONS.hookAttempts,
    })
    const { maxPendingBytes, minBytesPerStruct, ...flagged } = DEFAULT_CORE_LIMITS
    expect(config.limits).toEqual({ ...flagged, ...DEFAULT_TRANSPORT_LIMITS })
    expect(config.databaseUrl).toBeUndefined()
  })

  it("takes repeated --webhook flags, or a comma-separated PARLEY_WEBHOOKS, and a flag wins over its variable", () => {
    const secret = { PARLEY_WEBHOOK_SECRET: "w" }
    expect(
      parseConfig(["--dev", "--webhook", "http://a/x", "--webhook", "https://b/y"], secret),
    ).toMatchObject({ webhooks: ["http://a/x", "https://b/y"], webhookSecret: "w" })
    expect(parseConfig(["--dev"], { ...secret, PARLEY_WEBHOOKS: "http://a/x, https://b/y" })).toMatchObject({
      webhooks: ["http://a/x", "https://b/y"],
    })
    expect(
      parseConfig(["--dev", "--webhook", "http://c/z"], { ...secret, PARLEY_WEBHOOKS: "http://a/x" }),
    ).toMatchObject({ webhooks: ["http://c/z"] })
    // fetch refuses a URL with a user and password at every attempt: refused at start, not echoed.
    expect(() =>
      parseConfig(["--dev", "--webhook", "https://bot:Pass-Word-5@hooks.example.com/in"], secret),
    ).toThrow(/^--webhook https:\/\/hooks\.example\.com carries a user and password/)
  })

  it("takes the relay-wide limit of upload chunks in flight from a flag or its variable", () => {
    expect(parseConfig(["--dev", "--attachment-chunks-in-flight", "8"], {})).toMatchObject({
      attachments: { maxChunksInFlight: 8 },
    })
    expect(parseConfig(["--dev"], { PARLEY_ATTACHMENT_CHUNKS_IN_FLIGHT: "16" })).toMatchObject({
      attachments: { maxChunksInFlight: 16 },
    })
  })

  it("reads switches off from 0, false or no, and takes an empty variable as unset", () => {
    expect(parseConfig(["--auth-secret", "s"], { PARLEY_DEV: "no", PARLEY_PORT: "" })).toMatchObject({
      dev: false,
      port: DEFAULT_RELAY_OPTIONS.port,
    })
    expect(parseConfig(["--auth-secret", "s"], { PARLEY_DEV: "yes" })).toMatchObject({ dev: true })
  })

  it("uses no default database: PostgreSQL storage needs a database URL, for the relay and every sub-command", async () => {
    expect(() => parseConfig(["--dev", "--storage", "postgres"], {})).toThrow(ConfigError)
    expect(() => parseConfig(["--dev", "--storage", "postgres"], {})).toThrow(
      /--database-url or DATABASE_URL/,
    )
    expect(
      parseConfig(["--dev", "--storage", "postgres"], { DATABASE_URL: "postgres://db/x" }),
    ).toMatchObject({
      databaseUrl: "postgres://db/x",
    })
    // Nor the user's own database for a URL naming none (before: tables made unseen in `postgres`), nor
    // a host named "base" for a string that is no URL (before: a storage failure, exit 4).
    const url =
      (DATABASE_URL: string, more: Record<string, string> = {}) =>
      () =>
        parseConfig(["--dev", "--storage", "postgres"], { DATABASE_URL, ...more })
    expect(url("postgres://postgres:secret@127.0.0.1:5432")).toThrow(/names no database/)
    expect(url("postgres://postgres:secret@127.0.0.1:5432/")).toThrow(/names no database/)
    expect(url("not-a-url")).toThrow(/is not a PostgreSQL URL/)
    expect(url("mysql://db/x")).toThrow(/starts with mysql:/)
    expect(url("postgres://postgres:secret@127.0.0.1:5432")).not.toThrow(/secret/)
    expect(url("postgresql://db:5432", { PGDATABASE: "chat" })()).toMatchObject({
      databaseUrl: "postgresql://db:5432",
    })
    expect(url("/run/postgresql chat")()).toMatchObject({ databaseUrl: "/run/postgresql chat" })
    const env = { PARLEY_STORAGE: "postgres", PARLEY_DATABASE_URL: "postgres://db/x" }
    for (const [run, argv] of [
      [runDeadLetterCli, ["list"]],
      [runDamagedCli, ["list"]],
      [runRebuildInboxesCli, []],
    ] as const) {
      const lines: string[] = []
      expect(await run(argv, (line) => lines.push(line), env)).toBe(2)
      expect(lines[0]).toContain(
        "--storage postgres needs --database-url or DATABASE_URL (PARLEY_DATABASE_URL is not read: rename it DATABASE_URL)",
      )
    }
  })
})
