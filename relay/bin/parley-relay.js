#!/usr/bin/env node
// Installed from a package, the relay runs its compiled JavaScript (dist/main.js); no
// TypeScript tooling is loaded unless a hook script is written in TypeScript (see
// HOOKS.md). In the Parley repository (src/ is not published, see "files") it runs the
// TypeScript sources instead, so that tests and `npm start` need no build step: tsx
// compiles them, and the workspace packages resolve to their sources through the
// "parley-source" export condition.
import { existsSync } from "node:fs"
import { register } from "node:module"

const source = new URL("../src/main.ts", import.meta.url)
if (existsSync(source)) {
  register("../../scripts/source-condition.mjs", import.meta.url)
  const tsx = await import("tsx/esm/api")
  tsx.register()
  await import(source.href)
} else {
  await import("../dist/main.js")
}
