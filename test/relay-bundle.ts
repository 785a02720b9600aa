/**
 * Vitest global setup: compiles the relay's sources (with `@parley/shared`'s) into one ES module
 * for the test run, and names it in `PARLEY_TEST_RELAY_SCRIPT`, which the relay-process helpers
 * spawn instead of `relay/bin/parley-relay.js` where they may (see `relayEntry` in
 * relay/test/helpers/relay-process.ts).
 *
 * Why: the bin runs the sources through tsx's loader, which costs a relay process about as long
 * again as the relay's own start (1.3 s more under load, measured 2026-12-01), and the suite starts
 * a relay process a few hundred times. The module is compiled by esbuild, as tsx compiles each
 * source file, from the same sources at the start of every run (under a second); packages from
 * node_modules stay outside it and load as they do for the bin.
 */
import { mkdirSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { build } from "esbuild"
import type { TestProject } from "vitest/node"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const OUT = join(ROOT, ".tsbuild/test-relay")

async function bundle(): Promise<string> {
  mkdirSync(OUT, { recursive: true })
  const outfile = join(OUT, "main.mjs")
  await build({
    entryPoints: [join(ROOT, "relay/src/main.ts")],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    conditions: ["parley-source"],
    logLevel: "warning",
    plugins: [
      {
        // Every package but the workspace's own loads from node_modules, as it does for the bin.
        name: "packages-external",
        setup(build) {
          build.onResolve({ filter: /^[^./]/ }, (args) =>
            args.path.startsWith("@parley/") ? undefined : { path: args.path, external: true },
          )
        },
      },
    ],
  })
  return outfile
}

export default async function setup(project: TestProject): Promise<void> {
  process.env.PARLEY_TEST_RELAY_SCRIPT = await bundle()
  // In watch mode, a rerun after a change to the relay's sources gets a relay compiled from them.
  project.onTestsRerun(async () => {
    await bundle()
  })
}
