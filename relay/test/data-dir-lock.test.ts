import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs"
import { hostname, tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { runRebuildInboxesCli } from "../src/inbox/rebuild-cli.js"
import { runEraseUserCli } from "../src/purge/erase-user-cli.js"
import { runDamagedCli } from "../src/storage/damaged-cli.js"
import { DataDirInUse, LOCK_FILE, lockDataDir, STALE_LOCK_MS } from "../src/storage/data-dir-lock.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const dirs: string[] = []
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "parley-lock-"))
  dirs.push(dir)
  return dir
}
afterEach(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

describe("a SQLite data directory is one relay's", () => {
  it("refuses a second relay on it, and offline commands while the relay runs; both work once it stopped", async () => {
    const relay = await startRelayProcess()
    const second = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret }).then(
      () => "started",
      (error: Error) => error.message,
    )
    expect(second).toMatch(/a relay \(pid \d+ on .*\) is using it/)
    expect(second).toMatch(/stop it first, or give another --data-dir/)

    // Before: the command reported the user erased, and the relay wrote the messages back at its stop.
    const lines: string[] = []
    expect(await runEraseUserCli(["bob", "--data-dir", relay.dataDir], (l) => lines.push(l), {})).toBe(1)
    expect(lines.join("\n")).toMatch(/erase-user: a relay \(pid \d+.*\) is using it.*stop it first/)
    expect(await runRebuildInboxesCli(["--data-dir", relay.dataDir], (l) => lines.push(l), {})).toBe(1)
    expect(
      await runDamagedCli(
        ["restore", "g~x", "--from", "/nowhere", "--data-dir", relay.dataDir],
        (l) => lines.push(l),
        {},
      ),
    ).toBe(1)
    expect(lines.at(-1)).toMatch(/damaged restore: a relay .* is using it/)
    // Listing damaged documents runs beside it.
    expect(await runDamagedCli(["list", "--data-dir", relay.dataDir], (l) => lines.push(l), {})).toBe(0)

    // SIGKILL leaves the lock file: the next relay on this host takes it over at once.
    await relay.kill()
    expect(JSON.parse(readFileSync(join(relay.dataDir, LOCK_FILE), "utf8"))).toMatchObject({
      holder: "relay",
    })
    const again = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    again.child.kill("SIGTERM")
    await again.exited
    lines.length = 0
    expect(await runEraseUserCli(["bob", "--data-dir", relay.dataDir], (l) => lines.push(l), {})).toBe(0)
  })

  it("takes over another host's lock only once it went untouched long enough", () => {
    const dir = tempDir()
    const file = join(dir, LOCK_FILE)
    const elsewhere = { pid: 1, host: `not-${hostname()}`, holder: "relay", since: new Date().toISOString() }
    writeFileSync(file, JSON.stringify(elsewhere))
    expect(() => lockDataDir(dir, "erase-user")).toThrow(DataDirInUse)
    const old = new Date(Date.now() - STALE_LOCK_MS - 1_000)
    utimesSync(file, old, old)
    const release = lockDataDir(dir, "erase-user")
    expect(JSON.parse(readFileSync(file, "utf8"))).toMatchObject({ pid: process.pid, holder: "erase-user" })
    release()
    // Released: free for the next.
    lockDataDir(dir, "relay")()
  })
})
