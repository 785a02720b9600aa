// The hook worker's entry when the relay runs from its TypeScript sources (the repository: tests,
// `npm start`). Loader hooks are per thread: this registers for the worker what the relay's bin
// registers for the main thread (workspace packages resolve to their sources; tsx compiles them),
// then runs hook-worker.ts. Compiled, the relay starts hook-worker.js directly.
import { register } from "node:module"

register("../../../scripts/source-condition.mjs", import.meta.url)
const tsx = await import("tsx/esm/api")
tsx.register()
await import("./hook-worker.ts")
