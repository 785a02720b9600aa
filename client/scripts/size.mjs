// Prints the size of the SDK's browser bundle, minified and gzipped: as shipped
// (yjs external, the app brings it) and with yjs included, for comparison.
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

await measure("@parley/client (yjs external)", bundleOptions)
await measure("@parley/client + yjs", { ...bundleOptions, external: [] })
