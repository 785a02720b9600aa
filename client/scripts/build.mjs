// Builds the ESM bundle of the SDK: client/dist/parley-client.js (platform neutral:
// browsers, Node bots and tests), the file the package's "exports" point at; its types
// are tsc's declarations next to it. `yjs`, `lib0` and `y-protocols` stay external (peer
// dependencies): an app must have exactly one copy of each (two copies of Yjs break its
// constructor checks as soon as the app touches `conversation.doc`), so the app's bundler
// resolves them. `@parley/shared` stays external too (a dependency), so that `ParleyError`
// is one class whether the app imports it from here or from there. The rest (jose's JWT
// decoder) is bundled; the SDK has its own provider and IndexedDB code (no y-websocket,
// no y-indexeddb).
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
  external: ["yjs", "lib0", "lib0/*", "y-protocols", "y-protocols/*", "@parley/shared"],
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
