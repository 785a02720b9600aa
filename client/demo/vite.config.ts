import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { defaultClientConditions, defineConfig, type Plugin } from "vite"

const here = fileURLToPath(new URL(".", import.meta.url))

/**
 * Emits `sw.js`: the service worker that lets the demo load offline. It
 * precaches the app shell, i.e. exactly the files of this build (their names
 * are content-hashed, so the list doubles as the cache version).
 */
function serviceWorker(): Plugin {
  return {
    name: "parley-demo-service-worker",
    apply: "build",
    generateBundle(_options, bundle) {
      const files = Object.keys(bundle).map((file) => `/${file}`)
      const precache = ["/", ...files.filter((file) => !file.endsWith(".map"))]
      const version = files.sort().join("|")
      let hash = 0
      for (let i = 0; i < version.length; i++) hash = (Math.imul(hash, 31) + version.charCodeAt(i)) >>> 0
      const source = readFileSync(`${here}src/service-worker.js`, "utf8")
      this.emitFile({
        type: "asset",
        fileName: "sw.js",
        source: `const PRECACHE = ${JSON.stringify(precache)}\nconst VERSION = "${hash.toString(36)}"\n${source}`,
      })
    },
  }
}

/** The demo chat app: React on `@parley/react` and `@parley/client`, served by the relay (`--static`). */
export default defineConfig(({ mode }) => ({
  root: here,
  // React's production build whenever Vite builds for production, even when the builder runs
  // under NODE_ENV=test (the e2e tests), which Vite would otherwise pass on.
  define: { "process.env.NODE_ENV": JSON.stringify(mode === "production" ? "production" : "development") },
  oxc: { jsx: { runtime: "automatic", development: mode !== "production" } },
  base: "/",
  publicDir: false,
  // The SDK from its sources (the repository's "parley-source" export condition), not a built dist/.
  resolve: { conditions: ["parley-source", ...defaultClientConditions] },
  build: {
    outDir: `${here}dist`,
    emptyOutDir: true,
    target: "es2022",
    sourcemap: true,
    // One chunk on purpose (React, Yjs and the SDK: about 510 kB, 150 kB gzipped); the SDK's own size is
    // checked by client/test/bundle.test.ts. The default 500 kB warning was the first line a new user saw.
    chunkSizeWarningLimit: 800,
  },
  plugins: [serviceWorker()],
}))
