// Prints the size of the SDK's browser bundle, minified and gzipped: as shipped (yjs,
// lib0, y-protocols and @parley/shared external, the app brings them) and with
// everything included, i.e. what the SDK adds to an app that uses nothing else.
import { gzipSync } from "node:zlib"
import * as esbuild from "esbuild"
import { bundleOptions } from "./build.mjs"

async function measure(label, options) {
  const result = await esbuild.build({ ...options, minify: true, write: false, platform: "browser" })
  const code = result.outputFiles[0].contents
  const gzip = gzipSync(code, { level: 9 }).length
  console.log(
    `${label.padEnd(28)} ${(code.length / 1024).toFixed(1).padStart(7)} KiB minified  ${(gzip / 1024).toFixed(1).padStart(6)} KiB gzipped`,
  )
}

await measure("@parley/client (as shipped)", bundleOptions)
// `@parley/shared` from its sources (the parley-source condition): no build of it needed.
await measure("@parley/client + its imports", {
  ...bundleOptions,
  external: [],
  conditions: ["parley-source", ...bundleOptions.conditions],
})
