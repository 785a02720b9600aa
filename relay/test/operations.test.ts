import { spawn } from "node:child_process"
import { mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs"
import { connect } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, newConversationId, sendMessage, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it, onTestFinished } from "vitest"
import { ConfigError, parseConfig } from "../src/config.js"
import { type RelayOptions, startRelay } from "../src/relay.js"
import { TestClient } from "./helpers/clients.js"
import { relayEntry, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"
import { until } from "./helpers/until.js"

const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
})

/** Runs the CLI to completion and returns its exit code and output. */
function runCli(args: string[], env: NodeJS.ProcessEnv = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
    const child = spawn(process.execPath, [relayEntry(args), ...args], {
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
    child.on("close", (code) => done({ code, stdout, stderr }))
  })
}

describe("operations", () => {
  it("serves /healthz, Prometheus /metrics, the static app, and dev tokens that open a conversation", async () => {
    const site = mkdtempSync(join(tmpdir(), "parley-static-"))
    writeFileSync(join(site, "index.html"), "<title>demo</title>")
    onTestFinished(() => rmSync(site, { recursive: true, force: true }))
    const relay = await startRelayProcess({ args: ["--dev", "--static", site] })
    const page = await fetch(`${relay.httpUrl}/`)
    expect(page.headers.get("content-type")).toContain("text/html")
    expect(await page.text()).toBe("<title>demo</title>")
    // Never a file outside the app: unknown paths fall back to the app's index.html.
    expect(await (await fetch(`${relay.httpUrl}/../../etc/passwd`)).text()).toBe("<title>demo</title>")
    const health = await (await fetch(`${relay.httpUrl}/healthz`)).json()
    expect(health).toMatchObject({ status: "ok", documents: 0, storage: "sqlite" })
    const { token } = (await (await fetch(`${relay.httpUrl}/dev/token?user=alice`)).json()) as {
      token: string
    }
    const id = newConversationId()
    const c = new TestClient(relay.url, id, token)
    clients.push(c)
    await c.synced()
    createConversation(c.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(c.doc, "alice" as UserId, { body: "hi" })
    await c.allSaved()
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text()
    for (const name of [
      "parley_connections 1",
      // The message's sequence number rides in the client's stored update (no relay update of its own).
      'parley_updates_total{source="client"}',
      "parley_update_bytes_total",
      "parley_persistence_seconds_bucket",
      "process_cpu_user_seconds_total",
    ]) {
      expect(metrics).toContain(name)
    }
    // The conversation, and the inbox the relay keeps for alice.
    expect(metrics).toMatch(/parley_documents_loaded [12]\n/)
    expect(relay.lines.some((l) => l.includes("DEV MODE"))).toBe(true)
    expect((await fetch(`${relay.httpUrl}/dev/token?user=not%20valid`)).status).toBe(400)
    // A path that does not decode is not found (it was a 500 logged as the relay's error).
    expect((await fetch(`${relay.httpUrl}/%E0%A4%A`)).status).toBe(404)
  })

  it("closes a static file whose reader left mid-way", async () => {
    const site = mkdtempSync(join(tmpdir(), "parley-static-"))
    writeFileSync(join(site, "index.html"), "<title>demo</title>")
    // Larger than the sockets' buffers: the relay is still reading it when the reader leaves.
    writeFileSync(join(site, "video.bin"), Buffer.alloc(32 * 1024 * 1024, 7))
    onTestFinished(() => rmSync(site, { recursive: true, force: true }))
    const relay = await startRelayProcess({ args: ["--dev", "--static", site] })
    const openFiles = () =>
      readdirSync(`/proc/${relay.child.pid}/fd`).filter((fd) => {
        try {
          return readlinkSync(`/proc/${relay.child.pid}/fd/${fd}`).endsWith("video.bin")
        } catch {
          return false
        }
      }).length
    for (let i = 0; i < 3; i++) {
      const socket = connect(Number(new URL(relay.httpUrl).port), "127.0.0.1")
      socket.write("GET /video.bin HTTP/1.1\r\nHost: relay\r\n\r\n")
      await new Promise((resolve) => socket.once("data", resolve))
      socket.destroy()
    }
    await until(openFiles, (open) => open === 0, 5000)
  })

  it("counts refusals by error code, mints no tokens without --dev, and runs on the memory backend", async () => {
    const relay = await startRelayProcess({ args: ["--storage", "memory"] })
    const c = new TestClient(relay.url, newConversationId(), undefined)
    clients.push(c)
    await c.closed
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text()
    expect(metrics).toContain('parley_errors_total{code="UNAUTHORIZED"} 1')
    expect((await fetch(`${relay.httpUrl}/dev/token?user=alice`)).status).toBe(404)
    expect(await (await fetch(`${relay.httpUrl}/healthz`)).json()).toMatchObject({ storage: "memory" })
  })

  it("exits 2 with one line naming the flag and pointing to --help on a bad flag", async () => {
    const bad = await runCli(["--port", "banana"])
    expect(bad.code).toBe(2)
    expect(bad.stderr.trimEnd().split("\n")).toEqual([
      "parley-relay: --port must be a non-negative integer, got banana (parley-relay --help lists every flag)",
    ])
  })
})

describe("configuration", () => {
  it("reads flags, falls back to environment variables, then defaults", () => {
    const config = parseConfig(["--port", "0", "--auth-secret", "s"], {
      PARLEY_PORT: "9999",
      PARLEY_IDLE_UNLOAD_MS: "5",
      PARLEY_DEV: "1",
    }) as RelayOptions
    expect(config.port).toBe(0)
    expect(config.dev).toBe(true)
    expect(config.limits?.idleUnloadMs).toBe(5)
    expect(config.host).toBe("127.0.0.1")
    expect(config.dataDir).toBe("./data")
    expect(config.storage).toBe("sqlite")
    expect(config.limits?.maxFrameBytes).toBe(1024 * 1024)
  })

  it("refuses missing or conflicting ways to verify tokens, and bad values", () => {
    expect(() => parseConfig([], {})).toThrow(ConfigError)
    expect(() => parseConfig(["--auth-secret", "s", "--auth-jwks-url", "http://x"], {})).toThrow(/only one/)
    expect(() => parseConfig(["--dev", "--storage", "redis"], {})).toThrow(/--storage/)
    expect(() => parseConfig(["--dev"], { PARLEY_PORT: "70000" })).toThrow(/65535/)
    expect(() => parseConfig(["--dev", "--log-level", "loud"], {})).toThrow(/--log-level/)
  })

  it("refuses --dev on a non-loopback host unless forced", async () => {
    await expect(
      startRelay({ dev: true, host: "0.0.0.0", port: 0, warmUp: false, storage: "memory", log: "silent" }),
    ).rejects.toThrow(/--force-dev/)
    const forced = await startRelay({
      dev: true,
      forceDev: true,
      host: "0.0.0.0",
      port: 0,
      warmUp: false,
      storage: "memory",
      log: "silent",
    })
    await forced.close()
  })
})
