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

/** The demo chat app: plain TypeScript and DOM on `@parley/client`, served by the relay (`--static`). */
export default defineConfig({
  root: here,
  base: "/",
  publicDir: false,
  // The SDK from its sources (the repository's "parley-source" export condition), not a built dist/.
  resolve: { conditions: ["parley-source", ...defaultClientConditions] },
  build: {
    outDir: `${here}dist`,
    emptyOutDir: true,
    target: "es2022",
    sourcemap: true,
  },
  plugins: [serviceWorker()],
})
