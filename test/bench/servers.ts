/**
 * Starts each server under test as its own process on loopback, and reads its
 * CPU and memory from /proc. A fresh process per scenario, so that peak memory
 * (VmHWM) belongs to that scenario alone.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { appendFileSync, existsSync, mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import WebSocket from "ws"
import { type ProcessReading, readProcess } from "./proc.js"

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..")

/**
 * Which server implementation. `y-websocket-leveldb` is the y-websocket 2 server with its own
 * persistence switched on (`YPERSISTENCE`: y-leveldb stores every update as it arrives, without
 * fsync): what a persisting reference server costs, next to the in-memory one. It is not one of
 * "the peers" the goals compare with.
 */
export type ServerKind = "y-websocket" | "y-websocket-leveldb" | "hocuspocus" | "parley"

/** How the Parley relay is configured (ignored for the other servers). */
export interface ParleyVariant {
  /** Run the benchmark hook module (a handler on every event). */
  readonly hooks: boolean
  /** Check every update with the authorization policy. */
  readonly authorization: boolean
  /** Further command-line flags, e.g. a higher rate limit for a throughput test. */
  readonly args?: readonly string[]
  /** Says what `args` change, in the label (e.g. "send queue 64 MiB"). */
  readonly note?: string
}

/** The deployed configuration: durable storage, authorization and hooks on. */
export const DEPLOYED: ParleyVariant = { hooks: true, authorization: true }

/** A running server. */
export interface RunningServer {
  readonly kind: ServerKind
  /** Label in tables, e.g. "parley" or "parley (no hooks)". */
  readonly label: string
  readonly pid: number
  /** Base WebSocket URL, e.g. ws://127.0.0.1:1234. */
  readonly wsUrl: string
  /** A token for `user`, for servers that authenticate (Parley); undefined otherwise. */
  token(user: string): Promise<string | undefined>
  read(): ProcessReading
  /**
   * Runs a full garbage collection in the server (through its inspector, the
   * same way for every server) and reads it then, once its RSS stopped falling:
   * memory figures after it hold what the server keeps, not what it has not
   * collected or released yet.
   */
  collected(): Promise<CollectedReading>
  stop(): Promise<void>
}

/** A reading right after a full garbage collection. */
export interface CollectedReading extends ProcessReading {
  /** JS heap in use (V8's used size), bytes. */
  readonly heapUsed: number
}

/**
 * Node's inspector on a port of its own choosing, loopback only: the harness
 * asks it for a garbage collection before reading memory.
 */
const INSPECT = "--inspect=127.0.0.1:0"

/** The inspector's WebSocket URL, from the "Debugger listening on ws://..." line Node prints on stderr. */
function inspectorUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolveUrl, reject) => {
    let text = ""
    const onData = (chunk: Buffer) => {
      text = (text + chunk.toString()).slice(-4000)
      const match = /Debugger listening on (ws:\/\/\S+)/.exec(text)
      if (match) {
        child.stderr?.off("data", onData)
        resolveUrl(match[1]!)
      }
    }
    child.stderr?.on("data", onData)
    child.once("exit", () => reject(new Error("the server exited before its inspector listened")))
  })
}

/** {@link inspectorUrl}, never an unhandled rejection when nobody asks (the server failed to start). */
function watchInspector(child: ChildProcess): Promise<string> {
  const url = inspectorUrl(child)
  url.catch(() => {})
  return url
}

/** One command to a Node inspector, over a connection of its own. */
async function inspect(url: string, methods: readonly string[]): Promise<unknown[]> {
  const ws = new WebSocket(url)
  await new Promise((resolveOpen, reject) => {
    ws.once("open", resolveOpen)
    ws.once("error", reject)
  })
  try {
    const results: unknown[] = []
    for (const [id, method] of methods.entries()) {
      results.push(
        await new Promise((resolveResult, reject) => {
          const onMessage = (data: Buffer) => {
            const message = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: unknown }
            if (message.id !== id) return
            ws.off("message", onMessage)
            if (message.error) reject(new Error(`${method}: ${JSON.stringify(message.error)}`))
            else resolveResult(message.result)
          }
          ws.on("message", onMessage)
          ws.send(JSON.stringify({ id, method }))
        }),
      )
    }
    return results
  } finally {
    ws.close()
  }
}

/** What the relay's command line accepts, learned from its --help (flags may be added while we run). */
export interface RelayFlags {
  readonly hooks: boolean
  readonly noAuthorization: string | undefined
  readonly storage: string | undefined
}

const running = new Set<ChildProcess>()
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL")
})

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer()
    probe.once("error", reject)
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address()
      const port = typeof address === "object" && address ? address.port : 0
      probe.close(() => resolvePort(port))
    })
  })
}

/** Waits for a line on stdout from which `parse` reads the port. */
function waitForPort(child: ChildProcess, parse: (line: string) => number | undefined): Promise<number> {
  return new Promise((resolvePort, reject) => {
    let buffer = ""
    let stderr = ""
    const timer = setTimeout(() => reject(new Error(`server did not start in 30 s: ${stderr}`)), 30_000)
    child.stderr?.on("data", (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000)
    })
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString()
      let newline = buffer.indexOf("\n")
      while (newline >= 0) {
        const line = buffer.slice(0, newline)
        buffer = buffer.slice(newline + 1)
        const port = parse(line)
        if (port !== undefined) {
          clearTimeout(timer)
          resolvePort(port)
          return
        }
        newline = buffer.indexOf("\n")
      }
    }
    child.stdout?.on("data", onData)
    child.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`server exited with ${code} before listening: ${stderr}`))
    })
  })
}

function jsonPort(line: string): number | undefined {
  try {
    const entry = JSON.parse(line) as { msg?: string; port?: number }
    return entry.msg === "listening" && typeof entry.port === "number" ? entry.port : undefined
  } catch {
    return undefined
  }
}

function handle(
  kind: ServerKind,
  label: string,
  child: ChildProcess,
  port: number,
  token: (user: string) => Promise<string | undefined>,
  inspector: Promise<string>,
  cleanup: () => void = () => {},
): RunningServer {
  // Keep draining output so a chatty server never blocks on a full pipe.
  child.stdout?.resume()
  child.stderr?.resume()
  return {
    kind,
    label,
    pid: child.pid!,
    wsUrl: `ws://127.0.0.1:${port}`,
    token,
    read: () => readProcess(child.pid!),
    async collected() {
      const url = await inspector
      const once = async (): Promise<CollectedReading> => {
        // Twice: a first full collection can leave what finalizers freed for the next one.
        const [, , usage] = await inspect(url, [
          "HeapProfiler.collectGarbage",
          "HeapProfiler.collectGarbage",
          "Runtime.getHeapUsage",
        ])
        return { ...readProcess(child.pid!), heapUsed: (usage as { usedSize: number }).usedSize }
      }
      // V8 gives freed pages back to the system over seconds after a collection, not at once: RSS
      // is read once it stops falling (within 256 KB over 2 s, or after 20 s), so that a reading
      // taken just after a busy phase does not count pages about to be released.
      let reading = await once()
      for (let i = 0; i < 10; i++) {
        await new Promise((r) => setTimeout(r, 2000))
        const next = await once()
        const settled = reading.rss - next.rss < 256 * 1024
        reading = next
        if (settled) break
      }
      return reading
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r))
        child.kill("SIGTERM")
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000)
        await exited
        clearTimeout(timer)
      }
      running.delete(child)
      cleanup()
    },
  }
}

async function startYWebsocket(persisting: boolean): Promise<RunningServer> {
  const port = await freePort()
  // The peers are installed on demand in test/bench/node_modules (scripts/bench-deps.mjs).
  const bin = join(ROOT, "test/bench/node_modules/y-websocket-server-v2/bin/server.cjs")
  const dataDir = persisting ? mkdtempSync(join(tmpdir(), "y-leveldb-bench-")) : undefined
  const child = spawn(process.execPath, [INSPECT, bin], {
    env: {
      ...process.env,
      HOST: "127.0.0.1",
      PORT: String(port),
      ...(dataDir ? { YPERSISTENCE: dataDir } : {}),
    },
    stdio: ["ignore", "pipe", "pipe"],
  })
  running.add(child)
  const inspector = watchInspector(child)
  await waitForPort(child, (line) => (line.includes("running at") ? port : undefined))
  const kind = persisting ? "y-websocket-leveldb" : "y-websocket"
  return handle(
    kind,
    kind,
    child,
    port,
    async () => undefined,
    inspector,
    () => {
      if (dataDir) rmSync(dataDir, { recursive: true, force: true })
    },
  )
}

async function startHocuspocus(): Promise<RunningServer> {
  const child = spawn(process.execPath, [INSPECT, join(ROOT, "test/bench/servers/hocuspocus.mjs")], {
    env: { ...process.env, PORT: "0" },
    stdio: ["ignore", "pipe", "pipe"],
  })
  running.add(child)
  const inspector = watchInspector(child)
  const port = await waitForPort(child, jsonPort)
  return handle("hocuspocus", "hocuspocus", child, port, async () => undefined, inspector)
}

/** The relay's flags, read from its --help output once. */
let relayFlags: Promise<RelayFlags> | undefined
export function detectRelayFlags(): Promise<RelayFlags> {
  relayFlags ??= new Promise((resolveFlags) => {
    const child = spawn(process.execPath, [join(ROOT, "relay/bin/parley-relay.js"), "--help"], {
      stdio: ["ignore", "pipe", "pipe"],
    })
    let text = ""
    child.stdout.on("data", (c: Buffer) => {
      text += c.toString()
    })
    child.stderr.on("data", (c: Buffer) => {
      text += c.toString()
    })
    child.once("exit", () => {
      const noAuth = /--(no-authorization|no-authz|authorization[= ]off|policy[= ]membership)\b/.exec(text)
      const storage = /--storage\b/.test(text) ? "--storage" : undefined
      resolveFlags({ hooks: /--hooks\b/.test(text), noAuthorization: noAuth?.[0], storage })
    })
  })
  return relayFlags
}

/** Polls the relay's `/readyz` until it answers 200 (at most 30 s). */
async function untilReady(port: number): Promise<void> {
  const deadline = performance.now() + 30_000
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${port}/readyz`).then(
      (response) => response.ok,
      () => false,
    )
    if (ok) return
    if (performance.now() > deadline) throw new Error("the relay did not become ready within 30 s")
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/**
 * True when `PARLEY_BENCH_RELAY=dist`: the relay is started from its compiled
 * JavaScript (`relay/dist`, built by `npx tsc -b`), as an installed relay runs,
 * instead of its TypeScript sources through tsx (whose loader thread, source
 * maps and keep-names helper on every closure the installed relay does not pay).
 */
export function compiledRelay(): boolean {
  const choice = process.env.PARLEY_BENCH_RELAY
  if (choice === undefined || choice === "" || choice === "source") return false
  if (choice !== "dist") throw new Error(`PARLEY_BENCH_RELAY: "dist" or "source", not "${choice}"`)
  if (!existsSync(join(ROOT, "relay/dist/main.js")))
    throw new Error("PARLEY_BENCH_RELAY=dist: run `npx tsc -b` first")
  return true
}

async function startParley(variant: ParleyVariant): Promise<RunningServer> {
  const flags = await detectRelayFlags()
  const dataDir = mkdtempSync(join(tmpdir(), "parley-bench-"))
  // Without a relay flag to switch authorization off, the same relay is started
  // through a launcher that passes an allow-everything policy.
  const launcher =
    !variant.authorization && !flags.noAuthorization
      ? [
          "--conditions=parley-source",
          "--import",
          "tsx",
          join(ROOT, "test/bench/servers/parley-without-authorization.ts"),
        ]
      : [join(ROOT, compiledRelay() ? "relay/dist/main.js" : "relay/bin/parley-relay.js")]
  const profile = process.env.PARLEY_BENCH_PROFILE_DIR
  // Further Node flags for the relay process only (e.g. "--heapsnapshot-signal=SIGUSR2"), for profiling.
  const nodeArgs = process.env.PARLEY_BENCH_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? []
  const args = [
    ...(profile ? ["--cpu-prof", "--cpu-prof-dir", profile] : []),
    ...nodeArgs,
    INSPECT,
    ...launcher,
    "--port",
    "0",
    "--dev",
    "--data-dir",
    dataDir,
  ]
  if (flags.storage) args.push(flags.storage, "sqlite")
  if (variant.hooks && flags.hooks) args.push("--hooks", join(ROOT, "test/bench/hooks"))
  if (!variant.authorization && flags.noAuthorization) args.push(...flags.noAuthorization.split(/[= ]/))
  if (variant.args) args.push(...variant.args)
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  })
  running.add(child)
  // PARLEY_BENCH_RELAY_OUTPUT=FILE: everything the relay prints (V8's --trace-gc lines, say), appended to FILE.
  const output = process.env.PARLEY_BENCH_RELAY_OUTPUT
  if (output) child.stdout?.on("data", (chunk: Buffer) => appendFileSync(output, chunk))
  const inspector = watchInspector(child)
  const port = await waitForPort(child, jsonPort)
  // As a load balancer would: no traffic (and no "empty server" reading) before the relay says it
  // is ready, i.e. before its start-up warm-up of the update path is done.
  await untilReady(port)
  const tokens = new Map<string, Promise<string>>()
  const token = (user: string) => {
    let pending = tokens.get(user)
    if (!pending) {
      pending = fetch(`http://127.0.0.1:${port}/dev/token?user=${encodeURIComponent(user)}`).then(
        async (response) => {
          const text = await response.text()
          if (!response.ok) throw new Error(`dev token for ${user}: ${response.status} ${text}`)
          try {
            const body = JSON.parse(text) as { token?: string }
            return body.token ?? text
          } catch {
            return text.trim()
          }
        },
      )
      tokens.set(user, pending)
    }
    return pending
  }
  const hooks = variant.hooks && flags.hooks
  const authorization = variant.authorization
  const parts = [!hooks && "no hooks", !authorization && "no authorization", variant.note].filter(Boolean)
  const label = parts.length ? `parley (${parts.join(", ")})` : "parley"
  return handle("parley", label, child, port, token, inspector, () =>
    rmSync(dataDir, { recursive: true, force: true }),
  )
}

/** Starts a fresh server process of `kind`. */
export function startServer(kind: ServerKind, variant: ParleyVariant = DEPLOYED): Promise<RunningServer> {
  if (kind === "y-websocket") return startYWebsocket(false)
  if (kind === "y-websocket-leveldb") return startYWebsocket(true)
  if (kind === "hocuspocus") return startHocuspocus()
  return startParley(variant)
}
