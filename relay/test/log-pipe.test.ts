import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import { relayEntry, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const dirs: string[] = []
// After the file, not after each test: the tests run at once.
afterAll(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

/** Starts a relay whose stdout is a pipe this test reads until the relay listens. */
async function relayOnPipe(args: string[] = []) {
  const dir = mkdtempSync(join(tmpdir(), "parley-log-pipe-"))
  dirs.push(dir)
  const child = spawn(
    process.execPath,
    [relayEntry(args), "--port", "0", "--data-dir", dir, "--auth-secret", "s".repeat(32), ...args],
    {
      stdio: ["ignore", "pipe", "inherit"],
    },
  )
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  const port = await new Promise<number>((resolve, reject) => {
    let seen = ""
    const read = (chunk: Buffer) => {
      seen += chunk.toString()
      const listening = /"port":(\d+)[^\n]*"msg":"listening"/.exec(seen)
      if (listening) {
        child.stdout!.off("data", read)
        resolve(Number(listening[1]))
      }
    }
    child.stdout!.on("data", read)
    void exited.then((code) => reject(new Error(`the relay exited (${code}) before listening`)))
  })
  return { child, exited, port }
}

/** Resolves with the exit code, or "still running" after `ms`. */
const within = (exited: Promise<number | null>, ms: number) =>
  Promise.race([exited, new Promise<string>((r) => setTimeout(() => r("still running"), ms))])

// Each test has a relay process (the relay compiled for the test run) of its own: they run at once.
describe.concurrent("a relay whose log reader goes away", () => {
  it("still stops on SIGTERM and exits 0 when nothing reads its stdout any more", async () => {
    const { child, exited } = await relayOnPipe()
    // The log shipper died: the pipe has no reader, every write fails with EPIPE.
    child.stdout!.destroy()
    child.kill("SIGTERM")
    const code = await within(exited, 10_000)
    if (code === "still running") child.kill("SIGKILL")
    expect(code).toBe(0)
  }, 30_000)

  it("keeps serving, and stops on SIGTERM, while nothing drains its stdout (a stalled log reader)", async () => {
    const { child, exited, port } = await relayOnPipe(["--address-auth-failures-per-minute", "0"])
    child.stdout!.pause()
    // Each refused connection logs a line (~150 bytes): 1,000 of them are more than a pipe holds (64 KiB).
    const refuse = () =>
      new Promise<void>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/c~x?token=bad`)
        ws.on("error", () => {})
        ws.on("close", () => resolve())
      })
    for (let i = 0; i < 1_000; i += 20) await Promise.all(Array.from({ length: 20 }, refuse))
    // The log lines wait (or are dropped), never the relay: it still answers (a relay blocked on its
    // stdout would not answer at all).
    const health = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(10_000) })
    expect(health.status).toBe(200)
    child.kill("SIGTERM")
    const code = await within(exited, 10_000)
    if (code === "still running") child.kill("SIGKILL")
    expect(code).toBe(0)
  }, 60_000)
})

describe("a relay whose stdout and stderr readers are gone", () => {
  it("keeps serving when something writes to its stdout or stderr, and exits 0 on SIGTERM", async () => {
    // Whatever writes there (Yjs writes errors to the console, Node prints warnings): here, on a signal.
    const dir = mkdtempSync(join(tmpdir(), "parley-log-pipe-"))
    dirs.push(dir)
    const writer = join(dir, "writes-on-signal.cjs")
    writeFileSync(
      writer,
      'process.on("SIGUSR2", () => { console.error("to a stderr nobody reads"); process.stdout.write("and to stdout\\n") })\n',
    )
    const relay = await startRelayProcess({
      env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --require ${writer}`.trim() },
    })
    // The log shipper dies: every write to the relay's stdout and stderr now fails with EPIPE, an
    // 'error' that crashed the relay, which then never exited.
    relay.child.stdout!.destroy()
    relay.child.stderr!.destroy()
    await new Promise((resolve) => setTimeout(resolve, 200))
    relay.child.kill("SIGUSR2")
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
    relay.child.kill("SIGTERM")
    const code = await within(
      relay.exited.then((exit) => exit.code),
      10_000,
    )
    expect(code).toBe(0)
  }, 30_000)

  it("still exits when it crashes after its log lines failed", async () => {
    // A crash stands for any bug: here, on a signal.
    const dir = mkdtempSync(join(tmpdir(), "parley-log-pipe-"))
    dirs.push(dir)
    const crash = join(dir, "crashes-on-signal.cjs")
    writeFileSync(crash, 'process.on("SIGUSR2", () => { throw new Error("a bug") })\n')
    const relay = await startRelayProcess({
      env: { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --require ${crash}`.trim() },
    })
    relay.child.stdout!.destroy()
    relay.child.stderr!.destroy()
    // A refused socket logs a line, which fails (EPIPE) and stays in the log's buffer.
    await new Promise<void>((resolve) => {
      const ws = new WebSocket(`${relay.url}/c~x?token=bad`)
      ws.on("error", () => {})
      ws.on("close", () => resolve())
    })
    await new Promise((resolve) => setTimeout(resolve, 300))
    relay.child.kill("SIGUSR2")
    // pino's flush at exit retried the failed line for ever: the crashed relay never exited.
    const code = await within(
      relay.exited.then((exit) => exit.code),
      10_000,
    )
    expect(code).not.toBe("still running")
    expect(code).not.toBe(0)
  }, 30_000)
})
