import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Redis } from "ioredis"
import type { RelayOptions, RunningRelay } from "../../src/relay.js"
import { type ScratchSchema, scratchSchema } from "./postgres.js"
import { type RelayProcess, startRelayProcess } from "./relay-process.js"

/** The Redis tests use: `REDIS_URL`, else the local default. */
export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379"

/** Why Redis at `url` cannot be reached, or undefined when it can. */
export async function redisUnreachable(url: string = REDIS_URL): Promise<string | undefined> {
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 0 })
  redis.on("error", () => {})
  try {
    await redis.connect()
    await redis.ping()
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  } finally {
    redis.disconnect()
  }
}

/** Deletes the Redis keys under `prefix` (a test's relays' keys: each test names its own prefix). */
export async function deleteRedisKeys(prefix: string, url: string = REDIS_URL): Promise<void> {
  const redis = new Redis(url)
  try {
    const keys = await redis.keys(`${prefix}*`)
    if (keys.length > 0) await redis.del(...keys)
  } finally {
    redis.disconnect()
  }
}

/**
 * A clustered relay in this process (quiet, dev tokens, no warm-up) over the PostgreSQL database at
 * `databaseUrl` and Redis keys under `keyPrefix`, with `options` on top.
 */
export async function startClusteredRelay(
  databaseUrl: string,
  keyPrefix: string,
  options: RelayOptions = {},
): Promise<RunningRelay> {
  // Imported here, not at the top: most files that import this helper start relay processes only,
  // and loading the relay's sources into the test's process cost each of them seconds of import.
  const { startRelay } = await import("../../src/relay.js")
  return startRelay({
    port: 0,
    warmUp: false,
    dev: true,
    log: "silent",
    storage: "postgres",
    databaseUrl,
    cluster: { redisUrl: REDIS_URL, keyPrefix },
    ...options,
  })
}

/**
 * Two clustered relays in this process over one scratch schema and one key
 * prefix of their own, each started with `options(i)`; every step of undoing
 * them goes to `cleanup` (run in reverse). The first starts alone: it
 * creates the tables.
 */
export async function twoClusteredRelays(
  name: string,
  cleanup: (() => unknown)[],
  options: (i: number) => RelayOptions = () => ({}),
): Promise<{ relays: [RunningRelay, RunningRelay]; schema: ScratchSchema }> {
  const schema = await scratchSchema()
  cleanup.push(() => schema.drop())
  const prefix = `parley-${name}-test:${process.pid}:${Date.now().toString(36)}:`
  cleanup.push(() => deleteRedisKeys(prefix))
  const start = async (i: number) => {
    const relay = await startClusteredRelay(schema.url, prefix, options(i))
    cleanup.push(() => relay.close())
    return relay
  }
  const first = await start(0)
  return { relays: [first, await start(1)], schema }
}

/** The path of HAProxy (Debian's package), or undefined when it is not installed. */
export function haproxyPath(): string | undefined {
  for (const path of ["/usr/sbin/haproxy", "/usr/bin/haproxy"]) {
    try {
      execFileSync(path, ["-v"], { stdio: "ignore" })
      return path
    } catch {}
  }
  return undefined
}

/** A port nobody listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0))
    })
  })
}

/** Several relay processes over one PostgreSQL schema and one Redis key prefix of this test's own. */
export interface TestCluster {
  readonly relays: (RelayProcess | undefined)[]
  readonly ports: readonly number[]
  readonly secret: string
  readonly schema: ScratchSchema
  readonly prefix: string
  /** Relay `i`, which must be running. */
  relay(i: number): RelayProcess
  /** Starts relay `i` (again) on its port. */
  start(i: number): Promise<RelayProcess>
  /** SIGKILLs relay `i`. */
  kill(i: number): Promise<void>
  /** A token for `user`, valid on every relay. */
  token(user: string): Promise<string>
  /** Kills every relay, drops the schema and the Redis keys. */
  stop(): Promise<void>
}

let count = 0

/** Starts `size` relays with `--redis-url` on PostgreSQL; `args` are extra flags of each. */
export async function startCluster(
  size: number,
  options: {
    args?: readonly string[]
    env?: NodeJS.ProcessEnv
    /** Redis for the relays to use (a proxy, say), or for relay `i`; default {@link REDIS_URL}. */
    redisUrl?: string | ((i: number) => string)
    /** The relays' connection string made from the scratch schema's (through a proxy, say), or relay `i`'s. */
    databaseUrl?: (url: string, i: number) => string
    /** As {@link startRelayProcess}'s: the `--hooks` modules import the hook API from `hooksApi()`. */
    hooksUseHooksApi?: boolean
  } = {},
): Promise<TestCluster> {
  const schema = await scratchSchema()
  const prefix = `parley-test:${process.pid}:${Date.now().toString(36)}:${count++}:`
  const secret = `cluster-secret-${Math.random().toString(36).slice(2)}`
  const ports = await Promise.all(Array.from({ length: size }, () => freePort()))
  const relays: (RelayProcess | undefined)[] = Array.from({ length: size })
  const argsOf = (i: number) => [
    "--port",
    String(ports[i]),
    "--storage",
    "postgres",
    "--database-url",
    options.databaseUrl ? options.databaseUrl(schema.url, i) : schema.url,
    "--redis-url",
    typeof options.redisUrl === "function" ? options.redisUrl(i) : (options.redisUrl ?? REDIS_URL),
    "--redis-prefix",
    prefix,
    // As deployed behind the load balancer (deploy/compose.yaml).
    "--trust-proxy",
    ...(options.args ?? []),
  ]
  const cluster: TestCluster = {
    relays,
    ports,
    secret,
    schema,
    prefix,
    relay: (i) => {
      const relay = relays[i]
      if (!relay) throw new Error(`relay ${i} is not running`)
      return relay
    },
    start: async (i) => {
      const relay = await startRelayProcess({
        args: argsOf(i),
        secret,
        ...(options.env ? { env: options.env } : {}),
        ...(options.hooksUseHooksApi ? { hooksUseHooksApi: true } : {}),
      })
      relays[i] = relay
      return relay
    },
    kill: async (i) => {
      await relays[i]?.kill()
      relays[i] = undefined
    },
    token: (user) => {
      const relay = relays.find((r) => r !== undefined)
      if (!relay) throw new Error("no relay is running")
      return relay.token(user)
    },
    stop: async () => {
      for (let i = 0; i < size; i++) await cluster.kill(i)
      // A killed relay's sessions end a moment after it: dropping may deadlock with one that still holds locks.
      for (let attempt = 0; ; attempt++) {
        try {
          await schema.drop()
          break
        } catch (error) {
          if (attempt >= 5) throw error
          await new Promise((r) => setTimeout(r, 200))
        }
      }
      await deleteRedisKeys(prefix)
    },
  }
  // The first alone, which creates the tables (the others would wait on its lock anyway); then the
  // others at once: each spends its first second or two loading, which need not wait for another's.
  await cluster.start(0)
  await Promise.all(Array.from({ length: size - 1 }, (_, i) => cluster.start(i + 1)))
  return cluster
}

/** HAProxy in front of the cluster's relays (WebSocket upgrade passed through, /readyz checked). */
export interface LoadBalancer {
  readonly url: string
  readonly httpUrl: string
  stop(): Promise<void>
}

/**
 * How the load balancer picks a relay: `user` (the shipped configuration) by a
 * consistent hash of the token's subject, so that one user's sockets meet on
 * one relay and per-user limits count all of them; `roundrobin` spreads every
 * connection (tests that want one user's sockets on several relays).
 */
export type Balance = "user" | "roundrobin"

/** Starts HAProxy (`haproxy`) balancing over `ports`, health-checking `/readyz` every 200 ms (down after two failures). */
export async function startLoadBalancer(
  haproxy: string,
  ports: readonly number[],
  balance: Balance = "user",
): Promise<LoadBalancer> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "parley-haproxy-"))
  const config = join(dir, "haproxy.cfg")
  writeFileSync(config, haproxyConfig(port, ports, balance))
  const child: ChildProcess = spawn(haproxy, ["-db", "-f", config], { stdio: ["ignore", "ignore", "pipe"] })
  let stderr = ""
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`haproxy exited: ${stderr}`)
    const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then(
      (r) => r.ok,
      () => false,
    )
    if (ok) break
    if (Date.now() > deadline) throw new Error(`haproxy did not answer: ${stderr}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGKILL")
      await exited
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** The configuration the compose file's load balancer uses too, with this test's ports. */
export function haproxyConfig(
  port: number,
  relayPorts: readonly number[],
  balance: Balance = "user",
): string {
  return [
    "global",
    "  maxconn 4000",
    "defaults",
    "  mode http",
    "  timeout connect 2s",
    "  timeout client 60s",
    "  timeout server 60s",
    // A WebSocket lives on after the upgrade: the tunnel timeout applies to it.
    "  timeout tunnel 1h",
    "  option redispatch",
    "  retries 3",
    "  option forwardfor",
    "frontend parley",
    `  bind 127.0.0.1:${port}`,
    // Every relay not ready at once is a dependency they share failing (Redis, PostgreSQL): the live
    // ones still serve reads (writes refused retryably, kept by the clients), so they take the traffic.
    "  use_backend live if { nbsrv(relays) lt 1 }",
    "  default_backend relays",
    ...backend(
      "relays",
      "/readyz",
      "  default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions",
    ),
    ...backend("live", "/healthz", "  default-server inter 200ms fall 2 rise 1"),
    "",
  ].join("\n")

  function backend(name: string, check: string, servers: string): string[] {
    return [
      `backend ${name}`,
      ...(balance === "user"
        ? // The token's subject (query for sockets, bearer for HTTP), read without verifying it (the relay
          // verifies): a forged one only routes its own refused request. Without a token, round-robin.
          [
            "  http-request set-var(txn.token) url_param(token)",
            "  http-request set-var(txn.token) req.hdr(authorization),word(2,' ') if !{ var(txn.token) -m found }",
            "  balance hash var(txn.token),jwt_payload_query('$.sub')",
            "  hash-type consistent",
          ]
        : ["  balance roundrobin"]),
      `  option httpchk GET ${check}`,
      "  http-check expect status 200",
      // A relay answers late when the machine is loaded: one slow answer must not mark it down (and
      // close every session on it); a dead relay refuses at once and is down after two checks.
      "  timeout check 1s",
      servers,
      ...relayPorts.map((p, i) => `  server relay${i} 127.0.0.1:${p} check`),
    ]
  }
}
