/**
 * The workspace packages built as they are published (`npm run build`: tsc's JavaScript and
 * declarations in each package's dist/, and the SDK's and React bindings' bundles), once per test
 * run, for the files that need them: the packages test packs them, the docs test type-checks the
 * docs' blocks against their declarations.
 *
 * As a Vitest global setup, names in `PARLEY_TEST_BUILD_DIR` a folder for the run and empties it;
 * nothing is built there. {@link buildPackages} then builds once: the first file to ask builds
 * (making the folder is the claim: only one process can), the others wait until it is built, or
 * fail with its error.
 *
 * Why: two files ran `tsc -b` over the same packages at the same time (each its own build, which
 * would write the same dist/ files at once when the sources had changed), and the docs test's
 * type-check compiled the packages' sources again (about 14 s of CPU, 2 s against the
 * declarations; measured 2026-12-02). In `npm test` the type-check before the tests has already
 * built dist/, and `npm run build` finds it up to date.
 */
import { spawn } from "node:child_process"
import { rmSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type { TestProject } from "vitest/node"
import { oncePerRun } from "./once-per-run.js"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const DIR = join(ROOT, ".tsbuild/test-packages-build")

export default function setup(project: TestProject): void {
  rmSync(DIR, { recursive: true, force: true })
  process.env.PARLEY_TEST_BUILD_DIR = DIR
  // In watch mode, a rerun after a change builds again.
  project.onTestsRerun(() => rmSync(DIR, { recursive: true, force: true }))
}

/** Runs `npm run build` at the repository's root; rejects with its output when it fails. */
function npmRunBuild(): Promise<void> {
  return new Promise((resolve, reject) => {
    // Without npm's per-script variables, which would point npm at the caller's package.
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name)))
    const child = spawn("npm", ["run", "build"], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk) => {
      output += chunk
    })
    child.stderr.on("data", (chunk) => {
      output += chunk
    })
    const timer = setTimeout(() => child.kill("SIGKILL"), 300_000)
    child.once("error", reject)
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve()
      else reject(new Error(`npm run build exited with ${code ?? signal}:\n${output}`))
    })
  })
}

/**
 * Resolves once the packages are built for this run (see the file). Without
 * `PARLEY_TEST_BUILD_DIR` (Vitest not started with this global setup), builds.
 */
export async function buildPackages(): Promise<void> {
  const shared = process.env.PARLEY_TEST_BUILD_DIR
  if (!shared) return npmRunBuild()
  return oncePerRun(shared, "the packages' build", npmRunBuild)
}
