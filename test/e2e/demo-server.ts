import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type { Browser } from "playwright-core"
import { afterAll, beforeAll } from "vitest"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"
import { oncePerRun } from "../once-per-run.js"
import { launchChromium } from "./chromium.js"

const root = fileURLToPath(new URL("../..", import.meta.url))

/**
 * Vite's `build`, imported when a build is to run: only the first end-to-end file of a run builds
 * the demo, and importing Vite cost each of the others about a quarter of a second of CPU.
 */
async function build(config: import("vite").InlineConfig): Promise<void> {
  const vite = await import("vite")
  await vite.build(config)
}

/** Builds the demo app (client/demo) into a fresh temporary directory and returns it. */
export async function buildDemo(): Promise<string> {
  const outDir = mkdtempSync(join(tmpdir(), "parley-demo-"))
  await build({
    configFile: join(root, "client/demo/vite.config.ts"),
    logLevel: "warn",
    build: { outDir, emptyOutDir: true, sourcemap: false },
  })
  return outDir
}

/**
 * The demo built once for the whole test run, in `PARLEY_TEST_DEMO_DIR` (see demo-build.ts): the
 * first file to ask builds it (making the folder is the claim: only one process can), the others
 * wait until it is built, or fail with its error. Without the variable, a build of its own in a
 * temporary directory (`own`: the caller removes it).
 */
export async function demoStaticDir(): Promise<{ dir: string; own: boolean }> {
  const shared = process.env.PARLEY_TEST_DEMO_DIR
  if (!shared) return { dir: await buildDemo(), own: true }
  const out = join(shared, "out")
  await oncePerRun(shared, "the demo build", () =>
    build({
      configFile: join(root, "client/demo/vite.config.ts"),
      logLevel: "warn",
      build: { outDir: out, emptyOutDir: true, sourcemap: false },
    }),
  )
  return { dir: out, own: false }
}

/** A relay process in dev mode serving the built demo, restartable on the same port and data. */
export class DemoRelay {
  private constructor(
    private process: RelayProcess,
    private readonly staticDir: string,
  ) {}

  /** Starts a relay (SQLite storage in a temp dir, `--dev`, `--static staticDir`) on a free port. */
  static async start(staticDir: string): Promise<DemoRelay> {
    return new DemoRelay(await startRelayProcess({ args: ["--dev", "--static", staticDir] }), staticDir)
  }

  /** `http://127.0.0.1:PORT/`: where the demo is served. */
  get url(): string {
    return `${this.process.httpUrl}/`
  }

  /** Kills the relay (SIGKILL: no graceful shutdown), leaving its data. */
  kill(): Promise<void> {
    return this.process.kill()
  }

  /** Starts it again on the same port, data directory and token secret. */
  async restart(): Promise<void> {
    const { port, dataDir, secret } = this.process
    this.process = await startRelayProcess({
      dataDir,
      secret,
      args: ["--dev", "--static", this.staticDir, "--port", String(port)],
    })
  }
}

/** Builds the demo (or waits for the run's build), starts a relay serving it and launches Chromium for the tests of one file; cleans up after. */
export function useDemo(): { readonly browser: Browser; readonly relay: DemoRelay } {
  const state = {} as { browser: Browser; relay: DemoRelay; ownStaticDir?: string }
  beforeAll(async () => {
    // Chromium starts while the demo builds and its relay starts: neither waits for the other.
    // (Both settle before a failure is thrown, so that afterAll closes whatever did start.)
    const [browser, demo] = await Promise.allSettled([
      launchChromium(),
      (async () => {
        const demo = await demoStaticDir()
        if (demo.own) state.ownStaticDir = demo.dir
        state.relay = await DemoRelay.start(demo.dir)
      })(),
    ])
    if (browser.status === "fulfilled") state.browser = browser.value
    for (const result of [browser, demo]) if (result.status === "rejected") throw result.reason
  }, 120_000)
  afterAll(async () => {
    await state.browser?.close()
    await stopRelayProcesses()
    if (state.ownStaticDir) rmSync(state.ownStaticDir, { recursive: true, force: true })
  })
  return state
}
