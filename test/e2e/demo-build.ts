/**
 * Vitest global setup: names in `PARLEY_TEST_DEMO_DIR` the folder that the demo app (client/demo)
 * is built into once for the whole run, by the first end-to-end file that needs it (see
 * `demoStaticDir` in demo-server.ts), and empties it. Nothing is built here: a run without
 * end-to-end files builds nothing.
 *
 * Why: each end-to-end file built the demo for itself, a Vite build of some seconds per file,
 * five times a run, of the same sources.
 */
import { rmSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type { TestProject } from "vitest/node"

const DIR = join(fileURLToPath(new URL("../..", import.meta.url)), ".tsbuild/test-demo")

export default function setup(project: TestProject): void {
  rmSync(DIR, { recursive: true, force: true })
  process.env.PARLEY_TEST_DEMO_DIR = DIR
  // In watch mode, a rerun after a change to the demo's sources builds it again.
  project.onTestsRerun(() => rmSync(DIR, { recursive: true, force: true }))
}
