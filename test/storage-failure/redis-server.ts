import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { Redis } from "ioredis"
import { freePort } from "../../relay/test/helpers/cluster.js"

/** A Redis server of one test's own, for failures that would reach every other test on a shared one. */
export interface PrivateRedis {
  readonly url: string
  /** A connection to it (for `CLIENT PAUSE`, say), closed by {@link stop}. */
  readonly admin: Redis
  stop(): Promise<void>
}

/** Why `redis-server` cannot be started here, or undefined when it can. */
export function redisServerMissing(): string | undefined {
  try {
    execFileSync("redis-server", ["--version"], { stdio: "ignore" })
    return undefined
  } catch (error) {
    return error instanceof Error ? error.message : String(error)
  }
}

/** Starts `redis-server` on a free port, without persistence; resolves once it answers. */
export async function startPrivateRedis(): Promise<PrivateRedis> {
  const port = await freePort()
  const child: ChildProcess = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: ["ignore", "ignore", "pipe"] },
  )
  let stderr = ""
  child.stderr!.on("data", (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const url = `redis://127.0.0.1:${port}`
  const admin = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 100 })
  admin.on("error", () => {})
  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited: ${stderr}`)
    try {
      if (admin.status === "wait") await admin.connect()
      await admin.ping()
      break
    } catch (error) {
      if (Date.now() > deadline) {
        child.kill("SIGKILL")
        throw new Error(`redis-server did not answer: ${String(error)} ${stderr}`)
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  return {
    url,
    admin,
    stop: async () => {
      admin.disconnect()
      child.kill("SIGKILL")
      await exited
    },
  }
}
