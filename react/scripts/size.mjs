// Prints the size of the React bindings' bundle, minified and gzipped, as shipped
// (react and the SDK external: the app brings them).
import { gzipSync } from "node:zlib"
import * as esbuild from "esbuild"
import { bundleOptions } from "./build.mjs"

const result = await esbuild.build({ ...bundleOptions, minify: true, write: false, platform: "browser" })
const code = result.outputFiles[0].contents
const gzip = gzipSync(code, { level: 9 }).length
console.log(
  `${"@parley/react (as shipped)".padEnd(28)} ${(code.length / 1024).toFixed(1).padStart(7)} KiB minified  ${(gzip / 1024).toFixed(1).padStart(6)} KiB gzipped`,
)
