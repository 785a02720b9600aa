import { existsSync } from "node:fs"
import { type Browser, chromium } from "playwright-core"

/** The install command named when no browser is found. */
export const INSTALL_HINT = "apt-get install -y chromium"

/**
 * The Chromium to drive: `CHROME_PATH`, else Debian's `/usr/bin/chromium`,
 * else a browser installed by Playwright (`npx playwright-core install chromium`).
 * Throws, naming the install command, when there is none: browser tests must
 * not silently pass without a browser.
 */
export function findChromium(
  env: NodeJS.ProcessEnv = process.env,
  candidates: readonly string[] = defaultCandidates(),
): string {
  const fromEnv = env.CHROME_PATH
  if (fromEnv) {
    if (!existsSync(fromEnv))
      throw new Error(
        `CHROME_PATH is set to ${fromEnv}, which does not exist. Install Chromium with \`${INSTALL_HINT}\`.`,
      )
    return fromEnv
  }
  const found = candidates.find((path) => existsSync(path))
  if (found) return found
  throw new Error(
    `No Chromium found for the browser tests (looked at CHROME_PATH, ${candidates.join(", ")}). ` +
      `Install it with \`${INSTALL_HINT}\` (Debian/Ubuntu), or set CHROME_PATH to a Chromium or Chrome binary.`,
  )
}

/** Debian's Chromium, then the browser Playwright would have installed for this playwright-core version. */
function defaultCandidates(): string[] {
  const candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
  try {
    candidates.push(chromium.executablePath())
  } catch {
    // playwright-core knows no browser of its own here
  }
  return candidates
}

/** Launches headless Chromium with flags that keep it quiet and light on a shared CI machine. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: findChromium(),
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-dev-shm-usage",
    ],
  })
}
