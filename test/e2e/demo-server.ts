import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type { Browser } from "playwright-core"
import { build } from "vite"
import { afterAll, beforeAll } from "vitest"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"
import { launchChromium } from "./chromium.js"

const root = fileURLToPath(new URL("../..", import.meta.url))

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

/** Builds the demo, starts a relay serving it and launches Chromium for the tests of one file; cleans up after. */
export function useDemo(): { readonly browser: Browser; readonly relay: DemoRelay } {
  const state = {} as { browser: Browser; relay: DemoRelay; staticDir?: string }
  beforeAll(async () => {
    // Chromium starts while the demo builds and its relay starts: neither waits for the other.
    // (Both settle before a failure is thrown, so that afterAll closes whatever did start.)
    const [browser, demo] = await Promise.allSettled([
      launchChromium(),
      (async () => {
        state.staticDir = await buildDemo()
        state.relay = await DemoRelay.start(state.staticDir)
      })(),
    ])
    if (browser.status === "fulfilled") state.browser = browser.value
    for (const result of [browser, demo]) if (result.status === "rejected") throw result.reason
  }, 120_000)
  afterAll(async () => {
    await state.browser?.close()
    await stopRelayProcesses()
    if (state.staticDir) rmSync(state.staticDir, { recursive: true, force: true })
  })
  return state
}
