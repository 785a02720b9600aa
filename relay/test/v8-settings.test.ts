import { readFileSync } from "node:fs"
import { afterAll, describe, expect, it } from "vitest"
import { DEFAULT_V8_FLAGS, v8FlagName, v8FlagsToSet } from "../src/v8-settings.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

// A failed test leaves its relay running: stop every one at the end.
afterAll(() => stopRelayProcesses())

const defaults = DEFAULT_V8_FLAGS.split(" ")

describe("the V8 flags the relay sets", () => {
  it("sets the measured defaults when PARLEY_V8_FLAGS is not set", () => {
    expect(v8FlagsToSet(undefined, [])).toEqual({ ok: true, flags: defaults, overridden: [] })
    expect(defaults).toEqual(["--heap-growing-percent=200", "--memory-reducer-single-gc"])
  })

  it("sets none when PARLEY_V8_FLAGS is empty, and the variable's own flags otherwise", () => {
    expect(v8FlagsToSet("", [])).toEqual({ ok: true, flags: [], overridden: [] })
    expect(v8FlagsToSet("  ", [])).toEqual({ ok: true, flags: [], overridden: [] })
    expect(v8FlagsToSet(" --no-memory-reducer  --heap-growing-percent=150 ", [])).toEqual({
      ok: true,
      flags: ["--no-memory-reducer", "--heap-growing-percent=150"],
      overridden: [],
    })
  })

  it("leaves out a flag node's command line gives, in any of V8's spellings", () => {
    const nodeArgs = ["--conditions=parley-source", "--memory_reducer", "--heap-growing-percent=150"]
    const settings = v8FlagsToSet("--nomemory-reducer --heap_growing_percent=200 --trace-gc", nodeArgs)
    expect(settings).toEqual({
      ok: true,
      flags: ["--trace-gc"],
      overridden: ["--nomemory-reducer", "--heap_growing_percent=200"],
    })
    expect(v8FlagName("--no-memory-reducer")).toBe("memory-reducer")
    expect(v8FlagName("--memory-reducer=false")).toBe("memory-reducer")
  })

  it("refuses a variable that does not list flags", () => {
    const settings = v8FlagsToSet("--no-memory-reducer heap-growing-percent=200", [])
    expect(settings.ok).toBe(false)
    expect(!settings.ok && settings.message).toContain('"heap-growing-percent=200" is not a V8 flag')
  })

  // The flags must hold for every module's body, so main.ts evaluates v8-settings.ts before any
  // other module, and v8-settings.ts imports nothing that could run first.
  it("is main.ts's first import, and imports only Node's own modules", () => {
    const main = readFileSync(new URL("../src/main.ts", import.meta.url), "utf8")
    const imports = [...main.matchAll(/^import\s[^"]*"([^"]+)"/gm)].map((m) => m[1])
    expect(imports[0]).toBe("./v8-settings.js")
    const own = readFileSync(new URL("../src/v8-settings.ts", import.meta.url), "utf8")
    for (const [, from] of own.matchAll(/^import\s[^"]*"([^"]+)"/gm)) expect(from).toMatch(/^node:/)
  })

  // End to end, through the relay's command line: PARLEY_V8_FLAGS with --trace-gc makes V8 print
  // each collection, which it does only if the relay's process really set the flags.
  it("takes effect in the relay's process: V8 traces its collections", async () => {
    const relay = await startRelayProcess({
      args: ["--storage", "memory"],
      env: { PARLEY_V8_FLAGS: `${DEFAULT_V8_FLAGS} --trace-gc` },
      // Its allocations are what make V8 collect (below).
      warmUp: true,
    })
    const line = await relay.waitForLog((l) => "v8Flags" in l)
    expect(line.v8Flags).toEqual([...defaults, "--trace-gc"])
    // The start-up warm-up allocates tens of MB: several collections by its end, each traced.
    await relay.waitForLog((l) => l.msg === "warmed up the update path")
    expect(relay.lines.some((l) => /^\[\d+:0x[0-9a-f]+\]\s+\d+ ms: (Scavenge|Mark-Compact)/.test(l))).toBe(
      true,
    )
    await relay.kill()
  })

  it("reports the defaults, less what node's command line gives", async () => {
    const relay = await startRelayProcess({
      args: ["--storage", "memory"],
      env: { PARLEY_V8_FLAGS: undefined },
      nodeArgs: ["--heap-growing-percent=150"],
    })
    const line = await relay.waitForLog((l) => "v8Flags" in l)
    expect(line.v8Flags).toEqual(defaults.filter((f) => !f.startsWith("--heap-growing-percent")))
    expect(line.overriddenByNode).toEqual(defaults.filter((f) => f.startsWith("--heap-growing-percent")))
    await relay.kill()
  })
})
