import { defaultClientConditions, defaultServerConditions } from "vite"
import { defineConfig } from "vitest/config"
import LongestFirst from "./test/sequencer.js"

/** Inside the repository the workspace packages resolve to their TypeScript sources, never to a stale dist/. */
const SOURCE = "parley-source"

export default defineConfig({
  resolve: { conditions: [SOURCE, ...defaultClientConditions] },
  ssr: { resolve: { conditions: [SOURCE, ...defaultServerConditions] } },
  test: {
    include: [
      "shared/test/**/*.test.ts",
      "relay/test/**/*.test.ts",
      "client/test/**/*.test.ts",
      "react/test/**/*.test.{ts,tsx}",
      "test/**/*.test.ts",
    ],
    // Compiles the relay once per run for the relay processes tests start (see the file).
    // Names the folder the end-to-end files build the demo app into, once per run (see the file).
    // Names the folder that the packages are built for, once per run, by the first file that needs them (see the file).
    globalSetup: ["test/relay-bundle.ts", "test/e2e/demo-build.ts", "test/packages-build.ts"],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    pool: "forks",
    // Vitest's default (available cores − 1) is one worker on a 2-core machine: files ran one after
    // another, 810 s in CI. Most files wait on relay processes, PostgreSQL or a browser, so two share
    // two cores well. Three gained nothing measurable (2026-12-02, the 31 longest files on a quiet
    // 2-core machine: 254 s with three, 261 s with two; the cores were 97 % busy with three) and
    // put more load beside the tests that wait on timers.
    maxWorkers: 2,
    // Longest files first, also on a fresh clone (see the file).
    sequence: { sequencer: LongestFirst },
  },
})
