// Builds the ESM bundle of the React bindings: react/dist/parley-react.js, the file
// the package's "exports" point at; its types are tsc's declarations next to it.
// `react` and `@parley/client` (peer dependencies) and the SDK's own peers stay
// external: an app must have exactly one React and one SDK (hooks read the
// app's ChatClient, and two Reacts break hooks).
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
  jsx: "automatic",
  mainFields: ["module", "main"],
  conditions: ["import", "module", "default"],
  external: [
    "react",
    "react/*",
    "@parley/client",
    "@parley/shared",
    "yjs",
    "lib0",
    "lib0/*",
    "y-protocols",
    "y-protocols/*",
  ],
  legalComments: "none",
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const result = await esbuild.build({
    ...bundleOptions,
    outfile: `${root}dist/parley-react.js`,
    sourcemap: true,
    metafile: true,
  })
  const bytes = Object.values(result.metafile.outputs).find((o) => o.entryPoint)?.bytes
  console.log(`react/dist/parley-react.js: ${bytes} bytes`)
}
