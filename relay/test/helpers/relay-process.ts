import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { SignJWT } from "jose"

const BIN = resolve(dirname(fileURLToPath(import.meta.url)), "../../bin/parley-relay.js")

/** A relay running as a child process (`node relay/bin/parley-relay.js --port 0 ...`). */
export interface RelayProcess {
  /** `ws://127.0.0.1:PORT` */
  readonly url: string
  readonly httpUrl: string
  readonly port: number
  readonly dataDir: string
  /** HS256 secret the relay verifies tokens with. */
  readonly secret: string
  readonly child: ChildProcess
  /** Every stdout line so far (pino JSON). */
  readonly lines: string[]
  /** What the process wrote to stderr so far. */
  stderr(): string
  /** Resolves with the exit code / signal once the process ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** A token for `user` signed with the relay's secret. */
  token(
    user: string,
    options?: { role?: string; expiresIn?: string | number; secret?: string },
  ): Promise<string>
  /** SIGKILLs the relay (if still running) and waits for it to exit. */
  kill(): Promise<void>
  /** Resolves with the first log line (parsed) that satisfies `match`, now or later. */
  waitForLog(match: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>
}

export interface StartRelayProcessOptions {
  /** Extra CLI flags. */
  readonly args?: readonly string[]
  /** Reuse a data directory (e.g. to restart on the same data). Default: a fresh temp dir. */
  readonly dataDir?: string
  readonly secret?: string
  readonly env?: NodeJS.ProcessEnv
  /** Flags for node itself, before the script (`--cpu-prof`, which NODE_OPTIONS refuses). */
  readonly nodeArgs?: readonly string[]
  /** The relay's entry point (default {@link relayEntry}: the sources, compiled for the test run or through the bin; `relay/dist/main.js` runs the built relay). */
  readonly script?: string
  /**
   * The modules in the `--hooks` folder import Parley's hook API only from {@link hooksApi} (or
   * nothing of Parley's): the relay compiled for the test run can load them (see {@link relayEntry}).
   */
  readonly hooksUseHooksApi?: boolean
  /**
   * Whether the relay warms up its update path after listening, as it does by default outside
   * tests. Default false here (`PARLEY_SKIP_WARM_UP=1`, which `env` or `--skip-warm-up` in `args`
   * override): see {@link TEST_RELAY_ENV}. Tests of the warm-up itself pass true.
   */
  readonly warmUp?: boolean
}

/**
 * The environment a relay process started by a test gets by default: no start-up warm-up.
 *
 * Why: the warm-up costs a relay process about 3 s of CPU (1.8 s of wall time) right after it
 * starts (measured 2026-12-02), and the suite starts a few hundred relay processes on two cores,
 * several at once; their warm-ups slowed the tests beside them and made timing-bound tests flaky.
 * A test that needs it (relay/test/warm-up.test.ts, or one that waits for its log line) asks for
 * it with `warmUp: true`; what it must and must not do is tested there.
 */
export const TEST_RELAY_ENV: Readonly<NodeJS.ProcessEnv> = { PARLEY_SKIP_WARM_UP: "1" }

/**
 * What to run for a relay process with these flags: the relay compiled for this test run
 * (`PARLEY_TEST_RELAY_SCRIPT`, see test/relay-bundle.ts) when there is one, else the bin.
 * A relay given `--hooks` runs from the bin: hook modules import `@parley/relay` and
 * `@parley/shared`, and must get the very modules the relay runs (its sources), not copies;
 * unless `hooksUseHooksApi` says that they import the hook API from {@link hooksApi}, which
 * names the module the relay process runs, compiled or not.
 */
export function relayEntry(
  args: readonly string[] = [],
  options: { hooksUseHooksApi?: boolean } = {},
): string {
  const compiled = process.env.PARLEY_TEST_RELAY_SCRIPT
  return compiled && (options.hooksUseHooksApi || !args.includes("--hooks")) ? compiled : BIN
}

/**
 * The URL a hook module written by a test imports `defineHooks` and the rest of the hook API
 * from, for a relay process started with `hooksUseHooksApi`: the relay's hooks/index of the relay
 * compiled for this test run when there is one (the module that relay runs), else its source
 * (which the bin's tsx loader runs). Not for hooks loaded in the test's own process.
 */
export function hooksApi(): string {
  const compiled = process.env.PARLEY_TEST_RELAY_SCRIPT
  return compiled
    ? pathToFileURL(join(dirname(compiled), "hooks-api.js")).href
    : pathToFileURL(resolve(dirname(fileURLToPath(import.meta.url)), "../../src/hooks-api.ts")).href
}

const started = new Set<RelayProcess>()
const tempDirs = new Set<string>()

/** Signs an HS256 token (what an app's backend would do). */
export async function signToken(
  secret: string,
  user: string,
  options: { role?: string; expiresIn?: string | number } = {},
): Promise<string> {
  return new SignJWT(options.role ? { role: options.role } : {})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(user)
    .setIssuedAt()
    .setExpirationTime(options.expiresIn ?? "1h")
    .sign(new TextEncoder().encode(secret))
}

/** Spawns a relay on a free port and resolves once it logged `"msg":"listening"`. */
export async function startRelayProcess(options: StartRelayProcessOptions = {}): Promise<RelayProcess> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "parley-relay-"))
  if (!options.dataDir) tempDirs.add(dataDir)
  const secret = options.secret ?? `test-secret-${Math.random().toString(36).slice(2)}`
  const args = options.args ?? []
  // A test that verifies tokens another way gives its own key flag instead of the secret.
  const ownKey = args.some((a) => a === "--auth-public-key" || a === "--auth-jwks-url")
  const child = spawn(
    process.execPath,
    [
      ...(options.nodeArgs ?? []),
      options.script ?? relayEntry(args, { hooksUseHooksApi: options.hooksUseHooksApi ?? false }),
      "--port",
      "0",
      "--data-dir",
      dataDir,
      ...(ownKey ? [] : ["--auth-secret", secret]),
      ...args,
    ],
    {
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        ...(options.warmUp ? { PARLEY_SKIP_WARM_UP: "0" } : TEST_RELAY_ENV),
        ...options.env,
      },
    },
  )
  const lines: string[] = []
  const watchers = new Set<(line: Record<string, unknown>) => void>()
  let stderr = ""
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  let buffer = ""
  child.stdout!.on("data", (chunk: Buffer) => {
    buffer += chunk.toString()
    let newline = buffer.indexOf("\n")
    while (newline >= 0) {
      const line = buffer.slice(0, newline)
      buffer = buffer.slice(newline + 1)
      lines.push(line)
      let parsed: Record<string, unknown> | undefined
      try {
        parsed = JSON.parse(line)
      } catch {}
      if (parsed) for (const watcher of [...watchers]) watcher(parsed)
      newline = buffer.indexOf("\n")
    }
  })
  // "close", not "exit": the process may exit before its output is read to the end, and tests read it.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("close", (code, signal) => resolve({ code, signal })),
  )
  const waitForLog = (match: (line: Record<string, unknown>) => boolean) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      for (const line of lines) {
        try {
          const parsed = JSON.parse(line)
          if (match(parsed)) return resolve(parsed)
        } catch {}
      }
      const watcher = (line: Record<string, unknown>) => {
        if (match(line)) {
          watchers.delete(watcher)
          resolve(line)
        }
      }
      watchers.add(watcher)
      exited.then(({ code, signal }) => {
        if (watchers.delete(watcher))
          reject(
            new Error(`relay exited (code ${code}, signal ${signal}) before the log line; stderr: ${stderr}`),
          )
      })
    })
  const listening = await waitForLog((line) => line.msg === "listening")
  const relay: RelayProcess = {
    url: String(listening.url),
    httpUrl: String(listening.httpUrl),
    port: Number(listening.port),
    dataDir,
    secret,
    child,
    lines,
    stderr: () => stderr,
    exited,
    token: (user, opts = {}) => signToken(opts.secret ?? secret, user, opts),
    waitForLog,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
      await exited
      started.delete(relay)
    },
  }
  started.add(relay)
  return relay
}

/** Kills every relay started by this helper that is still running (SIGKILL) and removes temp dirs. Call in afterEach. */
export async function stopRelayProcesses(): Promise<void> {
  for (const relay of started) {
    if (relay.child.exitCode === null && relay.child.signalCode === null) relay.child.kill("SIGKILL")
    await relay.exited
  }
  started.clear()
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true })
  tempDirs.clear()
}

/**
 * The value of the first line of the relay's `/metrics` that starts with
 * `line` (a metric name with its labels, say); 0 when there is none yet.
 */
export async function metricLine(relay: RelayProcess, line: string): Promise<number> {
  const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
  const found = text.split("\n").find((l) => l.startsWith(line))
  return found ? Number(found.split(" ").at(-1)) : 0
}
