import { spawn } from "node:child_process"
import { ErrorCode } from "@parley/shared"
import { Redis } from "ioredis"
import { afterEach, describe, expect, it } from "vitest"
import type { RelayOptions, RunningRelay } from "../../src/relay.js"
import { ExitCode, StartupError } from "../../src/startup-error.js"
import {
  deleteRedisKeys,
  REDIS_URL,
  redisUnreachable,
  startCluster,
  startClusteredRelay,
  type TestCluster,
} from "../helpers/cluster.js"
import { postgresUnreachable, type ScratchSchema, scratchSchema } from "../helpers/postgres.js"
import { relayEntry } from "../helpers/relay-process.js"
import { until } from "../helpers/until.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

/**
 * How often the relays of the tests that watch a running relay's comparison compare (the default is
 * 5 s): what they check is the same at every refresh; at the default each waited three refreshes.
 */
const QUICK_REFRESH = { settingsRefreshMs: 250 }

const SECRET = "the-cluster-secret-of-32-bytes-at-least"
const OTHER_SECRET = "another-secret-of-32-bytes-at-least-too"

/** A relay's options, its cluster settings without Redis (the test's). */
type StartOptions = Omit<RelayOptions, "cluster"> & {
  cluster?: Partial<NonNullable<RelayOptions["cluster"]>>
}

/** A scratch schema and a key prefix of this test's own, and a starter of clustered relays on them. */
async function scratchCluster(): Promise<{
  schema: ScratchSchema
  prefix: string
  start: (options?: StartOptions) => Promise<RunningRelay>
}> {
  const schema = await scratchSchema()
  cleanup.push(() => schema.drop())
  const prefix = `parley-settings-test:${process.pid}:${Date.now().toString(36)}:${Math.random().toString(36).slice(2)}:`
  cleanup.push(() => deleteRedisKeys(prefix))
  return {
    schema,
    prefix,
    start: async (options = {}) => {
      const relay = await startClusteredRelay(schema.url, prefix, {
        auth: { kind: "secret", secret: SECRET },
        ...options,
        cluster: { redisUrl: REDIS_URL, keyPrefix: prefix, ...options.cluster },
      })
      cleanup.push(() => relay.close())
      return relay
    },
  }
}

/** `/readyz`'s status and body. */
async function readyz(relay: RunningRelay): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${relay.httpUrl}/readyz`)
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

/** The value of `line` (`name{labels}`) in the relay's metrics, 0 when absent. */
async function metric(relay: RunningRelay, line: string): Promise<number> {
  const text = await relay.metrics.registry.metrics()
  const found = text.split("\n").find((l) => l.startsWith(`${line} `))
  return found ? Number(found.slice(line.length + 1)) : 0
}

/** The start's refusal, or a failure of the test when the relay started. */
async function refusal(starting: Promise<RunningRelay>): Promise<StartupError> {
  const outcome = await starting.then(
    (relay) => {
      cleanup.push(() => relay.close())
      return relay
    },
    (error: unknown) => error,
  )
  if (!(outcome instanceof StartupError))
    throw new Error(`the relay started, or failed otherwise: ${outcome}`)
  return outcome
}

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("settings every relay of a cluster shares", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("settings every relay of a cluster shares", () => {
    it("refuses a relay whose auth secret differs, naming auth but not the secret, and leaves the cluster ready", async () => {
      const { start } = await scratchCluster()
      const first = await start()
      const error = await refusal(start({ auth: { kind: "secret", secret: OTHER_SECRET } }))
      expect(error.exitCode).toBe(ExitCode.CONFIG)
      expect(error.code).toBe(ErrorCode.INVALID_ARGUMENT)
      expect(error.rule).toBe("cluster-settings")
      expect(error.message).toContain("other settings: auth (the token key")
      // Only the setting that differs is named, and no value of it.
      expect(error.message).not.toContain("lease-ms")
      expect(error.message).not.toContain(SECRET)
      expect(error.message).not.toContain(OTHER_SECRET)
      expect((await readyz(first)).status).toBe(200)
    })

    it("refuses a relay whose lease length differs, naming lease-ms", async () => {
      const { start } = await scratchCluster()
      await start()
      const error = await refusal(start({ cluster: { leaseMs: 3000 } }))
      expect(error.rule).toBe("cluster-settings")
      expect(error.message).toContain("other settings: lease-ms (--lease-ms)")
      expect(error.message).not.toContain("auth")
    })

    it("refuses a relay whose issuer and hook targets differ, naming both", async () => {
      const { start } = await scratchCluster()
      await start()
      const error = await refusal(start({ authIssuer: "https://other.example", inbox: false }))
      expect(error.message).toContain("auth-issuer (--auth-issuer)")
      expect(error.message).toContain("delivery-targets (")
    })

    it("lets relays with the same settings join, every one ready and none counting a difference", async () => {
      const { start } = await scratchCluster()
      const relays = [await start(), await start(), await start()]
      for (const relay of relays) {
        expect((await readyz(relay)).status).toBe(200)
        expect(await metric(relay, 'parley_cluster_settings_mismatches_total{setting="auth"}')).toBe(0)
      }
    })

    it("lets a relay with a new secret join with --cluster-config-change; once the others run it too, the flag is no longer needed", async () => {
      const { start } = await scratchCluster()
      const old = await start({ cluster: QUICK_REFRESH })
      // The rollout's first relay: declared, so it starts, ready, and the old one counts no mismatch.
      const changed = await start({
        auth: { kind: "secret", secret: OTHER_SECRET },
        cluster: { configChange: true },
      })
      expect((await readyz(changed)).status).toBe(200)
      // The old relay sees the cluster mixed (its gauge), without calling it a misconfiguration.
      await until(
        () => metric(old, 'parley_cluster_settings_differ{setting="auth"}'),
        (n) => n === 1,
        12_000,
      )
      expect(await metric(old, 'parley_cluster_settings_mismatches_total{setting="auth"}')).toBe(0)
      expect((await readyz(old)).status).toBe(200)
      // The old relay restarted with the new secret, the rollout done: it joins without the flag.
      await old.close()
      const renewed = await start({ auth: { kind: "secret", secret: OTHER_SECRET } })
      expect((await readyz(renewed)).status).toBe(200)
      // And a relay left with the old secret is refused again.
      const error = await refusal(start())
      expect(error.message).toContain("other settings: auth (")
    }, 30_000)

    it("forgets a stopped relay's settings: a relay with other settings may start once the cluster's relays are gone", async () => {
      const { start } = await scratchCluster()
      const first = await start()
      await first.close()
      const next = await start({ cluster: { leaseMs: 3000 } })
      expect((await readyz(next)).status).toBe(200)
    })

    it("makes the newcomer not ready, and counts the difference, when one joins with other settings while it runs", async () => {
      const { start, prefix } = await scratchCluster()
      const relay = await start({ cluster: QUICK_REFRESH })
      // Two relays that started at once each found nobody: here, another relay's record with other
      // settings, one that joined earlier than this relay (this relay is the newcomer) ...
      const redis = new Redis(REDIS_URL)
      cleanup.push(() => redis.disconnect())
      const key = `${prefix}relay-settings`
      const own = JSON.parse(Object.values(await redis.hgetall(key))[0]!) as {
        settings: Record<string, string>
      }
      const record = (joinedAt: number) =>
        JSON.stringify({
          joinedAt,
          expiresAt: Date.now() + 60_000,
          change: false,
          settings: { ...own.settings, auth: "something-else" },
        })
      await redis.hset(key, "an-earlier-relay", record(1))
      await until(
        async () => (await readyz(relay)).status,
        (status) => status === 503,
        12_000,
      )
      const { body } = await readyz(relay)
      expect(body.failing).toEqual([
        expect.objectContaining({ dependency: "cluster-settings", error: expect.stringContaining("auth") }),
      ])
      expect(await metric(relay, 'parley_cluster_settings_mismatches_total{setting="auth"}')).toBe(1)
      // ... and once that relay is gone (its record expired or removed), this one is ready again.
      await redis.hdel(key, "an-earlier-relay")
      await until(
        async () => (await readyz(relay)).status,
        (status) => status === 200,
        12_000,
      )
      // A later relay with other settings is the one not ready: this relay stays ready, and counts it.
      await redis.hset(key, "a-later-relay", record(Date.now() + 1000))
      await until(
        () => metric(relay, 'parley_cluster_settings_mismatches_total{setting="auth"}'),
        (n) => n === 2,
        12_000,
      )
      expect((await readyz(relay)).status).toBe(200)
    }, 40_000)

    it("exits 2 from the command line, naming auth, when a relay's secret differs from the cluster's", async () => {
      const cluster: TestCluster = await startCluster(1)
      cleanup.push(() => cluster.stop())
      const args = [
        "--port",
        "0",
        "--storage",
        "postgres",
        "--database-url",
        cluster.schema.url,
        "--redis-url",
        REDIS_URL,
        "--redis-prefix",
        cluster.prefix,
        "--auth-secret",
        `${cluster.secret}-but-not-quite`,
      ]
      const { code, stderr } = await new Promise<{ code: number | null; stderr: string }>((done) => {
        const child = spawn(process.execPath, [relayEntry(args), "--log-level", "warn", ...args], {
          stdio: ["ignore", "ignore", "pipe"],
        })
        let text = ""
        child.stderr.on("data", (d: Buffer) => {
          text += d
        })
        child.on("close", (exit) => done({ code: exit, stderr: text }))
      })
      expect(code).toBe(ExitCode.CONFIG)
      expect(stderr).toContain("the cluster's relays have other settings: auth (")
      expect(stderr).not.toContain(cluster.secret)
    }, 30_000)
  })
}
