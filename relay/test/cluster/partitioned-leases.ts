import { Redis } from "ioredis"
import type pg from "pg"
import { Leases } from "../../src/cluster/leases.js"
import { createLogger } from "../../src/log.js"
import { REDIS_URL } from "../helpers/cluster.js"
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js"

/** One relay's leases whose Redis (both its connection and its renewing thread's) a test can cut off. */
export interface PartitionedLeases {
  readonly leases: Leases
  readonly proxy: TcpProxy
  close(): Promise<void>
}

/** Leases of relay `relayId` under `prefix`, over a cuttable proxy to the tests' Redis (unless `direct`). */
export async function partitionedLeases(options: {
  pool: pg.Pool
  prefix: string
  relayId: string
  ttlMs: number
  maxStallMs?: number
  /** Straight to Redis, not through the proxy (which stops while the test blocks its event loop). */
  direct?: boolean
}): Promise<PartitionedLeases> {
  const target = new URL(REDIS_URL)
  const proxy = await startTcpProxy(target.hostname, Number(target.port || 6379))
  const url = options.direct ? REDIS_URL : `redis://127.0.0.1:${proxy.port}`
  const redis = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 0 })
  redis.on("error", () => {})
  await new Promise((r) => redis.once("ready", r))
  const leases = new Leases({
    redis,
    redisUrl: url,
    pool: options.pool,
    log: createLogger("fatal"),
    prefix: options.prefix,
    relayId: options.relayId,
    ttlMs: options.ttlMs,
    ...(options.maxStallMs !== undefined ? { maxStallMs: options.maxStallMs } : {}),
    lost: () => {},
  })
  await leases.ready()
  return {
    leases,
    proxy,
    async close() {
      await leases.close()
      redis.disconnect()
      await proxy.close()
    },
  }
}
