import { readdirSync } from "node:fs"
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

const MODULE = /\.(?:m?js|m?ts)$/
const TYPESCRIPT = /\.m?ts$/

let typescript: Promise<void> | undefined

/**
 * Lets Node import TypeScript hook modules (and whatever `.ts` files they
 * import): the relay is compiled JavaScript and Node 20 cannot strip types, so
 * tsx's ESM loader is registered for the process, once, and only when the
 * hooks directory holds a TypeScript module; a relay with JavaScript hooks (or
 * none) loads no TypeScript tooling.
 */
function loadTypeScript(): Promise<void> {
  typescript ??= import("tsx/esm/api").then(({ register }) => {
    register()
  })
  return typescript
}

/**
 * Loads every module in `dir` (`.js`, `.mjs`, `.ts`, `.mts`; not `.d.ts`, not
 * sub-directories), in file-name order. TypeScript needs no build step (see
 * {@link loadTypeScript}). Any failure (missing directory, syntax error, a module
 * that throws on import, a default export not made by `defineHooks`) throws a
 * ParleyError naming the file, so the relay refuses to start.
 */
export async function loadHooks(dir: string): Promise<LoadedHooks[]> {
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
    try {
      module = (await import(pathToFileURL(path).href)) as { default?: unknown }
    } catch (error) {
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `hook script ${path} failed to load: ${(error as Error)?.message ?? String(error)}`,
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

const describe = (value: unknown) =>
  value === undefined ? "no default export" : value === null ? "null" : `a ${typeof value}`
