import { readdirSync } from "node:fs"
import { register as registerLoader } from "node:module"
import { join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { ErrorCode, ParleyError } from "@parley/shared"
import { type DefinedHooks, isDefinedHooks } from "./define.js"

/** A hook module loaded from the hooks directory. */
export interface LoadedHooks {
  /** Its file name, e.g. `push.ts`: names it in logs, dead letters and the outbox. */
  readonly name: string
  readonly path: string
  readonly hooks: DefinedHooks
}

/** Longest a hook module may take to load, its top-level `await`s included, before the relay refuses to start. */
export const HOOK_LOAD_TIMEOUT_MS = 30_000

const MODULE = /\.(?:m?js|m?ts)$/
const TYPESCRIPT = /\.m?ts$/

let typescript: Promise<void> | undefined

/**
 * A module resolve hook run before tsx's: a `.ts` file outside `node_modules`
 * that Node would take for CommonJS (its package.json says `"type":
 * "commonjs"`, or says nothing, as `npm init` writes it) is loaded as an ES
 * module. Hook modules are written with `import` and `export default`, as
 * HOOKS.md shows; loaded as CommonJS, Node 20 refused them ("Cannot require()
 * ES Module … in a cycle") and the relay did not start. `.cts` files stay
 * CommonJS.
 */
const TYPESCRIPT_AS_MODULES = `export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context)
  if (resolved.format === "commonjs" && /\\.ts$/.test(new URL(resolved.url).pathname) && !resolved.url.includes("/node_modules/"))
    return { ...resolved, format: "module" }
  return resolved
}
`

/**
 * Lets Node import TypeScript hook modules (and whatever `.ts` files they
 * import): the relay is compiled JavaScript and Node 20 cannot strip types, so
 * tsx's ESM loader is registered for the process, once, and only when the
 * hooks directory holds a TypeScript module; a relay with JavaScript hooks (or
 * none) loads no TypeScript tooling. {@link TYPESCRIPT_AS_MODULES} is
 * registered after it, so that it runs first.
 */
function loadTypeScript(): Promise<void> {
  typescript ??= import("tsx/esm/api").then(({ register }) => {
    register()
    registerLoader(`data:text/javascript,${encodeURIComponent(TYPESCRIPT_AS_MODULES)}`)
  })
  return typescript
}

/** What to add to a load error that Node gives for ES module syntax in a file it takes for CommonJS. */
function moduleHint(error: unknown, path: string): string {
  const message = (error as Error)?.message ?? ""
  if (!/\.js$/.test(path) || !/require\(\) ES Module|outside a module|To load an ES module/.test(message))
    return ""
  return ' (a .js hook written with import/export needs "type": "module" in its package.json; or name it .mjs or .ts)'
}

/**
 * Loads every module in `dir` (`.js`, `.mjs`, `.ts`, `.mts`; not `.d.ts`, not
 * sub-directories), in file-name order. TypeScript needs no build step (see
 * {@link loadTypeScript}). Any failure (missing directory, syntax error, a module
 * that throws on import, a default export not made by `defineHooks`) throws a
 * ParleyError naming the file, so the relay refuses to start.
 */
export async function loadHooks(
  dir: string,
  options: {
    readonly timeoutMs?: number
    /** Told each module's path before it is imported (the hook worker reports it: see `HookWorker`). */
    readonly onLoading?: (path: string) => void
  } = {},
): Promise<LoadedHooks[]> {
  const timeoutMs = options.timeoutMs ?? HOOK_LOAD_TIMEOUT_MS
  const root = resolve(dir)
  let files: string[]
  try {
    files = readdirSync(root, { withFileTypes: true })
      .filter((e) => e.isFile() && MODULE.test(e.name) && !/\.d\.m?ts$/.test(e.name))
      .map((e) => e.name)
      .sort()
  } catch (error) {
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `hooks directory ${root}: ${(error as Error).message}`,
      {
        cause: error,
      },
    )
  }
  if (files.some((name) => TYPESCRIPT.test(name))) await loadTypeScript()
  const loaded: LoadedHooks[] = []
  for (const name of files) {
    const path = join(root, name)
    let module: { default?: unknown }
    options.onLoading?.(path)
    try {
      module = await importWithin(path, timeoutMs)
    } catch (error) {
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `hook script ${path} failed to load: ${(error as Error)?.message ?? String(error)}${moduleHint(error, path)}`,
        { cause: error },
      )
    }
    if (!isDefinedHooks(module.default)) {
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `hook script ${path} must default-export defineHooks({...}) (found ${describe(module.default)})`,
      )
    }
    loaded.push({ name, path, hooks: module.default })
  }
  return loaded
}

/**
 * Imports `path`, failing after `ms`. A module whose top-level `await` never
 * settles (a connection to a service that is down) otherwise left the relay
 * waiting for good before it listened, without a word, or, with nothing else
 * keeping Node's event loop alive, ended the process with exit code 0, which
 * a supervisor takes for a clean stop. The timer keeps the loop alive.
 */
async function importWithin(path: string, ms: number): Promise<{ default?: unknown }> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      import(pathToFileURL(path).href) as Promise<{ default?: unknown }>,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(`it did not finish loading within ${ms} ms (a top-level await that never settles?)`),
            ),
          ms,
        )
      }),
    ])
  } finally {
    clearTimeout(timer)
  }
}

const describe = (value: unknown) =>
  value === undefined
    ? "no default export"
    : value === null
      ? "null"
      : Array.isArray(value)
        ? "an array"
        : typeof value === "object"
          ? "an object not made by defineHooks"
          : `a ${typeof value}`
