// Builds the ESM bundle of the SDK: client/dist/parley-client.js (platform neutral:
// browsers, Node bots and tests). `yjs` stays external: an app must have exactly one
// copy of Yjs (two copies break its constructor checks as soon as the app touches
// `conversation.doc`), so the app's bundler resolves it. Everything else is bundled.
import { fileURLToPath } from "node:url"
import * as esbuild from "esbuild"

const root = fileURLToPath(new URL("..", import.meta.url))

/** esbuild options shared with size.mjs. */
export const bundleOptions = {
  entryPoints: [`${root}src/index.ts`],
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  mainFields: ["module", "main"],
  conditions: ["import", "module", "default"],
  external: ["yjs"],
  legalComments: "none",
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const minify = process.argv.includes("--minify")
  const result = await esbuild.build({
    ...bundleOptions,
    outfile: `${root}dist/parley-client.js`,
    minify,
    sourcemap: true,
    metafile: true,
  })
  const bytes = Object.values(result.metafile.outputs).find((o) => o.entryPoint)?.bytes
  console.log(`client/dist/parley-client.js: ${bytes} bytes${minify ? " (minified)" : ""}`)
}
