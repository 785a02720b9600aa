/**
 * Vitest global setup: compiles the relay's sources and `@parley/shared`'s to JavaScript for the
 * test run, file by file, and names the relay's entry in `PARLEY_TEST_RELAY_SCRIPT`, which the
 * relay-process helpers spawn instead of `relay/bin/parley-relay.js` where they may (see
 * `relayEntry` in relay/test/helpers/relay-process.ts).
 *
 * Why: the bin runs the sources through tsx's loader, which costs a relay process about as long
 * again as the relay's own start (1.3 s more under load, measured 2026-12-01), and the suite starts
 * a relay process a few hundred times. Each file is compiled by esbuild, as tsx compiles it, and
 * stays a module of its own, so modules load and run in the order they do for the bin and for the
 * published package. (One bundle would not do: it hoists every package import above the relay's
 * code, and undici, loaded first, makes itself Node's fetch dispatcher, which web-push's requests
 * then fail in; see the report of 2026-12-01.) `@parley/shared` is laid out as a package beside
 * it, where Node's resolution finds it; other packages load from the repository's node_modules.
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { build } from "esbuild"
import type { TestProject } from "vitest/node"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const OUT = join(ROOT, ".tsbuild/test-relay")
const SHARED = join(OUT, "node_modules/@parley/shared")

const sources = (dir: string): string[] =>
  readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".ts") && !file.endsWith(".d.ts"))
    .map((file) => join(dir, file))

async function compile(from: string, to: string): Promise<void> {
  await build({
    entryPoints: sources(from),
    outdir: to,
    outbase: from,
    bundle: false,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
  })
}

async function compileRelay(): Promise<string> {
  rmSync(OUT, { recursive: true, force: true })
  await Promise.all([
    compile(join(ROOT, "relay/src"), join(OUT, "relay/src")),
    compile(join(ROOT, "shared/src"), join(SHARED, "src")),
  ])
  writeFileSync(join(OUT, "relay/package.json"), JSON.stringify({ type: "module" }))
  const shared = JSON.parse(readFileSync(join(ROOT, "shared/package.json"), "utf8")) as { name: string }
  writeFileSync(
    join(SHARED, "package.json"),
    JSON.stringify({ name: shared.name, type: "module", exports: { ".": "./src/index.js" } }),
  )
  return join(OUT, "relay/src/main.js")
}

export default async function setup(project: TestProject): Promise<void> {
  process.env.PARLEY_TEST_RELAY_SCRIPT = await compileRelay()
  // In watch mode, a rerun after a change to the relay's sources gets a relay compiled from them.
  project.onTestsRerun(async () => {
    await compileRelay()
  })
}
