import { gzipSync } from "node:zlib"
import * as esbuild from "esbuild"
const { bundleOptions } = await import(process.cwd() + "/client/scripts/build.mjs")
async function measure(label, options) {
  const result = await esbuild.build({ ...options, minify: true, write: false, platform: "browser", logLevel: "silent" })
  const code = result.outputFiles[0].contents
  console.log(`${label.padEnd(34)} ${(code.length / 1024).toFixed(1)} KiB min  ${(gzipSync(code, { level: 9 }).length / 1024).toFixed(1)} KiB gz`)
}
await measure("@parley/client (as shipped)", bundleOptions)
await measure("@parley/client + its imports", { ...bundleOptions, external: [], conditions: ["parley-source", ...bundleOptions.conditions] })
