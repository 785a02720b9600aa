import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { hostname, tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { runRebuildInboxesCli } from "../src/inbox/rebuild-cli.js"
import { runEraseUserCli } from "../src/purge/erase-user-cli.js"
import { runDamagedCli } from "../src/storage/damaged-cli.js"
import { LOCK_FILE, lockDataDir } from "../src/storage/data-dir-lock.js"
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

  it("refuses an offline command on a --data-dir that holds no relay's documents, and creates nothing there", async () => {
    // Before, erase-user created an empty store in a mistyped directory and reported the erasure done;
    // on a file given for the directory it threw ENOTDIR.
    const missing = join(tempDir(), "typo")
    const file = join(tempDir(), "parley.sqlite")
    writeFileSync(file, "")
    const lines: string[] = []
    expect(await runEraseUserCli(["bob", "--data-dir", missing], (l) => lines.push(l), {})).toBe(1)
    expect(await runRebuildInboxesCli(["--data-dir", file], (l) => lines.push(l), {})).toBe(1)
    expect(lines).toEqual([
      `parley-relay erase-user: no documents at ${join(missing, "parley.sqlite")} (give the relay's --data-dir)`,
      expect.stringMatching(
        /^parley-relay rebuild-inboxes: no documents at .*parley\.sqlite\/parley\.sqlite/,
      ),
    ])
    expect(existsSync(missing)).toBe(false)
  })

  it("is the process's while it lives, whatever a lock file left behind says", () => {
    const dir = tempDir()
    // Before, another host's file held the directory for 60 s after that host's relay died.
    const elsewhere = { pid: 1, host: `not-${hostname()}`, holder: "relay", since: new Date().toISOString() }
    writeFileSync(join(dir, LOCK_FILE), JSON.stringify(elsewhere))
    const release = lockDataDir(dir, "erase-user")
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8"))).toMatchObject({
      pid: process.pid,
      holder: "erase-user",
    })
    expect(() => lockDataDir(dir, "relay")).toThrow(/parley-relay erase-user \(pid \d+ .*\) is using it/)
    release()
    // Released: free for the next.
    lockDataDir(dir, "relay")()
  })

  it("lets exactly one of three relays started at once run, on a directory a killed relay left", async () => {
    const first = await startRelayProcess()
    await first.kill()
    const starts = await Promise.all(
      [0, 1, 2].map(() =>
        startRelayProcess({ dataDir: first.dataDir, secret: first.secret }).then(
          (relay) => relay,
          (error: Error) => error.message,
        ),
      ),
    )
    const running = starts.filter((s) => typeof s !== "string")
    expect(running).toHaveLength(1)
    for (const refused of starts.filter((s) => typeof s === "string")) expect(refused).toMatch(/is using it/)
  })
})
